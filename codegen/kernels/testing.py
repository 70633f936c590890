"""What every kernel check needs, on CPU through the Triton interpreter or on a GPU: outputs poisoned before
the kernel runs, one error measure with one tolerance per dtype (DESIGN.md §10), and a way to run the
checks under the interpreter when this process cannot."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Iterator

import pytest
import torch

# ||out - ref|| / ||ref||: float32 kernels match their float32 reference up to summation order; half
# precision kernels up to a few roundings of the output.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

_INT_POISON = -7777


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    return float(torch.linalg.vector_norm(out64 - ref64) / torch.linalg.vector_norm(ref64).clamp_min(1e-30))


def assert_close(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """Same shape and dtype, every element written (finite), relative error within the dtype's tolerance."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != reference {ref.dtype}"
    assert torch.isfinite(out).all(), f"{what}: {int((~torch.isfinite(out)).sum())} elements unwritten or not finite"
    error = relative_error(out, ref)
    assert error <= TOLERANCE[ref.dtype], f"{what}: relative error {error:.2e} > {TOLERANCE[ref.dtype]:.0e}"


@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    """Inside the block, torch.empty / torch.empty_like return NaN-filled floats and -7777-filled integers, so
    an element a kernel forgets to write fails the check instead of passing on leftover memory."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor.fill_(float("nan"))
        return tensor.fill_(_INT_POISON) if tensor.dtype in (torch.int32, torch.int64) else tensor

    def empty(*args, **kwargs):
        return poison(real_empty(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return poison(real_empty_like(*args, **kwargs))

    torch.empty, torch.empty_like = empty, empty_like
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_empty_like


def random_tensor(shape, dtype: torch.dtype, device, scale: float = 1.0) -> torch.Tensor:
    """Standard normal values (never zeros) made in float32 and cast, so every dtype sees the same numbers."""
    return (torch.randn(shape, device=device) * scale).to(dtype)



def kernels_run_in_this_process() -> bool:
    """Whether kernels can run here: compiled on a GPU, or through the interpreter.

    Triton chooses between the two once per process, when triton.language is imported (its own library
    functions are @triton.jit too), by reading TRITON_INTERPRET then. A CPU test process that imported
    Triton compiled, to cross-compile kernels, cannot interpret them, and setting TRITON_INTERPRET for the
    whole process instead would turn every kernel compiled ahead of time afterwards into an interpreted one.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.cdiv, InterpretedFunction) or torch.cuda.is_available()


def interpreter_fallback(test_file: str):
    """For a kernel test module, `_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)`:
    where kernels cannot run in this process, an autouse fixture skips the module's tests and the second
    test runs the module again in a child process with TRITON_INTERPRET=1, failing with its report."""
    runs_here = kernels_run_in_this_process()

    @pytest.fixture(autouse=True)
    def skip_where_kernels_cannot_run(request):
        if not runs_here and request.node.originalname != "test_in_interpreter_process":
            pytest.skip("Triton was imported compiled in this GPU-less process: test_in_interpreter_process "
                        "runs this module under the interpreter")

    @pytest.mark.skipif(runs_here, reason="the kernels run in this process")
    def test_in_interpreter_process():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
        child = subprocess.run(command, env=env, capture_output=True, text=True)
        report = child.stdout[-8000:] + child.stderr[-2000:]
        assert child.returncode == 0, f"{test_file} under the interpreter:\n{report}"

    return skip_where_kernels_cannot_run, test_in_interpreter_process
