"""Sparse linear layers over the chunked-CSR encoding (runtime/sparse_formats.py), x [M, K] @ W[N, K]^T
(+ bias), float32 accumulation, on CUDA cores for a few rows of x.

The bitmap and Tiled-CSL kernels rebuild every weight position of a tile on chip, which costs integer work
per position whatever the sparsity. This kernel works per nonzero instead: an entry's column is its chunk's
base plus its 8-bit offset, so a program multiplies each stored value by the activation at that column
(a gather from x, which stays in L1) and sums along the row: no tile is rebuilt and no position that holds
a zero costs anything. Each program owns BLOCK_N weight rows, BLOCK_M rows of x and one of SPLIT_K slices
of the rows' chunks; with SPLIT_K > 1 it writes float32 partial sums that sum_splits_kernel adds.

Measured on an H200 (docs/perf/2026-11-22-h200-chunked-csr.md, Llama-2-7B shapes): at M = 1 and 70% sparsity
1.50-1.64x cuBLAS on the dense weight (2.0-2.8x at 90%), but every row of x gathers again, so at 70% it
is ~1.0x at M = 2 and 0.31-0.40x at M = 8: a format for batch-1 decode.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from fdpp.codegen.kernels._common import as_rows, block_for, require, require_float
from fdpp.codegen.kernels.sparse_linear import HARDWARE_POPCOUNT, _store_rows, _sum_splits
__all__ = ["chunked_csr_linear", "default_chunked_csr_config"]


@triton.jit
def _gather(base_ptrs, index):
    """base_ptrs[index] (16- or 32-bit values; every address valid), index int32 broadcast against base_ptrs.
    Compiled for NVIDIA, the address and a read-only load in inline PTX per element, which keeps the
    index's register layout (a tl.load of scattered addresses gets a layout of its own, and moving the
    indices into it and the values back costs shared-memory round trips per step) and forms the address
    with one 32x32->64-bit multiply-add. HIP and the interpreter: tl.load."""
    if HARDWARE_POPCOUNT and hasattr(libdevice, "byte_perm"):
        if base_ptrs.dtype.element_ty.primitive_bitwidth == 16:
            bits = tl.inline_asm_elementwise(
                "{ .reg .b64 a; mad.wide.s32 a, $1, 2, $2; ld.global.nc.b16 $0, [a]; }", "=h,r,l",
                [index, base_ptrs], dtype=tl.int16, is_pure=True, pack=1)
        else:
            bits = tl.inline_asm_elementwise(
                "{ .reg .b64 a; mad.wide.s32 a, $1, 4, $2; ld.global.nc.b32 $0, [a]; }", "=r,r,l",
                [index, base_ptrs], dtype=tl.int32, is_pure=True, pack=1)
        value = bits.to(base_ptrs.dtype.element_ty, bitcast=True)
    else:
        value = tl.load(base_ptrs + index)
    return value


@triton.jit
def chunked_csr_linear_kernel(
    x_ptr,              # [M, K] activations, unit stride along K
    values_ptr,         # [N, L] the nonzeros of each row chunk by chunk (L = chunks_per_row * CHUNK), 0 = padding
    offsets_ptr,        # [N, L] uint8: an entry's column minus its chunk's base
    bases_ptr,          # [N, chunks_per_row] int32: each chunk's first column
    bias_ptr,           # [N] bias (read only when HAS_BIAS, which needs SPLIT_K == 1)
    out_ptr,            # SPLIT_K == 1: [M, N] output, contiguous; else [SPLIT_K, M, N] float32 partial sums
    M, N,               # rows of x, output features
    x_row_stride,       # elements between rows of x
    chunks_per_row,     # chunks of every weight row
    HAS_BIAS: tl.constexpr,      # add the bias
    BLOCK_M: tl.constexpr,       # rows of x per program (grid axis 2)
    BLOCK_N: tl.constexpr,       # weight rows per program (grid axis 0)
    CHUNKS: tl.constexpr,        # chunks of each row per step
    CHUNK: tl.constexpr,         # entries per chunk (the format's)
    SPLIT_K: tl.constexpr,       # programs sharing one row block's chunks (grid axis 1)
    VECTOR: tl.constexpr,        # entries one thread loads at once (values and offsets alike)
):
    row_block, split = tl.program_id(0), tl.program_id(1)
    first_row = tl.program_id(2) * BLOCK_M
    # one axis for (row of x, weight row) pairs, x's row outer: the entries load once per row of x (the
    # repeats hit L1), and every tensor stays 3-D in the entries' layout; a 4-D product would start in a
    # default layout and move the entries into it every step through shared memory
    pair = tl.arange(0, BLOCK_M * BLOCK_N)                                                  # [PAIRS]
    features = row_block * BLOCK_N + pair % BLOCK_N
    feature_ok = features < N
    steps = tl.cdiv(tl.cdiv(chunks_per_row, CHUNKS), SPLIT_K)
    first_chunk = split * steps * CHUNKS
    last_chunk = tl.minimum(first_chunk + steps * CHUNKS, chunks_per_row)
    chunk = tl.arange(0, CHUNKS)                                                            # [CHUNKS]
    entry_in_step = (chunk[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :])[None, :, :]   # [1, CHUNKS, CHUNK]
    row_entries = features.to(tl.int64)[:, None, None] * (chunks_per_row * CHUNK)            # [PAIRS, 1, 1]
    row_bases = bases_ptr + (tl.minimum(features, N - 1).to(tl.int64) * chunks_per_row)[:, None, None]
    # rows of x past M read row M - 1 (their sums are never stored), so the gather needs no mask
    x_rows = tl.minimum(first_row + pair // BLOCK_N, M - 1)                                 # [PAIRS]
    x_row_ptrs = x_ptr + (x_rows.to(tl.int64) * x_row_stride)[:, None, None]               # [PAIRS, 1, 1]
    # zeros built from the entry indices, so the sums live in the layout the loads give the entries (a
    # plain tl.zeros gets a default layout, and every step would move its products into it)
    acc = (row_entries + entry_in_step).to(tl.float32) * 0.0                               # [PAIRS, CHUNKS, CHUNK]
    for c in range(first_chunk, last_chunk, CHUNKS):
        chunk_ok = feature_ok[:, None] & (c + chunk < last_chunk)[None, :]                  # [PAIRS, CHUNKS]
        # each entry reads its chunk's base (a broadcast: one load per thread and chunk once compiled); a
        # chunk past the slice reads the row's last, a valid column for its zero-valued entries
        chunk_index = tl.minimum(c + chunk, chunks_per_row - 1)[None, :, None]              # [1, CHUNKS, 1]
        base = _gather(row_bases, tl.broadcast_to(chunk_index, (BLOCK_M * BLOCK_N, CHUNKS, CHUNK)))
        entry = tl.max_contiguous(tl.multiple_of(row_entries + c * CHUNK + entry_in_step, (1, 1, VECTOR)),
                                  (1, 1, VECTOR))
        entry_ok = chunk_ok[:, :, None]
        value = tl.load(values_ptr + entry, mask=entry_ok, other=0.0)                      # [PAIRS, CHUNKS, CHUNK]
        column = base + tl.load(offsets_ptr + entry, mask=entry_ok, other=0).to(tl.int32)
        x = _gather(x_row_ptrs, column)                                                     # [PAIRS, CHUNKS, CHUNK]
        acc += x.to(tl.float32) * value.to(tl.float32)
    acc = tl.reshape(tl.sum(tl.sum(acc, axis=2), axis=1), (BLOCK_M, BLOCK_N))             # [BLOCK_M, BLOCK_N]
    features = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
    _store_rows(acc, out_ptr, bias_ptr, first_row, features, M, N, split, HAS_BIAS, BLOCK_M)


def default_chunked_csr_config(n: int, chunks_per_row: int, m: int) -> dict:
    """block_m, block_n, chunks (per step), split_k, vector, num_warps for a weight of n rows and m rows of x:
    the best of an H200 sweep (scripts/bench_chunked_csr.py) over Llama-2-7B's shapes at 50-90% sparsity."""
    block_n, chunks = (4, 8) if m == 1 else (4, 4) if m == 2 else (16, 4)
    return {"block_m": min(block_for(m), 8), "block_n": block_n, "chunks": chunks, "split_k": 1, "vector": 8,
            "num_warps": 4}


