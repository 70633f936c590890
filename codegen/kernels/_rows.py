"""What rms_norm and layer_norm share: the fused residual add inside the kernel, and the wrapper that
checks, allocates and launches one program per row."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import as_rows, block_for, empty_output, require, require_float


@triton.jit
def load_row_with_residual(x_ptr, residual_ptr, new_residual_ptr, columns, in_row, HAS_RESIDUAL: tl.constexpr):
    """One row as float32; with a residual, first add it in the activation dtype (as torch's `x + r`
    does), store that sum as the new residual stream, and normalise the rounded sum."""
    x = tl.load(x_ptr + columns, mask=in_row, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + columns, mask=in_row, other=0.0).to(tl.float32)
        summed = (x + residual).to(new_residual_ptr.dtype.element_ty)
        tl.store(new_residual_ptr + columns, summed, mask=in_row)
        x = summed.to(tl.float32)
    return x


def launch_row_norm(kernel_name: str, kernel: triton.JITFunction, x: torch.Tensor, residual: torch.Tensor | None,
                    weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
                    block_h: int | None, num_warps: int,
                    out_rows_together: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch `kernel` (rms_norm_kernel or layer_norm_kernel: same arguments) over the rows of x [..., H].
    With out_rows_together T > 1 the normalised result is the interleaved [cdiv(rows, T), H, T] buffer
    (_common.out_offsets; the padding rows unwritten), not a tensor shaped like x."""
    hidden = x.shape[-1]
    require_float(kernel_name, x=x, weight=weight)
    require(weight.shape == (hidden,), kernel_name, f"weight must be [{hidden}], got {tuple(weight.shape)}")
    require(bias is None or bias.shape == (hidden,), kernel_name, f"bias must be [{hidden}]")
    require(residual is None or (residual.shape == x.shape and residual.dtype == x.dtype), kernel_name,
            f"residual must match x {tuple(x.shape)} {x.dtype}")
    block_h = block_h or block_for(hidden)
    require(block_h >= hidden, kernel_name, f"block_h={block_h} must cover the hidden size {hidden}")

    rows = as_rows(x, hidden)
    out = empty_output(kernel_name, rows.shape[0], hidden, out_rows_together, rows)
    has_residual = residual is not None
    residual_rows = as_rows(residual, hidden) if has_residual else rows
    new_residual = torch.empty_like(rows) if has_residual else rows
    weight = weight.contiguous()
    bias_arg = bias.contiguous() if bias is not None else weight   # never read when HAS_BIAS is False
    if rows.shape[0]:
        kernel[(rows.shape[0],)](
            rows, residual_rows, weight, bias_arg, out, new_residual,
            hidden, rows.stride(0), residual_rows.stride(0), float(eps),
            HAS_RESIDUAL=has_residual, HAS_BIAS=bias is not None, BLOCK_H=block_h, OUT_ROWS=out_rows_together,
            num_warps=num_warps)
    new_residual = new_residual.view(x.shape) if has_residual else x
    return (out if out_rows_together > 1 else out.view(x.shape)), new_residual
