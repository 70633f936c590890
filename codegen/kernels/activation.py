"""Elementwise activations: plain (relu, gelu, gelu_tanh, silu) and gated, act(gate) * up, the middle of a
gated MLP. One kernel; gate and up may be the two halves of one fused gate_up buffer (row strides)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import as_rows, block_for, require, require_float, tanh_via_exp, wait_for_producers
from fdpp.runtime.reference_ops import activation as activation_reference
from fdpp.runtime.reference_ops import gated_act as gated_act_reference

__all__ = ["activation", "gated_act", "activation_reference", "gated_act_reference", "ACTIVATION_CODES"]

# The plan's activation names -> the kernel's compile-time code (the kernel is specialised per code).
ACTIVATION_CODES = {"silu": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3}


@triton.jit
def apply_activation(x, KIND: tl.constexpr):
    """x float32 -> act(x) float32, KIND one of ACTIVATION_CODES."""
    if KIND == 0:
        y = x / (1.0 + tl.exp(-x))
    elif KIND == 1:
        y = tl.maximum(x, 0.0)
    elif KIND == 2:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    else:
        y = 0.5 * x * (1.0 + tanh_via_exp(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    return y


@triton.jit
def activation_kernel(
    x_ptr,              # [R, C] input (the gate when GATED), unit stride along C
    up_ptr,             # [R, C] multiplier (read only when GATED), unit stride along C
    out_ptr,            # [R, C] output, contiguous
    n_columns,          # C
    x_row_stride,       # elements between rows of x
    up_row_stride,      # elements between rows of up
    KIND: tl.constexpr,      # activation code, see ACTIVATION_CODES
    GATED: tl.constexpr,     # out = act(x) * up instead of act(x)
    BLOCK: tl.constexpr,     # columns per program; grid axis 1 covers C
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY)
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = columns < n_columns
    x = tl.load(x_ptr + row * x_row_stride + columns, mask=in_row, other=0.0).to(tl.float32)
    y = apply_activation(x, KIND)
    if GATED:
        y = y * tl.load(up_ptr + row * up_row_stride + columns, mask=in_row, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_columns + columns, y, mask=in_row)


def _launch(kernel_name, x, up, kind, block, num_warps):
    require(kind in ACTIVATION_CODES, kernel_name, f"unknown activation {kind!r}; known: {sorted(ACTIVATION_CODES)}")
    n_columns = x.shape[-1] if x.dim() else 1
    rows = as_rows(x, n_columns)                     # a half of a fused gate_up buffer stays a strided view
    up_rows = as_rows(up, n_columns) if up is not None else rows
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    block = block or min(block_for(n_columns), 1024)
    if out.numel():
        grid = (rows.shape[0], triton.cdiv(n_columns, block))
        activation_kernel[grid](rows, up_rows, out, n_columns, rows.stride(0), up_rows.stride(0),
                                KIND=ACTIVATION_CODES[kind], GATED=up is not None, BLOCK=block, num_warps=num_warps)
    return out.view(x.shape)


def activation(x: torch.Tensor, kind: str, *, block: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """act(x), any shape. Config: block (columns per program, default min(next power of two of C, 1024)),
    num_warps."""
    require_float("activation", x=x)
    return _launch("activation", x, None, kind, block, num_warps)


def gated_act(gate: torch.Tensor, up: torch.Tensor, kind: str, *, block: int | None = None,
              num_warps: int = 4) -> torch.Tensor:
    """act(gate) * up, both [..., I] -> [..., I] in gate's dtype. Config: as activation."""
    require_float("gated_act", gate=gate, up=up)
    require(gate.shape == up.shape, "gated_act", f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    return _launch("gated_act", gate, up, kind, block, num_warps)
