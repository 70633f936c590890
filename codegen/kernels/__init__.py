"""Triton kernels, one op a file: the @triton.jit kernel(s), the wrapper that checks, allocates and launches,
and the torch reference (from runtime.reference_ops) that defines the op.

codegen/launch_specs.py maps a plan's kernel choices to these kernels and records how to launch them;
each wrapper's keyword arguments after the tensors (block sizes, num_warps, num_stages) are the same knobs.
"""
