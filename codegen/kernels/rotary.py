"""Rotary position embedding, rotate-half (GPT-NeoX / Llama) convention, on q or k.

Two sources of cos/sin, one kernel: tensors already gathered per token [B|1, S, D], or the bundle's tables
[T, D] indexed by positions [B, S] inside the kernel (the position lookup fused away).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import block_for, require, require_float, require_index, wait_for_producers
from fdpp.runtime.reference_ops import position_lookup, rotary as rotary_reference

__all__ = ["rotary", "rotary_by_position", "rotary_reference", "rotary_by_position_reference"]


@triton.jit
def rotary_kernel(
    x_ptr,                  # q or k, unit stride along D; addressed through the strides below
    out_ptr,                # rotated x, same shape as x; heads x_stride_head apart
    cos_ptr,                # cos [B|1, S, D] per token, or the table [T, D] when BY_POSITION
    sin_ptr,                # sin, laid out as cos
    positions_ptr,          # [B, S] int positions (read only when BY_POSITION)
    seq_len,                # S
    n_heads,                # H
    x_stride_batch,         # elements between batches of x
    x_stride_seq,           # elements between tokens of x
    x_stride_head,          # elements between heads of x (and of out)
    out_stride_batch,       # elements between batches of out
    out_stride_seq,         # elements between tokens of out
    cos_stride_batch,       # elements between batches of cos/sin (0 to broadcast one batch)
    cos_stride_seq,         # elements between tokens of cos/sin, or between table rows when BY_POSITION
    positions_stride_batch,  # elements between rows of positions
    HEAD_DIM: tl.constexpr,      # D (even)
    BLOCK_HALF: tl.constexpr,    # power of two >= D / 2
    BLOCK_HEADS: tl.constexpr,   # heads per program; grid axis 1 covers H
    BY_POSITION: tl.constexpr,   # cos/sin are tables indexed by positions[b, s]
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY)
    token = tl.program_id(0)
    batch = (token // seq_len).to(tl.int64)
    seq = (token % seq_len).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)
    half_dims = tl.arange(0, BLOCK_HALF)
    HALF: tl.constexpr = HEAD_DIM // 2
    in_half = half_dims < HALF
    mask = (heads[:, None] < n_heads) & in_half[None, :]          # [BLOCK_HEADS, BLOCK_HALF]

    if BY_POSITION:
        cos_row = tl.load(positions_ptr + batch * positions_stride_batch + seq).to(tl.int64) * cos_stride_seq
    else:
        cos_row = batch * cos_stride_batch + seq * cos_stride_seq
    cos_low = tl.load(cos_ptr + cos_row + half_dims, mask=in_half).to(tl.float32)[None, :]
    cos_high = tl.load(cos_ptr + cos_row + HALF + half_dims, mask=in_half).to(tl.float32)[None, :]
    sin_low = tl.load(sin_ptr + cos_row + half_dims, mask=in_half).to(tl.float32)[None, :]
    sin_high = tl.load(sin_ptr + cos_row + HALF + half_dims, mask=in_half).to(tl.float32)[None, :]

    within = heads[:, None] * x_stride_head + half_dims[None, :]
    offsets = batch * x_stride_batch + seq * x_stride_seq + within
    x_low = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    x_high = tl.load(x_ptr + offsets + HALF, mask=mask).to(tl.float32)
    # x * cos + rotate_half(x) * sin, where rotate_half(x) = cat(-x_high, x_low)
    out = out_ptr + batch * out_stride_batch + seq * out_stride_seq + within
    tl.store(out, x_low * cos_low - x_high * sin_low, mask=mask)
    tl.store(out + HALF, x_high * cos_high + x_low * sin_high, mask=mask)


def _launch(x, cos, sin, positions, head_dim, layout, by_position, cos_strides, block_heads, num_warps):
    kernel_name = "rotary_by_position" if by_position else "rotary"
    require_float(kernel_name, x=x, cos=cos, sin=sin)
    require(head_dim % 2 == 0, kernel_name, f"head_dim must be even, got {head_dim}")
    require(x.dim() == 3 if layout == "flat" else x.dim() == 4, kernel_name,
            f"x {tuple(x.shape)} does not fit layout {layout!r}")
    x = x.contiguous()
    if layout == "flat":                                   # [B, S, H*D]
        batch, seq_len, width = x.shape
        require(width % head_dim == 0, kernel_name, f"width {width} is not a multiple of head_dim {head_dim}")
        n_heads = width // head_dim
        x_strides = (x.stride(0), x.stride(1), head_dim, x.stride(0), x.stride(1))
    elif layout == "heads":                                # [B, H, S, D]
        batch, n_heads, seq_len, _ = x.shape
        x_strides = (x.stride(0), x.stride(2), x.stride(1), x.stride(0), x.stride(2))
    else:
        raise ValueError(f"{kernel_name}: unknown layout {layout!r}")
    out = torch.empty_like(x)
    block_heads = block_heads or min(block_for(n_heads), 16)
    positions_arg = positions if positions is not None else x
    if x.numel():
        grid = (batch * seq_len, triton.cdiv(n_heads, block_heads))
        rotary_kernel[grid](
            x, out, cos, sin, positions_arg, seq_len, n_heads, *x_strides, *cos_strides,
            positions.stride(0) if positions is not None else 0,
            HEAD_DIM=head_dim, BLOCK_HALF=block_for(head_dim // 2), BLOCK_HEADS=block_heads,
            BY_POSITION=by_position, num_warps=num_warps)
    return out


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int, layout: str = "flat", *,
           block_heads: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """x [B, S, H*D] ("flat") or [B, H, S, D] ("heads"); cos, sin [B|1, S, D] -> x rotated, same shape.

    Config: block_heads (heads per program, default min(next power of two of H, 16)), num_warps.
    """
    batch, seq_len = (x.shape[0], x.shape[1]) if layout == "flat" else (x.shape[0], x.shape[2])
    require(cos.shape == sin.shape and cos.dim() == 3 and cos.shape[0] in (1, batch)
            and cos.shape[1:] == (seq_len, head_dim), "rotary",
            f"cos/sin must be [1 or {batch}, {seq_len}, {head_dim}], got {tuple(cos.shape)}")
    cos, sin = cos.contiguous(), sin.contiguous()
    cos_strides = (0 if cos.shape[0] == 1 else cos.stride(0), cos.stride(1))
    return _launch(x, cos, sin, None, head_dim, layout, False, cos_strides, block_heads, num_warps)


def rotary_by_position(x: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, positions: torch.Tensor,
                       head_dim: int, layout: str = "flat", *, block_heads: int | None = None,
                       num_warps: int = 4) -> torch.Tensor:
    """rotary(x, cos_table[positions], sin_table[positions]) without materialising the gathered rows.

    cos_table, sin_table [T, D]; positions [B, S] int, each < T (not checked: it would sync).
    Config: as rotary.
    """
    require_index("rotary_by_position", positions=positions)
    require(cos_table.shape == sin_table.shape and cos_table.dim() == 2 and cos_table.shape[1] == head_dim,
            "rotary_by_position", f"tables must be [T, {head_dim}], got {tuple(cos_table.shape)}")
    cos_table, sin_table, positions = cos_table.contiguous(), sin_table.contiguous(), positions.contiguous()
    return _launch(x, cos_table, sin_table, positions, head_dim, layout, True, (0, cos_table.stride(0)),
                   block_heads, num_warps)


def rotary_by_position_reference(x, cos_table, sin_table, positions, head_dim, layout="flat"):
    """The fused op's meaning: the position lookups, then rotary."""
    return rotary_reference(x, position_lookup(cos_table, positions, 1), position_lookup(sin_table, positions, 1),
                            head_dim, layout)
