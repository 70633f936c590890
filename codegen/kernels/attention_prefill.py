"""Causal attention by position for prefill, grouped-query heads: synchronized (FlashAttention-style online
softmax) or with the unified max φ (runtime/unified_max.py), whose out-of-range rows are recomputed
synchronized within the same program and counted.

Queries q [B, S, Hq*D] attend to keys either in the layer's KV cache [B_cap, Hkv, T_cap, D] (slot t holds
position t; run kv_cache.write_kv first) or in this step's k, v [B, S, Hkv*D] (key positions = positions).
A key is visible iff its position <= the query's. Query head h reads KV head h // (Hq / Hkv).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import (SOFTMAX_FLOOR, block_for, dot_exact, require, require_float, require_index,
                                          softmax_tile, wait_for_producers)
from fdpp.runtime.reference_ops import attention as attention_reference

__all__ = ["attention_prefill", "attention_reference"]


@triton.jit
def _attend_rows(q, query_pos, k_base, v_base, positions_row, key_end, kv_stride_seq, scale, phi,
                 BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                 KEYS_IN_CACHE: tl.constexpr, UNIFIED: tl.constexpr):
    """Keys 0..key_end-1 for the query rows q [BLOCK_M, BLOCK_D], causal by position. Returns (acc, row max
    score, row sum): synchronized, against the running max; unified, against φ (the max only reported)."""
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    running_max = tl.full((BLOCK_M,), SOFTMAX_FLOOR, dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for key_start in range(0, key_end, BLOCK_N):
        keys = key_start + tl.arange(0, BLOCK_N)
        key_ok = keys < key_end
        if KEYS_IN_CACHE:
            key_pos = keys
        else:
            key_pos = tl.load(positions_row + keys, mask=key_ok, other=0)
        k = tl.load(k_base + keys[None, :] * kv_stride_seq + dims[:, None],
                    mask=dim_ok[:, None] & key_ok[None, :], other=0.0)                     # [BLOCK_D, BLOCK_N]
        scores = dot_exact(q, k, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)) * scale
        visible = key_ok[None, :] & (key_pos[None, :] <= query_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        probabilities, running_max, running_sum, acc = softmax_tile(scores, running_max, running_sum, acc, phi,
                                                                    UNIFIED)
        v = tl.load(v_base + keys[:, None] * kv_stride_seq + dims[None, :],
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)                     # [BLOCK_N, BLOCK_D]
        acc = dot_exact(probabilities.to(v.dtype), v, acc)
    return acc, running_max, running_sum


@triton.jit
def attention_prefill_kernel(
    q_ptr,                  # [B, S, Hq*D] queries, unit stride along the last axis
    k_ptr,                  # keys: cache [B_cap, Hkv, T_cap, D] or step keys [B, S, Hkv*D], unit stride along D
    v_ptr,                  # values, same layout and strides as the keys
    positions_ptr,          # [B, S] int position of each query (and of each step key when not KEYS_IN_CACHE)
    out_ptr,                # [B, S, Hq*D] output, contiguous
    fallbacks_ptr,          # [1] int32: incremented by the number of query rows recomputed (unified only)
    seq_len,                # S
    n_heads,                # Hq
    scale,                  # softmax scale (1/sqrt(D) usually)
    phi,                    # unified max value φ (unused when synchronized)
    safe_low,               # a row is exact with φ iff its max score is in [safe_low, safe_high]
    safe_high,
    q_stride_batch,         # elements between batches of q
    q_stride_seq,           # elements between tokens of q
    kv_stride_batch,        # elements between batches of the keys/values
    kv_stride_head,         # elements between KV heads
    kv_stride_seq,          # elements between consecutive keys
    GROUP: tl.constexpr,         # Hq / Hkv query heads per KV head
    HEAD_DIM: tl.constexpr,      # D
    BLOCK_D: tl.constexpr,       # power of two >= max(D, 16)
    BLOCK_M: tl.constexpr,       # queries per program (>= 16); grid axis 0 covers S
    BLOCK_N: tl.constexpr,       # keys per inner step (>= 16)
    KEYS_IN_CACHE: tl.constexpr,  # keys are cache slots 0..max query position; else the step's S keys
    UNIFIED: tl.constexpr,       # unified max with exact fallback, or synchronized
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY)
    batch_head = tl.program_id(1)
    batch = (batch_head // n_heads).to(tl.int64)
    head = batch_head % n_heads
    kv_head = (head // GROUP).to(tl.int64)
    queries = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    query_ok = queries < seq_len
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    positions_row = positions_ptr + batch * seq_len
    query_pos = tl.load(positions_row + queries, mask=query_ok, other=-1)          # [BLOCK_M]; -1 sees nothing

    q_offsets = batch * q_stride_batch + queries[:, None] * q_stride_seq + head * HEAD_DIM + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=query_ok[:, None] & dim_ok[None, :], other=0.0)    # [BLOCK_M, BLOCK_D]
    k_base = k_ptr + batch * kv_stride_batch + kv_head * kv_stride_head
    v_base = v_ptr + batch * kv_stride_batch + kv_head * kv_stride_head
    if KEYS_IN_CACHE:
        key_end = (tl.max(query_pos, axis=0) + 1).to(tl.int32)   # slots past the block's last position are unseen
    else:
        key_end = seq_len
    acc, row_max, row_sum = _attend_rows(q, query_pos, k_base, v_base, positions_row, key_end, kv_stride_seq,
                                         scale, phi, BLOCK_M, HEAD_DIM, BLOCK_D, BLOCK_N, KEYS_IN_CACHE, UNIFIED)
    if UNIFIED:
        outside = query_ok & ((row_max < safe_low) | (row_max > safe_high))
        fallen = tl.sum(outside.to(tl.int32), axis=0)
        if fallen > 0:       # exact fallback: this block of queries again, synchronized
            acc, row_max, row_sum = _attend_rows(q, query_pos, k_base, v_base, positions_row, key_end,
                                                 kv_stride_seq, scale, phi, BLOCK_M, HEAD_DIM, BLOCK_D, BLOCK_N,
                                                 KEYS_IN_CACHE, False)
            tl.atomic_add(fallbacks_ptr, fallen, sem="relaxed", scope="gpu")
    out = acc / tl.where(row_sum > 0.0, row_sum, 1.0)[:, None]
    out_offsets = (batch * seq_len + queries[:, None]) * (n_heads * HEAD_DIM) + head * HEAD_DIM + dims[None, :]
    tl.store(out_ptr + out_offsets, out, mask=query_ok[:, None] & dim_ok[None, :])


def attention_prefill(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, *,
                      n_heads: int, n_kv_heads: int, head_dim: int, scale: float,
                      unified: tuple[float, float, float] | None = None, fallbacks: torch.Tensor | None = None,
                      block_m: int | None = None, block_n: int = 64, num_warps: int = 4,
                      num_stages: int = 2) -> torch.Tensor:
    """Causal attention of q [B, S, Hq*D] over a KV cache [B_cap, Hkv, T_cap, D] (keys at slots
    0..max(positions), after kv_cache.write_kv) or over this step's keys/values [B, S, Hkv*D].

    positions [B, S] int. Returns [B, S, Hq*D] in q's dtype.
    unified: (φ, safe_low, safe_high) for the unified-max scheme, None for synchronized; fallbacks: int32 [1]
    counter the unified kernel adds its recomputed query rows to (per head).
    Config: block_m (default 64, or 16 when S <= 16), block_n, num_warps, num_stages.
    """
    require_float("attention_prefill", q=q, keys=keys, values=values)
    require_index("attention_prefill", positions=positions)
    require(n_heads % n_kv_heads == 0, "attention_prefill", f"{n_heads} heads over {n_kv_heads} KV heads")
    batch, seq_len = positions.shape
    require(q.shape == (batch, seq_len, n_heads * head_dim) and q.stride(-1) == 1, "attention_prefill",
            f"q must be [{batch}, {seq_len}, {n_heads * head_dim}], got {tuple(q.shape)}")
    require(keys.shape == values.shape and keys.stride() == values.stride() and keys.stride(-1) == 1,
            "attention_prefill", "keys and values must share shape and strides, unit stride last")
    require(keys.dtype == values.dtype == q.dtype, "attention_prefill", "q, keys and values must share a dtype")
    keys_in_cache = keys.dim() == 4
    if keys_in_cache:
        require(keys.shape[1] == n_kv_heads and keys.shape[3] == head_dim and keys.shape[0] >= batch,
                "attention_prefill", f"cache must be [>={batch}, {n_kv_heads}, T, {head_dim}], got {tuple(keys.shape)}")
        kv_strides = (keys.stride(0), keys.stride(1), keys.stride(2))
    else:
        require(keys.shape == (batch, seq_len, n_kv_heads * head_dim), "attention_prefill",
                f"keys must be [{batch}, {seq_len}, {n_kv_heads * head_dim}], got {tuple(keys.shape)}")
        kv_strides = (keys.stride(0), head_dim, keys.stride(1))
    block_m = block_m or (16 if seq_len <= 16 else 64)
    require(min(block_m, block_n) >= 16, "attention_prefill", "tl.dot needs block_m and block_n >= 16")
    positions = positions.contiguous()
    if fallbacks is None:
        fallbacks = torch.zeros(1, dtype=torch.int32, device=q.device)
    phi, safe_low, safe_high = unified if unified is not None else (0.0, 0.0, 0.0)
    out = torch.empty((batch, seq_len, n_heads * head_dim), dtype=q.dtype, device=q.device)
    if out.numel():
        grid = (triton.cdiv(seq_len, block_m), batch * n_heads)
        attention_prefill_kernel[grid](
            q, keys, values, positions, out, fallbacks, seq_len, n_heads, float(scale), float(phi), float(safe_low),
            float(safe_high), q.stride(0), q.stride(1), *kv_strides,
            GROUP=n_heads // n_kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_for(head_dim, 16),
            BLOCK_M=block_m, BLOCK_N=block_n, KEYS_IN_CACHE=keys_in_cache, UNIFIED=unified is not None,
            num_warps=num_warps, num_stages=num_stages)
    return out
