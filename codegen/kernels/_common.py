"""Helpers that more than one kernel file needs: input checks for the wrappers and small device functions.

Wrappers check on the host only what costs no device synchronisation (shapes, dtypes, strides); values
such as token ids or positions are trusted, because reading them back would stall the stream.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def require(condition: bool, kernel: str, message: str) -> None:
    """Raise a ValueError that names the kernel whose wrapper refused its inputs."""
    if not condition:
        raise ValueError(f"{kernel}: {message}")


def require_float(kernel: str, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        require(tensor.dtype in FLOAT_DTYPES, kernel,
                f"{name} must be float16, bfloat16 or float32, got {tensor.dtype}")


def require_index(kernel: str, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        require(tensor.dtype in INDEX_DTYPES, kernel, f"{name} must be int32 or int64, got {tensor.dtype}")


def as_rows(x: torch.Tensor, width: int) -> torch.Tensor:
    """View x [..., width] as [rows, width] with a unit stride along the row (copying only if it must)."""
    rows = x.reshape(-1, width)
    return rows if rows.stride(-1) == 1 or width == 1 else rows.contiguous()


def block_for(size: int, minimum: int = 1) -> int:
    """The power-of-two block that covers `size` in one tile."""
    return max(minimum, triton.next_power_of_2(size))


def interleaved_shape(rows: int, width: int, together: int) -> tuple[int, int, int]:
    """The [cdiv(rows, together), width, together] buffer of an activation [rows, width] stored with each
    column's `together` rows side by side (out_offsets with ROWS_TOGETHER > 1)."""
    return (triton.cdiv(rows, together), width, together)


def empty_output(kernel: str, rows: int, width: int, together: int, like: torch.Tensor) -> torch.Tensor:
    """A wrapper's output [rows, width] in `like`'s dtype and device; with `together` > 1 (out_rows_together:
    2, 4 or 8, else a ValueError naming the kernel) the interleaved buffer [cdiv(rows, together), width, together]."""
    require(together in (1, 2, 4, 8), kernel, f"out_rows_together must be 1, 2, 4 or 8, got {together}")
    shape = interleaved_shape(rows, width, together) if together > 1 else (rows, width)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


@triton.jit
def out_offsets(row, column, width, ROWS_TOGETHER: tl.constexpr):
    """Element offsets of (row, column) in an activation of `width` columns (row and column broadcast).
    ROWS_TOGETHER 1: row-major [rows, width]. Else interleaved, [cdiv(rows, T), width, T]: each column's T rows
    side by side, the x layout chunked_csr_linear gathers from, written so by the kernel that produces x
    (passes/interleave_sparse_inputs.py) instead of by a separate interleave launch."""
    if ROWS_TOGETHER == 1:
        offsets = row * width + column
    else:
        offsets = (row // ROWS_TOGETHER) * (width * ROWS_TOGETHER) + column * ROWS_TOGETHER + row % ROWS_TOGETHER
    return offsets


@triton.jit
def wait_for_producers(GRID_DEPENDENCY: tl.constexpr, LET_NEXT_START: tl.constexpr = True):
    """The first statement of every kernel the runtime launches. With GRID_DEPENDENCY (NVIDIA sm_90 and
    later; the bundle builder sets it) the kernel is launched as a programmatic dependent of the kernel
    before it on the stream: its programs may be scheduled while that kernel still runs, so here they wait
    until the kernel before has finished and its writes are visible. Nothing is read or written before the
    wait, so every ordering of the stream holds.
    LET_NEXT_START also lets the next kernel's programs be scheduled now (let_next_start). Kernels that
    stream a weight pass False and call let_next_start after their main loop instead, which measured faster
    in the whole decode step; decode attention signals here, which measured faster there than after its key
    loop (docs/architecture.md note 23).
    The instructions do nothing when the launch was an ordinary one; GRID_DEPENDENCY False (other
    targets, the interpreter, the JIT wrappers) emits nothing."""
    if GRID_DEPENDENCY:
        if LET_NEXT_START:
            gdc_launch_dependents()
        gdc_wait()


@triton.jit
def let_next_start(GRID_DEPENDENCY: tl.constexpr):
    """With GRID_DEPENDENCY: the next kernel on the stream may be scheduled once every program of this one
    has been here (or exited); it still waits for this kernel to finish before touching memory."""
    if GRID_DEPENDENCY:
        gdc_launch_dependents()


@triton.jit
def dot_exact(a, b, acc):
    """acc + a @ b, with float32 operands multiplied in full precision (never TF32), so float32 kernels
    match their float32 reference; half-precision operands use the tensor cores as usual."""
    if a.dtype == tl.float32:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def tanh_via_exp(x):
    """tanh from exp, because tl has no portable tanh (libdevice differs between CUDA, HIP and the
    interpreter). exp(-2|x|) never overflows, and the sign is put back at the end."""
    decay = tl.exp(-2.0 * tl.abs(x))
    magnitude = (1.0 - decay) / (1.0 + decay)
    return tl.where(x >= 0.0, magnitude, -magnitude)


# A finite stand-in for -inf as the starting running max: a tile whose scores are all masked (-inf) then
# leaves the max finite, so exp(old_max - new_max) never meets (-inf) - (-inf).
SOFTMAX_FLOOR = tl.constexpr(-1.0e30)


@triton.jit
def online_softmax_update(scores, running_max, running_sum, acc):
    """One tile of the synchronised (online-max) softmax, float32 throughout.

    scores [M, N] (masked entries -inf); running_max, running_sum [M]; acc [M, D] = sum of e^(s - max) v.
    Returns the tile's probabilities against the new max, the new max and sum, and acc rescaled to the
    new max; the caller adds probabilities @ values.
    """
    new_max = tl.maximum(running_max, tl.max(scores, axis=1))
    correction = tl.exp(running_max - new_max)
    probabilities = tl.exp(scores - new_max[:, None])
    running_sum = running_sum * correction + tl.sum(probabilities, axis=1)
    return probabilities, new_max, running_sum, acc * correction[:, None]


@triton.jit
def softmax_tile(scores, running_max, running_sum, acc, phi, UNIFIED: tl.constexpr):
    """One tile of either softmax scheme, float32: synchronized is online_softmax_update; unified (FlashDecoding++)
    takes e^(s - φ) against the fixed φ, leaves acc as it is, and tracks the max only to check the safe range.
    Returns (probabilities, running_max, running_sum, acc); the caller adds probabilities @ values."""
    if UNIFIED:
        running_max = tl.maximum(running_max, tl.max(scores, axis=1))
        probabilities = tl.exp(scores - phi)
        running_sum += tl.sum(probabilities, axis=1)
    else:
        probabilities, running_max, running_sum, acc = online_softmax_update(scores, running_max, running_sum, acc)
    return probabilities, running_max, running_sum, acc
