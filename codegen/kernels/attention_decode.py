"""Decode attention, one new query per sequence, split over the KV length (FlashDecoding).

Pass 1, grid (B, Hkv, splits): each program takes one KV head of one sequence, all Hq/Hkv query heads that
share it (so each key is read once), and one contiguous slice of the sequence's keys; it writes the
slice's unnormalised sum of e^(s - m)·v, its m and its sum of e^(s - m). Pass 2 rescales the slices to a
common max and divides. Sequence b attends to cache slots 0..positions[b, 0] (its length is that + 1).
The split count is fixed at launch and each sequence divides its own length by it, so the grid does not
depend on the data and the launch can sit in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import (SOFTMAX_FLOOR, block_for, dot_exact, online_softmax_update, require,
                                          require_float, require_index)
from fdpp.runtime.reference_ops import attention as attention_reference

__all__ = ["attention_decode", "allocate_decode_workspace", "attention_reference"]


@triton.jit
def attention_decode_split_kernel(
    q_ptr,                  # [B, Hq*D] queries (one token per sequence), unit stride along the last axis
    k_cache_ptr,            # [B_cap, Hkv, T_cap, D] key cache, unit stride along D
    v_cache_ptr,            # [B_cap, Hkv, T_cap, D] value cache, same strides
    positions_ptr,          # [B] int position of each query; the sequence's length is position + 1
    partial_out_ptr,        # [B, Hq, SPLITS, D] float32: per slice, sum of e^(s - m) v
    partial_max_ptr,        # [B, Hq, SPLITS] float32: per slice, m (SOFTMAX_FLOOR for an empty slice)
    partial_sum_ptr,        # [B, Hq, SPLITS] float32: per slice, sum of e^(s - m)
    n_heads,                # Hq
    scale,                  # softmax scale
    q_stride_batch,         # elements between sequences of q
    positions_stride,       # elements between sequences of positions
    cache_stride_batch,     # elements between batch rows of the caches
    cache_stride_head,      # elements between KV heads of the caches
    cache_stride_seq,       # elements between slots of the caches
    GROUP: tl.constexpr,         # Hq / Hkv query heads per KV head
    BLOCK_GROUP: tl.constexpr,   # power of two >= max(GROUP, 16): the query rows of tl.dot
    HEAD_DIM: tl.constexpr,      # D
    BLOCK_D: tl.constexpr,       # power of two >= max(D, 16)
    BLOCK_N: tl.constexpr,       # keys per inner step (>= 16)
    SPLITS: tl.constexpr,        # slices of the KV length (grid axis 2)
):
    batch = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    length = (tl.load(positions_ptr + batch * positions_stride) + 1).to(tl.int32)
    slice_len = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_N) * BLOCK_N     # whole tiles, so only the last is ragged
    key_start = split * slice_len
    key_end = tl.minimum(key_start + slice_len, length)

    group_rows = tl.arange(0, BLOCK_GROUP)
    heads = kv_head * GROUP + group_rows
    row_ok = group_rows < GROUP
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    q = tl.load(q_ptr + batch * q_stride_batch + heads[:, None] * HEAD_DIM + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)                       # [BLOCK_GROUP, BLOCK_D]
    cache_offset = batch * cache_stride_batch + kv_head.to(tl.int64) * cache_stride_head

    running_max = tl.full((BLOCK_GROUP,), SOFTMAX_FLOOR, dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_GROUP,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_GROUP, BLOCK_D), dtype=tl.float32)
    for tile_start in range(key_start, key_end, BLOCK_N):
        keys = tile_start + tl.arange(0, BLOCK_N)
        key_ok = keys < key_end
        k = tl.load(k_cache_ptr + cache_offset + keys[None, :] * cache_stride_seq + dims[:, None],
                    mask=dim_ok[:, None] & key_ok[None, :], other=0.0)                       # [BLOCK_D, BLOCK_N]
        scores = dot_exact(q, k, tl.zeros((BLOCK_GROUP, BLOCK_N), dtype=tl.float32)) * scale
        scores = tl.where(key_ok[None, :], scores, float("-inf"))
        probabilities, running_max, running_sum, acc = online_softmax_update(scores, running_max, running_sum, acc)
        v = tl.load(v_cache_ptr + cache_offset + keys[:, None] * cache_stride_seq + dims[None, :],
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)                       # [BLOCK_N, BLOCK_D]
        acc = dot_exact(probabilities.to(v.dtype), v, acc)

    partial_rows = (batch * n_heads + heads) * SPLITS + split                               # [BLOCK_GROUP]
    tl.store(partial_max_ptr + partial_rows, running_max, mask=row_ok)
    tl.store(partial_sum_ptr + partial_rows, running_sum, mask=row_ok)
    tl.store(partial_out_ptr + partial_rows[:, None] * HEAD_DIM + dims[None, :], acc,
             mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def attention_decode_combine_kernel(
    partial_out_ptr,        # [B, Hq, SPLITS, D] float32, from the split kernel
    partial_max_ptr,        # [B, Hq, SPLITS] float32
    partial_sum_ptr,        # [B, Hq, SPLITS] float32
    out_ptr,                # [B, Hq*D] output, contiguous, in the query dtype
    HEAD_DIM: tl.constexpr,      # D
    BLOCK_D: tl.constexpr,       # power of two >= D
    SPLITS: tl.constexpr,        # slices per (sequence, head)
    BLOCK_SPLITS: tl.constexpr,  # power of two >= SPLITS
):
    row = tl.program_id(0).to(tl.int64)                  # batch * Hq + head
    splits = tl.arange(0, BLOCK_SPLITS)
    split_ok = splits < SPLITS
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    slice_max = tl.load(partial_max_ptr + row * SPLITS + splits, mask=split_ok, other=SOFTMAX_FLOOR)
    slice_sum = tl.load(partial_sum_ptr + row * SPLITS + splits, mask=split_ok, other=0.0)
    slice_out = tl.load(partial_out_ptr + (row * SPLITS + splits)[:, None] * HEAD_DIM + dims[None, :],
                        mask=split_ok[:, None] & dim_ok[None, :], other=0.0)                 # [BLOCK_SPLITS, BLOCK_D]
    weight = tl.exp(slice_max - tl.max(slice_max, axis=0))   # empty slices: e^(-1e30 - m) = 0
    total = tl.sum(slice_sum * weight, axis=0)
    out = tl.sum(slice_out * weight[:, None], axis=0) / total
    tl.store(out_ptr + row * HEAD_DIM + dims, out, mask=dim_ok)


def allocate_decode_workspace(batch: int, n_heads: int, head_dim: int, num_splits: int, device) -> tuple:
    """The float32 scratch of the split pass: (partial_out [B, Hq, splits, D], partial_max, partial_sum
    [B, Hq, splits]). The runtime allocates it once per bucket and passes it in."""
    return (torch.empty((batch, n_heads, num_splits, head_dim), dtype=torch.float32, device=device),
            torch.empty((batch, n_heads, num_splits), dtype=torch.float32, device=device),
            torch.empty((batch, n_heads, num_splits), dtype=torch.float32, device=device))


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor, *,
                     n_heads: int, n_kv_heads: int, head_dim: int, scale: float,
                     num_splits: int = 4, block_n: int = 64, num_warps: int = 4, num_stages: int = 2,
                     combine_num_warps: int = 4, workspace: tuple | None = None) -> torch.Tensor:
    """One query per sequence: q [B, 1, Hq*D] (or [B, Hq*D]) over the cache [B_cap, Hkv, T_cap, D] after
    kv_cache.write_kv; positions [B, 1] (or [B]). Returns q's shape and dtype.

    Config: num_splits (slices of each sequence's KV length), block_n, num_warps, num_stages (split pass),
    combine_num_warps. workspace: from allocate_decode_workspace, or allocated here.
    """
    require_float("attention_decode", q=q, k_cache=k_cache, v_cache=v_cache)
    require_index("attention_decode", positions=positions)
    require(n_heads % n_kv_heads == 0, "attention_decode", f"{n_heads} heads over {n_kv_heads} KV heads")
    batch = q.shape[0]
    queries = q.reshape(batch, n_heads * head_dim)
    require(queries.stride(-1) == 1 and positions.numel() == batch, "attention_decode",
            f"q must hold one token per sequence ([{batch}, 1, {n_heads * head_dim}]), got {tuple(q.shape)}")
    require(k_cache.dim() == 4 and k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride()
            and k_cache.shape[1] == n_kv_heads and k_cache.shape[3] == head_dim and k_cache.shape[0] >= batch
            and k_cache.stride(-1) == 1, "attention_decode",
            f"caches must be [>={batch}, {n_kv_heads}, T, {head_dim}] with equal strides, got {tuple(k_cache.shape)}")
    require(k_cache.dtype == v_cache.dtype == q.dtype, "attention_decode", "q and the caches must share a dtype")
    require(block_n >= 16, "attention_decode", "tl.dot needs block_n >= 16")
    positions = positions.reshape(batch)
    partial_out, partial_max, partial_sum = workspace or allocate_decode_workspace(
        batch, n_heads, head_dim, num_splits, q.device)
    require(partial_out.shape == (batch, n_heads, num_splits, head_dim) and partial_out.is_contiguous(),
            "attention_decode", "workspace does not match this batch, head count and num_splits")
    out = torch.empty((batch, n_heads * head_dim), dtype=q.dtype, device=q.device)
    if batch:
        group = n_heads // n_kv_heads
        attention_decode_split_kernel[(batch, n_kv_heads, num_splits)](
            queries, k_cache, v_cache, positions, partial_out, partial_max, partial_sum, n_heads, float(scale),
            queries.stride(0), positions.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            GROUP=group, BLOCK_GROUP=block_for(group, 16), HEAD_DIM=head_dim, BLOCK_D=block_for(head_dim, 16),
            BLOCK_N=block_n, SPLITS=num_splits, num_warps=num_warps, num_stages=num_stages)
        attention_decode_combine_kernel[(batch * n_heads,)](
            partial_out, partial_max, partial_sum, out, HEAD_DIM=head_dim, BLOCK_D=block_for(head_dim),
            SPLITS=num_splits, BLOCK_SPLITS=block_for(num_splits), num_warps=combine_num_warps)
    return out.view(q.shape)