def chunked_csr_linear(x: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, bases: torch.Tensor,
                       shape, bias: torch.Tensor | None = None, **config) -> torch.Tensor:
    """x [..., K] @ W^T + bias -> [..., N] (x's dtype), W [N, K] given as chunked CSR (values [N, L],
    offsets [N, L] uint8, bases [N, L / chunk] int32). Config keys as default_chunked_csr_config returns."""
    kernel = "chunked_csr_linear"
    require_float(kernel, x=x, values=values)
    n, k = tuple(shape)
    require(x.shape[-1] == k, kernel, f"x [..., {x.shape[-1]}] does not fit the weight's shape {tuple(shape)} ([N, K])")
    require(bases.dim() == 2 and bases.shape[0] == n and bases.dtype == torch.int32, kernel,
            f"bases must be int32 [{n}, chunks], got {bases.dtype} {tuple(bases.shape)}")
    chunks_per_row = bases.shape[1]
    require(values.dim() == 2 and values.shape[0] == n and values.shape[1] % max(1, chunks_per_row) == 0, kernel,
            f"values must be [{n}, chunks * chunk], got {tuple(values.shape)}")
    chunk = values.shape[1] // max(1, chunks_per_row)
    require(offsets.shape == values.shape and offsets.dtype == torch.uint8, kernel,
            f"offsets must be uint8 {tuple(values.shape)}, got {offsets.dtype} {tuple(offsets.shape)}")
    require(bias is None or tuple(bias.shape) == (n,), kernel, f"bias must be [{n}]")
    for name, part in {"values": values, "offsets": offsets, "bases": bases}.items():
        require(part.device == x.device, kernel, f"{name} is on {part.device}, x on {x.device}")
        require(part.is_contiguous(), kernel, f"{name} must be contiguous")
    rows = as_rows(x, k)
    m = rows.shape[0]
    cfg = {**default_chunked_csr_config(n, chunks_per_row, m), **config}
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    split_k = cfg["split_k"]
    partial = out if split_k == 1 else torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    bias_arg = bias.contiguous() if bias is not None else values
    if out.numel():
        grid = (triton.cdiv(n, cfg["block_n"]), split_k, triton.cdiv(m, cfg["block_m"]))
        chunked_csr_linear_kernel[grid](
            rows, values, offsets, bases, bias_arg, partial, m, n, rows.stride(0), chunks_per_row,
            HAS_BIAS=bias is not None and split_k == 1, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
            CHUNKS=cfg["chunks"], CHUNK=chunk, SPLIT_K=split_k, VECTOR=cfg["vector"], num_warps=cfg["num_warps"])
        _sum_splits(partial, bias_arg, out, bias is not None)
    return out.view(*x.shape[:-1], n)
