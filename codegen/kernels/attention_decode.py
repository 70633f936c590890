"""Decode attention, one new query per sequence, split over the KV length, in one launch.

Grid (B, Hkv, splits): each program takes one KV head of one sequence, all Hq/Hkv query heads that share
it (so each key is read once), and one contiguous slice of the sequence's keys. Two schemes:

- synchronized (FlashDecoding): a slice keeps its running max m and writes Σ e^(s - m)·v, Σ e^(s - m), m;
  the combine rescales every slice to the common max.
- unified max (FlashDecoding++ §3, runtime/unified_max.py): every slice subtracts the layer's φ, writes
  Σ e^(s - φ)·v and Σ e^(s - φ) (and its max score, only to check the safe range); the combine is one add
  and one divide. A row whose max score left [safe_low, safe_high] is recomputed exactly with the
  synchronized scheme over its whole length, and counted in `fallbacks`.

The combine runs in the same launch: each program stores its slice, then takes a ticket from the
per-(sequence, KV head) arrival counter; the program that arrives last combines the slices and resets the
counter to zero, so the counters are zero between launches (allocate them zeroed once). The split count is
fixed at launch (a CUDA graph replays it); each sequence divides its own length by it, but never into
slices shorter than `min_split_keys`, so short contexts use fewer slices ("active") and the other programs
return at once, touching nothing. A sequence in one slice skips the combine: its program writes the output.
With WRITE_KV the program whose slice holds the new position stores the step's key and value first; with ROTARY
q and that key arrive unrotated and are rotated on load (the plan's rotary ops fused in).
Sequence b attends to cache slots 0..positions[b] (its length is that + 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import (SOFTMAX_FLOOR, block_for, dot_exact, empty_output, out_offsets, require,
                                          require_float, require_index, softmax_tile, wait_for_producers)
from fdpp.runtime.reference_ops import attention as attention_reference

__all__ = ["attention_decode", "allocate_decode_workspace", "attention_reference", "combine_chunk"]


@triton.jit
def _attend_slice(q, k_base, v_base, key_start, key_end, cache_stride_seq, scale, phi,
                  BLOCK_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_N: tl.constexpr, UNIFIED: tl.constexpr):
    """Keys key_start..key_end-1 for the query rows q [BLOCK_GROUP, BLOCK_D].
    Returns (acc [BLOCK_GROUP, BLOCK_D], row max score, row sum): synchronized, acc = Σ e^(s - max)·v and
    sum = Σ e^(s - max); unified, the same against φ (the max is then only reported)."""
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    running_max = tl.full((BLOCK_GROUP,), SOFTMAX_FLOOR, dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_GROUP,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_GROUP, BLOCK_D), dtype=tl.float32)
    for tile_start in range(key_start, key_end, BLOCK_N):
        keys = tile_start + tl.arange(0, BLOCK_N)
        key_ok = keys < key_end
        k = tl.load(k_base + keys[None, :] * cache_stride_seq + dims[:, None],
                    mask=dim_ok[:, None] & key_ok[None, :], other=0.0)                       # [BLOCK_D, BLOCK_N]
        scores = dot_exact(q, k, tl.zeros((BLOCK_GROUP, BLOCK_N), dtype=tl.float32)) * scale
        scores = tl.where(key_ok[None, :], scores, float("-inf"))
        probabilities, running_max, running_sum, acc = softmax_tile(scores, running_max, running_sum, acc, phi,
                                                                    UNIFIED)
        v = tl.load(v_base + keys[:, None] * cache_stride_seq + dims[None, :],
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)                       # [BLOCK_N, BLOCK_D]
        acc = dot_exact(probabilities.to(v.dtype), v, acc)
    return acc, running_max, running_sum


@triton.jit
def _load_head_rows(row_ptrs, dims, mask, cos_row_ptr, sin_row_ptr, HEAD_DIM: tl.constexpr, ROTARY: tl.constexpr):
    """Head vectors at row_ptrs + dims (dims < HEAD_DIM), and when ROTARY rotated by the cos/sin row at
    cos_row_ptr/sin_row_ptr (rotate-half, in float32, rounded back to their dtype as the rotary kernel does)."""
    x = tl.load(row_ptrs + dims, mask=mask, other=0.0)
    if ROTARY:
        HALF: tl.constexpr = HEAD_DIM // 2
        low = dims < HALF
        partner = tl.load(row_ptrs + tl.where(low, dims + HALF, dims - HALF), mask=mask, other=0.0)
        cos = tl.load(cos_row_ptr + dims, mask=dims < HEAD_DIM, other=0.0).to(tl.float32)
        sin = tl.load(sin_row_ptr + dims, mask=dims < HEAD_DIM, other=0.0).to(tl.float32)
        # x * cos + rotate_half(x) * sin, where rotate_half(x) = cat(-x_high, x_low)
        partner = partner.to(tl.float32)
        x = (x.to(tl.float32) * cos + tl.where(low, -partner, partner) * sin).to(x.dtype)
    return x


@triton.jit
def _rows_outside(row_max, row_ok, safe_low, safe_high):
    """How many rows (of those in row_ok) have a max score outside [safe_low, safe_high]: with the unified max,
    the rows that must be recomputed exactly."""
    return tl.sum((row_ok & ((row_max < safe_low) | (row_max > safe_high))).to(tl.int32), axis=0)


@triton.jit
def _combine_slices(batch, kv_head, active, n_heads, splits, out_ptr, partial_out_ptr, partial_max_ptr,
                    partial_sum_ptr, safe_low, safe_high, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_SPLITS: tl.constexpr, GROUP_P2: tl.constexpr,
                    SPLIT_CHUNK: tl.constexpr, UNIFIED: tl.constexpr, OUT_ROWS: tl.constexpr):
    """The last-arriving program: every query row of this KV head, its `active` slices combined and divided,
    stored to out. All partial loads are issued before any store, so the combine costs a few L2 round trips
    however many heads share the KV head. Returns the number of rows whose max left the safe range (unified)."""
    group = tl.arange(0, GROUP_P2)
    group_ok = group < GROUP
    rows = batch * n_heads + kv_head * GROUP + group                                           # [GROUP_P2]
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    slices = tl.arange(0, BLOCK_SPLITS)
    both_ok = group_ok[:, None] & (slices < active)[None, :]
    all_max = tl.load(partial_max_ptr + rows[:, None] * splits + slices[None, :], mask=both_ok,
                      other=SOFTMAX_FLOOR, cache_modifier=".cg")                             # [GROUP_P2, BLOCK_SPLITS]
    all_sum = tl.load(partial_sum_ptr + rows[:, None] * splits + slices[None, :], mask=both_ok, other=0.0,
                      cache_modifier=".cg")
    top = tl.max(all_max, axis=1)                                                            # [GROUP_P2]
    if UNIFIED:
        total = tl.sum(all_sum, axis=1)
    else:
        total = tl.sum(all_sum * tl.exp(all_max - top[:, None]), axis=1)   # masked slices: e^(FLOOR - m) = 0
    combined = tl.zeros((GROUP_P2, BLOCK_D), dtype=tl.float32)
    chunk = tl.arange(0, SPLIT_CHUNK)
    for first in range(0, active, SPLIT_CHUNK):
        in_chunk = group_ok[:, None] & ((first + chunk) < active)[None, :]                    # [GROUP_P2, SPLIT_CHUNK]
        chunk_rows = rows[:, None] * splits + first + chunk[None, :]                           # [GROUP_P2, SPLIT_CHUNK]
        chunk_out = tl.load(partial_out_ptr + chunk_rows[:, :, None] * HEAD_DIM + dims[None, None, :],
                            mask=in_chunk[:, :, None] & dim_ok[None, None, :], other=0.0,
                            cache_modifier=".cg")                                 # [GROUP_P2, SPLIT_CHUNK, BLOCK_D]
        if not UNIFIED:
            chunk_max = tl.load(partial_max_ptr + chunk_rows, mask=in_chunk, other=SOFTMAX_FLOOR,
                                cache_modifier=".cg")
            chunk_out = chunk_out * tl.exp(chunk_max - top[:, None])[:, :, None]
        combined += tl.sum(chunk_out, axis=1)
    columns = ((kv_head * GROUP + group) * HEAD_DIM)[:, None] + dims[None, :]                 # [GROUP_P2, BLOCK_D]
    tl.store(out_ptr + out_offsets(batch, columns, n_heads * HEAD_DIM, OUT_ROWS), combined / total[:, None],
             mask=group_ok[:, None] & dim_ok[None, :])
    return _rows_outside(top, group_ok, safe_low, safe_high)


@triton.jit
def _exact_fallback(fallen, q, k_base, v_base, length, cache_stride_seq, scale, out_rows, row_ok, dim_ok,
                    fallbacks_ptr, BLOCK_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """Unified max, when `fallen` rows of this KV head left the safe range: recompute all its query rows with the
    synchronized scheme over the whole length, overwrite out_rows [BLOCK_GROUP, BLOCK_D], count the rows."""
    if fallen > 0:
        exact_acc, _, exact_sum = _attend_slice(q, k_base, v_base, 0, length, cache_stride_seq, scale, 0.0,
                                                BLOCK_GROUP, HEAD_DIM, BLOCK_D, BLOCK_N, False)
        tl.store(out_rows, exact_acc / exact_sum[:, None], mask=row_ok[:, None] & dim_ok[None, :])
        tl.atomic_add(fallbacks_ptr, fallen, sem="relaxed", scope="gpu")


@triton.jit
def attention_decode_kernel(
    q_ptr,                  # [B, Hq*D] queries (one token per sequence), unit stride along the last axis
    k_cache_ptr,            # [B_cap, Hkv, T_cap, D] key cache, unit stride along D
    v_cache_ptr,            # [B_cap, Hkv, T_cap, D] value cache, same strides
    positions_ptr,          # [B] int position of each query; the sequence's length is position + 1
    out_ptr,                # [B, Hq*D] output, contiguous, in the query dtype (interleaved: see OUT_ROWS)
    partial_out_ptr,        # [B, Hq, splits, D] float32 scratch: per slice, Σ e^(s - m or φ)·v
    partial_max_ptr,        # [B, Hq, splits] float32 scratch: per slice, its max score (FLOOR if empty)
    partial_sum_ptr,        # [B, Hq, splits] float32 scratch: per slice, Σ e^(s - m or φ)
    arrivals_ptr,           # [B, Hkv] int32, zero before the launch and left zero after it
    fallbacks_ptr,          # [1] int32: incremented by the number of rows recomputed (unified only)
    new_k_ptr,              # [B, Hkv*D] this step's keys (read only when WRITE_KV), unit stride along the last axis
    new_v_ptr,              # [B, Hkv*D] this step's values (read only when WRITE_KV), likewise
    cos_ptr,                # [B, D] rotary cos row of each query's position (read only when ROTARY)
    sin_ptr,                # [B, D] rotary sin rows, laid out as cos
    new_k_stride_batch,     # elements between sequences of new_k (it may be a view into a fused QKV output)
    new_v_stride_batch,     # elements between sequences of new_v
    rotary_stride_batch,    # elements between sequences of cos and sin
    n_heads,                # Hq
    n_kv_heads,             # Hkv
    splits,                 # slices per (sequence, KV head): grid axis 2
    min_split_keys,         # no slice is cut shorter than this (a multiple of BLOCK_N)
    scale,                  # softmax scale
    phi,                    # unified max value φ (unused when synchronized)
    safe_low,               # a row is exact with φ iff its max score is in [safe_low, safe_high]
    safe_high,
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
    BLOCK_SPLITS: tl.constexpr,  # power of two >= splits
    GROUP_P2: tl.constexpr,      # power of two >= GROUP: the combine's query rows
    SPLIT_CHUNK: tl.constexpr,   # slices the combine reads per step (GROUP_P2 * SPLIT_CHUNK * BLOCK_D floats)
    UNIFIED: tl.constexpr,       # unified max (with fallback) or synchronized
    WRITE_KV: tl.constexpr,      # first store this step's key and value into the cache at the query's position
    ROTARY: tl.constexpr,        # q and the new key arrive unrotated: rotate them (rotate-half) on load (needs WRITE_KV)
    OUT_ROWS: tl.constexpr = 1,  # > 1: out interleaved by blocks of OUT_ROWS sequences (_common.out_offsets)
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    # lets the next kernel (o_proj in a decode step) be scheduled at once: in the whole model that measured
    # faster than signalling after the key loop, though launched after itself this kernel runs slower so
    # (docs/perf/2026-12-06-attention-late-signal.md, "Whole model")
    wait_for_producers(GRID_DEPENDENCY)
    batch = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    length = (tl.load(positions_ptr + batch * positions_stride) + 1).to(tl.int32)
    slice_len = tl.maximum(tl.cdiv(tl.cdiv(length, splits), BLOCK_N) * BLOCK_N, min_split_keys)
    active = tl.cdiv(length, slice_len)          # slices holding keys; programs past them have nothing to do
    if split < active:
        key_start = split * slice_len
        key_end = tl.minimum(key_start + slice_len, length)
        group_rows = tl.arange(0, BLOCK_GROUP)
        heads = kv_head * GROUP + group_rows
        row_ok = group_rows < GROUP
        dims = tl.arange(0, BLOCK_D)
        dim_ok = dims < HEAD_DIM
        cos_row = cos_ptr + batch * rotary_stride_batch
        sin_row = sin_ptr + batch * rotary_stride_batch
        q = _load_head_rows(q_ptr + batch * q_stride_batch + heads[:, None] * HEAD_DIM, dims[None, :],
                            row_ok[:, None] & dim_ok[None, :], cos_row, sin_row, HEAD_DIM,
                            ROTARY)                                                          # [BLOCK_GROUP, BLOCK_D]
        cache_offset = batch * cache_stride_batch + kv_head.to(tl.int64) * cache_stride_head
        k_base = k_cache_ptr + cache_offset
        v_base = v_cache_ptr + cache_offset
        out_rows = out_ptr + out_offsets(batch, (heads * HEAD_DIM)[:, None] + dims[None, :], n_heads * HEAD_DIM,
                                         OUT_ROWS)                                         # [BLOCK_GROUP, BLOCK_D]
        if WRITE_KV:
            if key_end == length:
                # The slice holding the new position writes this step's key and value there (write_kv fused:
                # one launch less per layer); the barrier makes the stores visible to the program's own loads.
                # No other slice reads that slot, and the last-arriving program acquires it with the ticket.
                new_slot = (length - 1).to(tl.int64) * cache_stride_seq + dims
                within = kv_head * HEAD_DIM + dims
                new_key = _load_head_rows(new_k_ptr + batch * new_k_stride_batch + kv_head * HEAD_DIM, dims, dim_ok,
                                          cos_row, sin_row, HEAD_DIM, ROTARY)                # [BLOCK_D]
                tl.store(k_base + new_slot, new_key, mask=dim_ok)
                tl.store(v_base + new_slot, tl.load(new_v_ptr + batch * new_v_stride_batch + within, mask=dim_ok),
                         mask=dim_ok)
                tl.debug_barrier()
        acc, slice_max, slice_sum = _attend_slice(q, k_base, v_base, key_start, key_end, cache_stride_seq, scale,
                                                  phi, BLOCK_GROUP, HEAD_DIM, BLOCK_D, BLOCK_N, UNIFIED)
        if active == 1:
            # The whole sequence in one slice (short contexts): no partials, no ticket, no combine.
            tl.store(out_rows, acc / slice_sum[:, None], mask=row_ok[:, None] & dim_ok[None, :])
            if UNIFIED:
                fallen = _rows_outside(slice_max, row_ok, safe_low, safe_high)
                _exact_fallback(fallen, q, k_base, v_base, length, cache_stride_seq, scale, out_rows, row_ok,
                                dim_ok, fallbacks_ptr, BLOCK_GROUP, HEAD_DIM, BLOCK_D, BLOCK_N)
        else:
            partial_rows = (batch * n_heads + heads) * splits + split                          # [BLOCK_GROUP]
            tl.store(partial_max_ptr + partial_rows, slice_max, mask=row_ok)
            tl.store(partial_sum_ptr + partial_rows, slice_sum, mask=row_ok)
            tl.store(partial_out_ptr + partial_rows[:, None] * HEAD_DIM + dims[None, :], acc,
                     mask=row_ok[:, None] & dim_ok[None, :])
            # Every thread's stores come before the ticket (barrier), and the ticket releases them to the program
            # that arrives last, which acquires them; it reads the slices from L2 (.cg), never a stale L1 line.
            tl.debug_barrier()
            counter = arrivals_ptr + batch * n_kv_heads + kv_head
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == active - 1:
                tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
                fallen = _combine_slices(batch, kv_head, active, n_heads, splits, out_ptr, partial_out_ptr,
                                         partial_max_ptr, partial_sum_ptr, safe_low, safe_high, GROUP, HEAD_DIM,
                                         BLOCK_D, BLOCK_SPLITS, GROUP_P2, SPLIT_CHUNK, UNIFIED, OUT_ROWS)
                if UNIFIED:
                    _exact_fallback(fallen, q, k_base, v_base, length, cache_stride_seq, scale, out_rows, row_ok,
                                    dim_ok, fallbacks_ptr, BLOCK_GROUP, HEAD_DIM, BLOCK_D, BLOCK_N)


def combine_chunk(group: int, splits: int, floats_per_row: int = 32) -> int:
    """Slices the combine reads per step: about `floats_per_row` (query row, slice) pairs per step, so the
    [GROUP_P2, SPLIT_CHUNK, BLOCK_D] tile stays a few dozen registers per thread."""
    return min(block_for(splits), max(1, floats_per_row // block_for(group)))


def allocate_decode_workspace(batch: int, n_heads: int, n_kv_heads: int, head_dim: int, num_splits: int,
                              device) -> tuple:
    """Scratch of one launch: (partial_out [B, Hq, splits, D], partial_max, partial_sum [B, Hq, splits]) float32,
    and the arrival counters [B, Hkv] int32, zeroed (the kernel leaves them zero). The runtime keeps them."""
    return (torch.empty((batch, n_heads, num_splits, head_dim), dtype=torch.float32, device=device),
            torch.empty((batch, n_heads, num_splits), dtype=torch.float32, device=device),
            torch.empty((batch, n_heads, num_splits), dtype=torch.float32, device=device),
            torch.zeros((batch, n_kv_heads), dtype=torch.int32, device=device))


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor, *,
                     n_heads: int, n_kv_heads: int, head_dim: int, scale: float,
                     unified: tuple[float, float, float] | None = None, fallbacks: torch.Tensor | None = None,
                     new_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                     rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                     num_splits: int = 4, min_split_keys: int = 64, block_n: int = 64, num_warps: int = 4,
                     num_stages: int = 2, workspace: tuple | None = None,
                     dependent_launch: bool = False, out_rows_together: int = 1) -> torch.Tensor:
    """One query per sequence: q [B, 1, Hq*D] (or [B, Hq*D]) over the cache [B_cap, Hkv, T_cap, D] after
    kv_cache.write_kv; positions [B, 1] (or [B]). Returns q's shape and dtype.

    new_kv: this step's (k, v), each [B, 1, Hkv*D] (or [B, Hkv*D]) with unit stride along the last axis; the
    kernel then writes them into the caches at each sequence's position itself (what write_kv would do).
    rotary: (cos, sin), each [B, 1, D] (or [B, D]) for each query's position: q and new_kv's key arrive unrotated
    and the kernel rotates them (rotate-half) as it loads them; needs new_kv.

    unified: (φ, safe_low, safe_high) for the unified-max scheme, None for synchronized. fallbacks: int32 [1]
    counter the unified kernel adds its recomputed rows to. Config: num_splits, min_split_keys (a multiple of
    block_n), block_n, num_warps, num_stages. workspace: from allocate_decode_workspace, or allocated here.
    dependent_launch (NVIDIA sm_90 and later, not the interpreter): launch as a programmatic dependent of the
    kernel before on the stream, as bundles for those targets do (wait_for_producers). out_rows_together T > 1:
    the result is the interleaved [cdiv(B, T), Hq*D, T] buffer (_common.out_offsets) instead of q's shape.
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
    require(block_n >= 16 and min_split_keys % block_n == 0, "attention_decode",
            "block_n must be >= 16 (tl.dot) and divide min_split_keys")
    positions = positions.reshape(batch)
    partial_out, partial_max, partial_sum, arrivals = workspace or allocate_decode_workspace(
        batch, n_heads, n_kv_heads, head_dim, num_splits, q.device)
    require(partial_out.shape == (batch, n_heads, num_splits, head_dim) and partial_out.is_contiguous()
            and arrivals.shape == (batch, n_kv_heads), "attention_decode",
            "workspace does not match this batch, head count and num_splits")
    if fallbacks is None:
        fallbacks = torch.zeros(1, dtype=torch.int32, device=q.device)
    new_k, new_v = new_kv if new_kv is not None else (q, q)            # never read without WRITE_KV
    new_k, new_v = new_k.reshape(batch, -1), new_v.reshape(batch, -1)
    require(new_kv is None or (new_k.shape == new_v.shape == (batch, n_kv_heads * head_dim) and new_k.stride(-1) == 1
                               and new_v.stride(-1) == 1 and new_k.dtype == new_v.dtype == k_cache.dtype),
            "attention_decode", f"new_kv must be two [{batch}, 1, {n_kv_heads * head_dim}] tensors of the cache dtype")
    cos, sin = rotary if rotary is not None else (q, q)                # never read without ROTARY
    cos, sin = cos.reshape(batch, -1), sin.reshape(batch, -1)
    require(rotary is None or (new_kv is not None and cos.shape == sin.shape == (batch, head_dim)
                               and cos.stride() == sin.stride() and cos.stride(-1) == 1),
            "attention_decode", f"rotary needs new_kv and (cos, sin) as two [{batch}, 1, {head_dim}] tensors "
                                f"of equal strides")
    phi, safe_low, safe_high = unified if unified is not None else (0.0, 0.0, 0.0)
    out = empty_output("attention_decode", batch, n_heads * head_dim, out_rows_together, q)
    if batch:
        group = n_heads // n_kv_heads
        attention_decode_kernel[(batch, n_kv_heads, num_splits)](
            queries, k_cache, v_cache, positions, out, partial_out, partial_max, partial_sum, arrivals, fallbacks,
            new_k, new_v, cos, sin, new_k.stride(0), new_v.stride(0), cos.stride(0), n_heads, n_kv_heads, num_splits, min_split_keys,
            float(scale), float(phi), float(safe_low), float(safe_high), queries.stride(0), positions.stride(0),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), GROUP=group, BLOCK_GROUP=block_for(group, 16),
            HEAD_DIM=head_dim, BLOCK_D=block_for(head_dim, 16), BLOCK_N=block_n, BLOCK_SPLITS=block_for(num_splits),
            GROUP_P2=block_for(group), SPLIT_CHUNK=combine_chunk(group, num_splits), UNIFIED=unified is not None,
            WRITE_KV=new_kv is not None, ROTARY=rotary is not None, OUT_ROWS=out_rows_together,
            num_warps=num_warps, num_stages=num_stages,
            **({"GRID_DEPENDENCY": True, "launch_pdl": True} if dependent_launch else {}))
    return out if out_rows_together > 1 else out.view(q.shape)
