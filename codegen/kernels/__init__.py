"""Triton kernels, one op a file: the @triton.jit kernel(s), the wrapper that checks, allocates and launches,
and the torch reference (from runtime.reference_ops) that defines the op.

KERNELS maps the kernel names that a plan's KernelChoice records to those three things. Each wrapper's
keyword arguments after the tensors (block sizes, num_warps, num_stages) are the launch config the compiler
records in the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import triton

from fdpp.codegen.kernels import (activation, attention_decode, attention_prefill, embedding, kv_cache, layer_norm,
                                  linear, rms_norm, rotary, sampling)


@dataclass(frozen=True)
class KernelEntry:
    jit_functions: tuple[triton.JITFunction, ...]   # what the ahead-of-time build compiles, in launch order
    wrapper: Callable                                # checks, allocates, computes the grid, launches
    reference: Callable                              # the op's meaning, in torch


KERNELS: dict[str, KernelEntry] = {
    "embedding": KernelEntry((embedding.gather_rows_kernel,), embedding.embedding, embedding.embedding_reference),
    "position_lookup": KernelEntry((embedding.gather_rows_kernel,), embedding.position_lookup,
                                   embedding.position_lookup_reference),
    "rms_norm": KernelEntry((rms_norm.rms_norm_kernel,), rms_norm.rms_norm, rms_norm.rms_norm_reference),
    "layer_norm": KernelEntry((layer_norm.layer_norm_kernel,), layer_norm.layer_norm, layer_norm.layer_norm_reference),
    "rotary": KernelEntry((rotary.rotary_kernel,), rotary.rotary, rotary.rotary_reference),
    "rotary_by_position": KernelEntry((rotary.rotary_kernel,), rotary.rotary_by_position,
                                      rotary.rotary_by_position_reference),
    "activation": KernelEntry((activation.activation_kernel,), activation.activation, activation.activation_reference),
    "gated_act": KernelEntry((activation.activation_kernel,), activation.gated_act, activation.gated_act_reference),
    "gemv": KernelEntry((linear.gemv_kernel,), linear.gemv, linear.linear_reference),
    "gemm": KernelEntry((linear.gemm_kernel,), linear.gemm, linear.linear_reference),
    "kv_cache_write": KernelEntry((kv_cache.write_kv_kernel,), kv_cache.write_kv, kv_cache.write_kv_reference),
    "attention_prefill": KernelEntry((attention_prefill.attention_prefill_kernel,),
                                     attention_prefill.attention_prefill, attention_prefill.attention_reference),
    "decode_attention_split_kv": KernelEntry(
        (attention_decode.attention_decode_split_kernel, attention_decode.attention_decode_combine_kernel),
        attention_decode.attention_decode, attention_decode.attention_reference),
    "argmax": KernelEntry((sampling.argmax_kernel,), sampling.argmax, sampling.argmax_reference),
    "sample": KernelEntry((sampling.argmax_kernel,), sampling.sample, sampling.sample_reference),
}
