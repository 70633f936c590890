"""Row gathers: token embedding (table[ids]) and per-position table lookup (rotary cos/sin, learned
position embeddings), both one copy of a table row per token."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import as_rows, block_for, require, require_index, wait_for_producers
from fdpp.runtime.reference_ops import embedding as embedding_reference
from fdpp.runtime.reference_ops import position_lookup as position_lookup_reference

__all__ = ["embedding", "position_lookup", "embedding_reference", "position_lookup_reference"]


@triton.jit
def gather_rows_kernel(
    table_ptr,          # [R, W] table, unit stride along W
    index_ptr,          # [T] int32/int64 row index per token (token ids or positions), contiguous
    out_ptr,            # [T, W] output, contiguous
    width,              # W: elements per row
    table_row_stride,   # elements between consecutive table rows
    BLOCK_W: tl.constexpr,  # columns per program; grid axis 1 covers W in BLOCK_W tiles
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY)
    token = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    in_row = columns < width
    row = tl.load(index_ptr + token).to(tl.int64)          # int64: V * W can pass 2**31 (lm-sized tables)
    values = tl.load(table_ptr + row * table_row_stride + columns, mask=in_row)
    tl.store(out_ptr + token.to(tl.int64) * width + columns, values, mask=in_row)


def _gather_rows(kernel_name: str, table: torch.Tensor, index: torch.Tensor,
                 block_w: int | None, num_warps: int) -> torch.Tensor:
    require_index(kernel_name, index=index)
    require(table.dim() >= 1, kernel_name, "the table needs at least one dimension")
    require(table.device == index.device, kernel_name, "table and index must be on the same device")
    width = math.prod(table.shape[1:])
    rows = as_rows(table, width)
    flat_index = index.reshape(-1).contiguous()
    out = torch.empty((*index.shape, *table.shape[1:]), dtype=table.dtype, device=table.device)
    if flat_index.numel() == 0 or width == 0:
        return out
    block_w = block_w or min(block_for(width), 1024)
    grid = (flat_index.numel(), triton.cdiv(width, block_w))
    gather_rows_kernel[grid](rows, flat_index, out, width, rows.stride(0), BLOCK_W=block_w, num_warps=num_warps)
    return out


def embedding(table: torch.Tensor, ids: torch.Tensor, *, block_w: int | None = None,
              num_warps: int = 4) -> torch.Tensor:
    """table [V, H], ids [B, S] int -> [B, S, H]. Ids must lie in [0, V) (not checked: it would sync).

    Config: block_w (columns per program, default the next power of two of H, at most 1024), num_warps.
    """
    require(table.dim() == 2, "embedding", f"table must be [V, H], got {tuple(table.shape)}")
    return _gather_rows("embedding", table, ids, block_w, num_warps)


def position_lookup(table: torch.Tensor, positions: torch.Tensor, seq_axis: int, *,
                    block_w: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """table [T, *rest], positions [B, S] -> [B, S, *rest]. Only seq_axis=1 has a kernel: other layouts
    are a transpose the compiler should fold into the consumer instead."""
    require(seq_axis == 1, "position_lookup", f"only seq_axis=1 is implemented, got {seq_axis}")
    return _gather_rows("position_lookup", table, positions, block_w, num_warps)
