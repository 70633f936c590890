"""LayerNorm (OPT, GPT-style), optionally fused with the residual add before it: one program per row, whole
row in one tile."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import out_offsets, wait_for_producers
from fdpp.codegen.kernels._rows import launch_row_norm, load_row_with_residual
from fdpp.runtime.reference_ops import layer_norm as layer_norm_reference

__all__ = ["layer_norm", "layer_norm_reference"]


@triton.jit
def layer_norm_kernel(
    x_ptr,                  # [R, H] input rows, unit stride along H
    residual_ptr,           # [R, H] residual rows (read only when HAS_RESIDUAL)
    weight_ptr,             # [H] scale
    bias_ptr,               # [H] shift (read only when HAS_BIAS)
    out_ptr,                # [R, H] normalised output, contiguous (interleaved: see OUT_ROWS)
    new_residual_ptr,       # [R, H] x + residual, contiguous (written only when HAS_RESIDUAL)
    hidden,                 # H
    x_row_stride,           # elements between rows of x
    residual_row_stride,    # elements between rows of the residual
    eps,                    # added to the variance
    HAS_RESIDUAL: tl.constexpr,  # fuse the residual add
    HAS_BIAS: tl.constexpr,      # add the bias
    BLOCK_H: tl.constexpr,       # power of two >= H: the whole row is one tile
    OUT_ROWS: tl.constexpr = 1,  # > 1: out interleaved by blocks of OUT_ROWS rows (_common.out_offsets)
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY)
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK_H)
    in_row = columns < hidden
    x = load_row_with_residual(x_ptr + row * x_row_stride, residual_ptr + row * residual_row_stride,
                               new_residual_ptr + row * hidden, columns, in_row, HAS_RESIDUAL)
    mean = tl.sum(x, axis=0) / hidden
    centered = tl.where(in_row, x - mean, 0.0)
    variance = tl.sum(centered * centered, axis=0) / hidden     # biased, as F.layer_norm
    y = centered * tl.rsqrt(variance + eps) * tl.load(weight_ptr + columns, mask=in_row, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + columns, mask=in_row, other=0.0).to(tl.float32)
    tl.store(out_ptr + out_offsets(row, columns, hidden, OUT_ROWS), y, mask=in_row)


def layer_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
               eps: float, *, block_h: int | None = None, num_warps: int = 4,
               out_rows_together: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [..., H] (residual may be None), weight, bias [H] (bias may be None)
    -> (layer_norm(x + residual), x + residual); the second is x itself when residual is None.

    Config: block_h (power of two >= H, default the smallest), num_warps; out_rows_together T > 1 returns
    the first result interleaved, [cdiv(rows, T), H, T] (_common.out_offsets).
    """
    return launch_row_norm("layer_norm", layer_norm_kernel, x, residual, weight, bias, eps, block_h, num_warps,
                           out_rows_together)
