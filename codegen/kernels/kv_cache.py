"""Write this step's keys and values into the layer's KV cache at each token's position: the first half
of the plan's ATTENTION op at prefill (the prefill kernel then reads only the cache). At decode the
attention kernel stores the one new key and value itself (attention_decode's WRITE_KV)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.runtime.reference_ops import write_kv as reference_write_kv

from fdpp.codegen.kernels._common import block_for, require, require_float, require_index, wait_for_producers

__all__ = ["write_kv", "write_kv_reference"]


@triton.jit
def write_kv_kernel(
    k_ptr,                  # [B, S, Hkv*D] new keys, unit stride along the last axis
    v_ptr,                  # [B, S, Hkv*D] new values, unit stride along the last axis
    k_cache_ptr,            # [B_cap, Hkv, T_cap, D] key cache, unit stride along D
    v_cache_ptr,            # [B_cap, Hkv, T_cap, D] value cache, same strides as k_cache
    positions_ptr,          # [B, S] int slot of each token, contiguous
    seq_len,                # S
    n_kv_heads,             # Hkv
    k_stride_batch,         # elements between batches of k
    k_stride_seq,           # elements between tokens of k
    v_stride_batch,         # elements between batches of v (v may be a view into a fused QKV output)
    v_stride_seq,           # elements between tokens of v
    cache_stride_batch,     # elements between batch rows of the caches
    cache_stride_head,      # elements between heads of the caches
    cache_stride_seq,       # elements between slots of the caches
    HEAD_DIM: tl.constexpr,      # D
    BLOCK_D: tl.constexpr,       # power of two >= D
    BLOCK_HEADS: tl.constexpr,   # heads per program; grid axis 1 covers Hkv
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY)
    token = tl.program_id(0)
    batch = (token // seq_len).to(tl.int64)
    seq = (token % seq_len).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads[:, None] < n_kv_heads) & (dims[None, :] < HEAD_DIM)
    slot = tl.load(positions_ptr + batch * seq_len + seq).to(tl.int64)
    within = heads[:, None] * HEAD_DIM + dims[None, :]
    target = batch * cache_stride_batch + heads[:, None].to(tl.int64) * cache_stride_head \
        + slot * cache_stride_seq + dims[None, :]
    k_source = k_ptr + batch * k_stride_batch + seq * k_stride_seq + within
    v_source = v_ptr + batch * v_stride_batch + seq * v_stride_seq + within
    tl.store(k_cache_ptr + target, tl.load(k_source, mask=mask), mask=mask)
    tl.store(v_cache_ptr + target, tl.load(v_source, mask=mask), mask=mask)


def write_kv(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, *, block_heads: int | None = None, num_warps: int = 4) -> None:
    """k_cache[b, :, positions[b, s]] = k[b, s] (split into Hkv heads), same for v; in place.

    k, v [B, S, Hkv*D]; positions [B, S] int, each < T_cap and distinct within a row (not checked);
    caches [B_cap, Hkv, T_cap, D] with B <= B_cap. Values are cast to the cache dtype.
    Config: block_heads (default next power of two of Hkv, at most 16), num_warps.
    """
    require_float("write_kv", k=k, v=v, k_cache=k_cache, v_cache=v_cache)
    require_index("write_kv", positions=positions)
    require(k_cache.dim() == 4 and k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride()
            and k_cache.stride(-1) == 1, "write_kv", "caches must be [B_cap, Hkv, T_cap, D] with equal strides")
    _, n_kv_heads, _, head_dim = k_cache.shape
    batch, seq_len = positions.shape
    require(k.shape == v.shape == (batch, seq_len, n_kv_heads * head_dim) and k.stride(-1) == v.stride(-1) == 1,
            "write_kv", f"k and v must be [{batch}, {seq_len}, {n_kv_heads * head_dim}] with unit stride along it")
    require(batch <= k_cache.shape[0], "write_kv", f"batch {batch} exceeds the cache's {k_cache.shape[0]} rows")
    positions = positions.contiguous()
    block_heads = block_heads or min(block_for(n_kv_heads), 16)
    if positions.numel():
        grid = (batch * seq_len, triton.cdiv(n_kv_heads, block_heads))
        write_kv_kernel[grid](k, v, k_cache, v_cache, positions, seq_len, n_kv_heads, k.stride(0), k.stride(1),
                              v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                              HEAD_DIM=head_dim, BLOCK_D=block_for(head_dim), BLOCK_HEADS=block_heads,
                              num_warps=num_warps)


write_kv_reference = reference_write_kv
