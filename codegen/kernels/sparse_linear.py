"""Sparse linear layers, x [M, K] @ W[N, K]^T (+ bias), float32 accumulation, with W read in one of the
Flash-LLM encodings of runtime/sparse_formats.py (DESIGN.md §6): "load as sparse, compute as dense". Only
the encoded bytes cross device memory; each program rebuilds a dense weight tile on chip and multiplies it
like the dense kernels do (CUDA cores for a few rows of x, tensor cores through tl.dot from 16 rows).

- bitmap: one program owns one tile row-block of the format (TILE_N weight rows), BLOCK_M rows of x and
  one of SPLIT_K slices of the K tiles. A position's value index is the tile's first index plus the set
  bits before it in row-major order: per word a popcount and a prefix sum (a few ops per 32 positions),
  per position a shift that moves its bit to the sign and one popcount of the shifted word (the set bits
  at or below it); only present positions load. The loop is software pipelined by hand (a tile's values
  load while the previous tile is multiplied), and compiled for NVIDIA the per-position work is one
  inline-PTX block (_gather_tile): ~13 SASS instructions a position at M = 1 against ~15 before.
- Tiled-CSL: Triton has no shared-memory scatter, so each program rebuilds its 128x64 tile in its own
  slice of a global scratch buffer (small enough to stay in L2): zero it, scatter the tile's entries
  (unswizzled), read the dense tile back, multiply; barriers between the phases.

Both walk their K tiles as a chain of dependent loads, so they need many warps in flight: SPLIT_K programs
share a row block's K tiles and write float32 partial sums that sum_splits_kernel adds (with the bias) into
the output. Measured on an H200 (scripts/bench_sparse.py, Llama-2-7B shapes, M 1..64, 50-90% sparsity)
the bitmap kernel runs at 0.42-0.72x cuBLAS on the dense weight (0.30-0.62x before the pipelined PTX
gather), about as fast at 90% sparsity as at 50%: the per-position decode bounds it, not memory traffic.
The Tiled-CSL tile rebuild costs three L2 round trips a tile (0.29-0.54x).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from fdpp.codegen.kernels._common import (as_rows, block_for, dot_exact, let_next_start, require, require_float,
                                          wait_for_producers)
from fdpp.runtime.reference_ops import linear as linear_reference
from fdpp.runtime.sparse_formats import TILED_CSL_TILE, SparseWeight

__all__ = ["bitmap_linear", "tiled_csl_linear", "sparse_linear", "linear_reference", "default_split_k",
           "default_num_warps"]

CUDA_CORE_MAX_ROWS = 4          # wrappers' default: CUDA cores up to this many rows of x, tensor cores above
TILED_CSL_ROWS, TILED_CSL_COLS = TILED_CSL_TILE
# Warps in flight that split_k aims for: the decode is a chain of dependent loads per tile, hidden only by
# other warps (H200 sweep, scripts/bench_sparse.py: ~2048, i.e. ~16 per multiprocessor, was best).
WARPS_IN_FLIGHT = 2048


def default_split_k(row_blocks: int, tiles_k: int, num_warps: int) -> int:
    """Programs per row block (a power of two, at most one per K tile) so the grid holds ~WARPS_IN_FLIGHT."""
    want = max(1, WARPS_IN_FLIGHT // max(1, row_blocks * num_warps))
    return max(1, min(triton.next_power_of_2(want), tiles_k))


def default_num_warps(tile: tuple[int, int], tensor_cores: bool) -> int:
    """4, or for CUDA-core bitmap tiles ~1024 positions a warp (each thread's gather stays ~32 wide)."""
    return 4 if tensor_cores else max(1, min(4, tile[0] * tile[1] // 1024))


@triton.jit
def popcount(v):
    """Set bits of each int32, read as unsigned. Compiled: the hardware instruction through the backend's
    device library (CUDA __nv_popc; HIP __ockl_popcount_u32, which Triton 3.6's HIP library does not offer
    yet: `libdevice` is that backend's module when this is traced). Else, and in the interpreter (which
    calls no device library), SWAR bit tricks: arithmetic shifts are harmless, as each mask clears the
    bits a sign extension fills."""
    if HARDWARE_POPCOUNT and hasattr(libdevice, "popc"):
        count = libdevice.popc(v)
    else:
        v = v - ((v >> 1) & 0x55555555)                      # 2-bit counts
        v = (v & 0x33333333) + ((v >> 2) & 0x33333333)       # 4-bit counts
        v = (v + (v >> 4)) & 0x0F0F0F0F                      # byte counts
        count = (v * 0x01010101) >> 24                      # their sum lands in the top byte
    return count


@triton.jit
def _load_x(x_ptr, first_row, M, x_row_stride, k, K, BLOCK_M: tl.constexpr):
    """x[first_row : first_row + BLOCK_M, k] [BLOCK_M, len(k)], zero past M and K."""
    rows = first_row + tl.arange(0, BLOCK_M)
    return tl.load(x_ptr + rows.to(tl.int64)[:, None] * x_row_stride + k[None, :],
                   mask=(rows < M)[:, None] & (k < K)[None, :], other=0.0)


@triton.jit
def _dot_tile(acc, x, w):
    """acc [BLOCK_M, TILE_N] + x [BLOCK_M, TILE_K] @ w^T on tensor cores, w [TILE_N, TILE_K] cast to x's dtype."""
    return dot_exact(x, tl.trans(w.to(x.dtype)), acc)


@triton.jit
def _multiply_row_by_row(acc, w, x_ptr, first_row, M, x_row_stride, k, K, BLOCK_M: tl.constexpr):
    """acc [BLOCK_M, TILE_N] + x[first_row : first_row + BLOCK_M, k] @ w^T on CUDA cores, one row of x at a
    time: the sum along K then runs in w's own layout (from a dense load: K mostly in-thread), where a 3-D
    product would first move the tile through shared memory."""
    w = w.to(tl.float32)
    slot = tl.arange(0, BLOCK_M)[:, None]                                                   # [BLOCK_M, 1]
    for r in tl.static_range(BLOCK_M):
        row = first_row + r
        columns = tl.where(row < M, K, 0)                       # a row past M reads nothing
        x = tl.load(x_ptr + row.to(tl.int64) * x_row_stride + k, mask=k < columns,
                    other=0.0).to(tl.float32)                                               # [TILE_K]
        acc += tl.where(slot == r, tl.sum(w * x[None, :], axis=1)[None, :], 0.0)           # [BLOCK_M, TILE_N]
    return acc


@triton.jit
def _products(x, w):
    """x [BLOCK_M, TILE_K] times w [TILE_N, TILE_K] elementwise -> [BLOCK_M, TILE_N, TILE_K] float32."""
    return x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]


@triton.jit
def _split_tiles(tiles_k, split, SPLIT_K: tl.constexpr):
    """The K tiles [first, last) of one of SPLIT_K programs sharing a row block (possibly none)."""
    per_split = tl.cdiv(tiles_k, SPLIT_K)
    first = split * per_split
    return first, tl.minimum(first + per_split, tiles_k)


@triton.jit
def _store_rows(acc, out_ptr, bias_ptr, first_row, features, M, N, split,
                HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr):
    """out[split, rows, features] = acc (+ bias), acc [BLOCK_M, TILE_N] float32; out [splits, M, N]
    contiguous (one split: the output itself, else float32 partial sums)."""
    rows = first_row + tl.arange(0, BLOCK_M)
    feature_ok = features < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + features, mask=feature_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + (split.to(tl.int64) * M + rows)[:, None] * N + features[None, :]
    tl.store(out, acc, mask=(rows < M)[:, None] & feature_ok[None, :])


def _gather_ptx(value_bytes: int, load_type: str) -> tl.constexpr:
    """Inline PTX for one position: $0 = the raw bits of values[$3 + popcount($1 << $2)] ($4 = values as an
    address) if bit 31 of $1 << $2 is set (the position is present), else 0."""
    return tl.constexpr(
        "{ .reg .b32 s, c; .reg .pred p; .reg .b64 a; shl.b32 s, $1, $2; popc.b32 c, s; add.s32 c, c, $3; "
        f"mad.wide.s32 a, c, {value_bytes}, $4; setp.lt.s32 p, s, 0; mov.b32 $0, 0; "
        f"@p ld.global.nc.{load_type} $0, [a]; }}")


GATHER_PTX_16 = _gather_ptx(2, "u16")      # float16 / bfloat16 values, zero-extended into the int32
GATHER_PTX_32 = _gather_ptx(4, "b32")      # float32 values


@triton.jit
def _gather_tile(words, first_value, values_ptr, to_sign, PTX: tl.constexpr):
    """Start loading one format tile's weights, [TILE_N, WORDS, 32] (position 32 word + bit of its row),
    from its bit words [TILE_N, WORDS] and the index of its first value; _tile_weights finishes. A
    position's value index is first_value + the set bits before its row, before its word and at or below
    its bit, - 1. Only present positions load (an empty tile reads nothing; no index is below zero).

    PTX (compiled for NVIDIA): one inline-assembly block per position (shift, popcount, address, predicated
    read-only load), returning the value's raw bits in an int32 that nothing reads until the next tile. The
    compiler's own code spends more per position (it recomputes the bit test from the word and packs
    half-precision pairs right after the loads, which makes the warp wait for them in this iteration)."""
    counts = popcount(words)                                                                # [TILE_N, WORDS]
    row_counts = tl.sum(counts, axis=1)                                                     # [TILE_N]
    before_row = tl.cumsum(row_counts, axis=0) - row_counts                                 # [TILE_N]
    before_word = tl.cumsum(counts, axis=1) - counts                                        # [TILE_N, WORDS]
    word_base = first_value - 1 + before_row[:, None] + before_word                        # [TILE_N, WORDS]
    if PTX:
        if values_ptr.dtype.element_ty.primitive_bitwidth == 16:
            gather: tl.constexpr = GATHER_PTX_16
        else:
            gather: tl.constexpr = GATHER_PTX_32
        raw = tl.inline_asm_elementwise(
            gather, "=r,r,r,r,l", [words[:, :, None], to_sign, word_base[:, :, None], values_ptr.to(tl.int64)],
            dtype=tl.int32, is_pure=True, pack=1)                                           # [TILE_N, WORDS, 32]
    else:
        shifted = words[:, :, None] << to_sign              # bit b in the sign, the bits above it dropped
        index = word_base[:, :, None] + popcount(shifted)                                   # [TILE_N, WORDS, 32]
        raw = tl.load(values_ptr + index, mask=shifted < 0, other=0.0)
    return raw


@triton.jit
def _tile_weights(raw, dtype: tl.constexpr, out_dtype: tl.constexpr, PTX: tl.constexpr):
    """_gather_tile's result as weights [TILE_N, TILE_K] (col = 32 word + bit) of the values' dtype, in
    out_dtype: from PTX's raw bits, a half-precision value is converted on its way out of the register."""
    if PTX:
        if dtype == out_dtype and dtype.primitive_bitwidth == 16:
            w = raw.to(tl.int16).to(dtype, bitcast=True)
        elif dtype == out_dtype:
            w = raw.to(dtype, bitcast=True)
        elif dtype == tl.float16:
            w = tl.inline_asm_elementwise("{ .reg .b16 l, h; mov.b32 {l, h}, $1; cvt.f32.f16 $0, l; }",
                                          "=r,r", [raw], dtype=tl.float32, is_pure=True, pack=1).to(out_dtype)
        elif dtype == tl.bfloat16:
            w = (raw << 16).to(tl.float32, bitcast=True).to(out_dtype)  # bfloat16 is float32's top half
        else:
            w = raw.to(dtype, bitcast=True).to(out_dtype)
    else:
        w = raw.to(out_dtype)
    return tl.reshape(w, (w.shape[0], w.shape[1] * w.shape[2]))


@triton.jit
def _load_words(word_ptrs, tile, last_tile, WORDS: tl.constexpr):
    """The bit words [TILE_N, WORDS] of K tile `tile` of the row block; all zero from last_tile on."""
    in_range = tile + tl.zeros(word_ptrs.shape, tl.int32) < last_tile     # shaped, as the interpreter wants
    return tl.load(word_ptrs + tile * WORDS, mask=in_range, other=0)


@triton.jit
def bitmap_linear_kernel(
    x_ptr,              # [M, K] activations, unit stride along K
    bits_ptr,           # [Np, Kp / 32] int32: bit b of word w of row r set iff W[r, 32 w + b] is nonzero
    values_ptr,         # [nnz] the nonzeros tile by tile (row-major tile order), row-major inside a tile
    tile_offsets_ptr,   # [T + 1] int32: index into values of each tile's first nonzero, then nnz
    bias_ptr,           # [N] bias (read only when HAS_BIAS, which needs SPLIT_K == 1)
    out_ptr,            # SPLIT_K == 1: [M, N] output, contiguous; else [SPLIT_K, M, N] float32 partial sums
    M, N, K,            # problem size (K unpadded: the padded columns of W are zero, x is masked)
    x_row_stride,       # elements between rows of x
    words_per_row,      # Kp / 32
    tiles_k,            # Kp / TILE_K: format tiles along K
    HAS_BIAS: tl.constexpr,      # add the bias
    TILE_N: tl.constexpr,        # the format's tile rows: one tile row-block per program (grid axis 0)
    TILE_K: tl.constexpr,        # the format's tile columns, a multiple of 32
    BLOCK_M: tl.constexpr,       # rows of x per program (grid axis 2); >= 16 with TENSOR_CORES
    SPLIT_K: tl.constexpr,       # programs sharing one row block's K tiles (grid axis 1)
    TENSOR_CORES: tl.constexpr,  # tl.dot; else a multiply-sum on CUDA cores
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY, LET_NEXT_START=False)
    # Software pipelined by hand, because the values' addresses come from the bits: while tile j is
    # multiplied, tile j + 1's values are in flight (their addresses from bits loaded one step earlier)
    # and tile j + 2's bits are loading. Bits past the program's last tile load as zero, so the gathers
    # of those phantom tiles load nothing.
    WORDS: tl.constexpr = TILE_K // 32
    # compiled for NVIDIA (libdevice is then the CUDA module, the only one with byte_perm): inline PTX
    PTX: tl.constexpr = HARDWARE_POPCOUNT and hasattr(libdevice, "byte_perm")
    tile_row, split = tl.program_id(0), tl.program_id(1)
    first_row = tl.program_id(2) * BLOCK_M
    first_tile, last_tile = _split_tiles(tiles_k, split, SPLIT_K)
    features = tile_row * TILE_N + tl.arange(0, TILE_N)                                     # [TILE_N]
    word_ptrs = (bits_ptr + features.to(tl.int64)[:, None] * words_per_row
                 + tl.arange(0, WORDS)[None, :])                                            # [TILE_N, WORDS]
    offsets = tile_offsets_ptr + tile_row * tiles_k
    # shifting word << (31 - b) puts bit b in the sign and drops the bits above it
    to_sign = (31 - tl.arange(0, 32))[None, None, :]                                        # [1, 1, 32]
    k_in_tile = tl.arange(0, TILE_K)
    if TENSOR_CORES:
        acc = tl.zeros((BLOCK_M, TILE_N), dtype=tl.float32)
    else:
        # products summed over K only after the loop: the gather puts a word's 32 bits on 32 lanes (so a
        # warp's load is one contiguous run of values), and a sum along K every tile would be shuffles
        acc = tl.zeros((BLOCK_M, TILE_N, TILE_K), dtype=tl.float32)
    clamp = tiles_k - 1                                     # (offsets of a phantom tile: any valid entry)
    words = _load_words(word_ptrs, first_tile, last_tile, WORDS)
    raw = _gather_tile(words, tl.load(offsets + tl.minimum(first_tile, clamp)), values_ptr, to_sign, PTX)
    words = _load_words(word_ptrs, first_tile + 1, last_tile, WORDS)
    first_value = tl.load(offsets + tl.minimum(first_tile + 1, clamp))
    x = _load_x(x_ptr, first_row, M, x_row_stride, first_tile * TILE_K + k_in_tile, K, BLOCK_M)
    for j in range(first_tile, last_tile):
        # tile j's values (in flight since the last step) leave their registers before tile j + 1's
        # loads take the same ones: a value still live across the loop would be copied, waiting for it
        if TENSOR_CORES:
            w = _tile_weights(raw, values_ptr.dtype.element_ty, x_ptr.dtype.element_ty, PTX)  # [TILE_N, TILE_K]
        else:
            w = _tile_weights(raw, values_ptr.dtype.element_ty, tl.float32, PTX)
        x_now = x                                                                           # [BLOCK_M, TILE_K]
        raw = _gather_tile(words, first_value, values_ptr, to_sign, PTX)                    # tile j + 1
        words = _load_words(word_ptrs, j + 2, last_tile, WORDS)                              # tile j + 2
        first_value = tl.load(offsets + tl.minimum(j + 2, clamp))
        x = _load_x(x_ptr, first_row, M, x_row_stride, (j + 1) * TILE_K + k_in_tile, K, BLOCK_M)
        if TENSOR_CORES:
            acc = _dot_tile(acc, x_now, w)                                                  # [BLOCK_M, TILE_N]
        else:
            acc += _products(x_now, w)                                                      # [BLOCK_M, TILE_N, TILE_K]
    let_next_start(GRID_DEPENDENCY)
    if not TENSOR_CORES:
        acc = tl.sum(acc, axis=2)
    _store_rows(acc, out_ptr, bias_ptr, first_row, features, M, N, split, HAS_BIAS, BLOCK_M)


@triton.jit
def _load_entries(entries_ptr, e, end):
    """entries[e] where e < end, else 0 ([ENTRY_CHUNK])."""
    return tl.load(entries_ptr + e, mask=e < end, other=0)


@triton.jit
def tiled_csl_linear_kernel(
    x_ptr,              # [M, K] activations, unit stride along K
    entries_ptr,        # [E] int32: (location << 16) | value bits, location = row*64 + (col ^ ((row % 8) << 3))
    tile_offsets_ptr,   # [T + 2] int32: 0, the running entry count / 4 after each tile, the total again
    bias_ptr,           # [N] bias (read only when HAS_BIAS, which needs SPLIT_K == 1)
    out_ptr,            # SPLIT_K == 1: [M, N] output; else [SPLIT_K, M, N] float32 partial sums
    scratch_ptr,        # [programs, 128 * 64] in the weight dtype (float16/bfloat16): each program's tile
    M, N, K,            # problem size (K unpadded)
    x_row_stride,       # elements between rows of x
    tiles_k,            # Kp / 64: format tiles along K
    HAS_BIAS: tl.constexpr,      # add the bias
    BLOCK_M: tl.constexpr,       # rows of x per program (grid axis 2); >= 16 with TENSOR_CORES
    SPLIT_K: tl.constexpr,       # programs sharing one row block's K tiles (grid axis 1)
    ENTRY_CHUNK: tl.constexpr,   # entries scattered per step
    TENSOR_CORES: tl.constexpr,  # tl.dot; else a multiply-sum on CUDA cores
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY, LET_NEXT_START=False)
    TILE_N: tl.constexpr = 128
    TILE_K: tl.constexpr = 64
    tile_row, split, m_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    first_row = m_block * BLOCK_M
    first_tile, last_tile = _split_tiles(tiles_k, split, SPLIT_K)
    program = (m_block * SPLIT_K + split) * tl.num_programs(0) + tile_row
    tile = scratch_ptr + program.to(tl.int64) * (TILE_N * TILE_K)
    dense = tl.arange(0, TILE_N)[:, None] * TILE_K + tl.arange(0, TILE_K)[None, :]         # [128, 64]
    zeros = tl.zeros((TILE_N, TILE_K), dtype=scratch_ptr.dtype.element_ty)
    k_in_tile = tl.arange(0, TILE_K)
    chunk = tl.arange(0, ENTRY_CHUNK)
    offsets = tile_offsets_ptr + tile_row * tiles_k
    acc = tl.zeros((BLOCK_M, TILE_N), dtype=tl.float32)
    # software pipelined by hand: each chunk of entries is loaded one step before it is scattered (the
    # next tile's first chunk while this tile is multiplied), so a load's latency overlaps other work
    prefetched = tl.minimum(first_tile, tiles_k - 1)           # (a split without tiles loads and ignores)
    start, end = tl.load(offsets + prefetched) * 4, tl.load(offsets + prefetched + 1) * 4
    e = start + chunk                                                                       # [ENTRY_CHUNK]
    entry = _load_entries(entries_ptr, e, end)
    for j in range(first_tile, last_tile):
        tl.store(tile + dense, zeros)
        tl.debug_barrier()                                      # zeros land before any entry
        for _ in range(start, end, ENTRY_CHUNK):
            next_entry = _load_entries(entries_ptr, e + ENTRY_CHUNK, end)
            location = entry >> 16                              # < 8192: entries are never negative
            row = location >> 6
            column = (location & 63) ^ ((row & 7) << 3)         # undo the bank swizzle
            value = entry.to(tl.int16).to(scratch_ptr.dtype.element_ty, bitcast=True)     # the low 16 bits
            tl.store(tile + row * TILE_K + column, value, mask=e < end)
            e, entry = e + ENTRY_CHUNK, next_entry
        tl.debug_barrier()                                      # the whole tile is written
        following = tl.minimum(j + 1, last_tile - 1)            # (the last tile loads itself again)
        start, end = tl.load(offsets + following) * 4, tl.load(offsets + following + 1) * 4
        e = start + chunk
        entry = _load_entries(entries_ptr, e, end)
        w = tl.load(tile + dense)                                                           # [128, 64]
        k = j * TILE_K + k_in_tile
        if TENSOR_CORES:
            x = _load_x(x_ptr, first_row, M, x_row_stride, k, K, BLOCK_M)                  # [BLOCK_M, 64]
            acc = _dot_tile(acc, x, w)                                                      # [BLOCK_M, 128]
        else:
            acc = _multiply_row_by_row(acc, w, x_ptr, first_row, M, x_row_stride, k, K, BLOCK_M)
        tl.debug_barrier()                                      # every thread has read it before re-zeroing
    let_next_start(GRID_DEPENDENCY)
    features = tile_row * TILE_N + tl.arange(0, TILE_N)
    _store_rows(acc, out_ptr, bias_ptr, first_row, features, M, N, split, HAS_BIAS, BLOCK_M)


@triton.jit
def sum_splits_kernel(
    partial_ptr,        # [splits, M, N] float32 partial sums
    bias_ptr,           # [N] bias (read only when HAS_BIAS)
    out_ptr,            # [M, N] output, contiguous
    M, N,               # output size
    splits,             # partial sums per output
    HAS_BIAS: tl.constexpr,  # add the bias
    BLOCK_N: tl.constexpr,   # outputs per program (grid (M, cdiv(N, BLOCK_N)))
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY)
    row = tl.program_id(0)
    features = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    feature_ok = features < N
    row = row.to(tl.int64)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in range(0, splits):
        acc += tl.load(partial_ptr + (s * M + row) * N + features, mask=feature_ok, other=0.0)   # [BLOCK_N]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + features, mask=feature_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + features, acc, mask=feature_ok)


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(bitmap_linear_kernel, InterpretedFunction)


# read by popcount() when it is traced: a global constexpr, so launch specs need not carry it
HARDWARE_POPCOUNT = tl.constexpr(not _interpreted())


# --- wrappers ------------------------------------------------------------------------------------------

def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _prepare(kernel: str, x: torch.Tensor, shape, padded_shape, tile, bias: torch.Tensor | None,
             parts: dict[str, torch.Tensor]):
    """Shape checks shared by both formats; returns (rows [M, K], out [M, N], bias argument)."""
    require_float(kernel, x=x)
    (n, k), (np_, kp), (tile_n, tile_k) = tuple(shape), tuple(padded_shape), tuple(tile)
    require(np_ % tile_n == 0 and kp % tile_k == 0 and np_ >= n and kp >= k, kernel,
            f"padded shape {tuple(padded_shape)} is not a multiple of tile {tuple(tile)} covering {tuple(shape)}")
    require(x.shape[-1] == k, kernel, f"x [..., {x.shape[-1]}] does not fit the weight's shape {tuple(shape)} ([N, K])")
    require(bias is None or tuple(bias.shape) == (n,), kernel, f"bias must be [{n}]")
    for name, part in parts.items():
        require(part.device == x.device, kernel, f"{name} is on {part.device}, x on {x.device}")
        require(part.is_contiguous(), kernel, f"{name} must be contiguous")
    rows = as_rows(x, k)
    out = torch.empty((rows.shape[0], n), dtype=x.dtype, device=x.device)
    bias_arg = bias.contiguous() if bias is not None else next(iter(parts.values()))   # never read then
    return rows, out, bias_arg


def _pick_tensor_cores(m: int, tensor_cores: bool | None, dtypes_match: bool, tile_rows: int) -> bool:
    if tensor_cores is not None:
        return tensor_cores
    return m > CUDA_CORE_MAX_ROWS and dtypes_match and tile_rows >= 16


def _pick_block_m(kernel: str, m: int, block_m: int | None, tensor_cores: bool) -> int:
    if block_m is None:
        block_m = min(block_for(m, 16), 64) if tensor_cores else min(block_for(m), 8)
    require(_is_pow2(block_m), kernel, f"block_m must be a power of two, got {block_m}")
    require(not tensor_cores or block_m >= 16, kernel, f"tl.dot needs block_m >= 16, got {block_m}")
    return block_m


def _split_outputs(kernel: str, out: torch.Tensor, split_k: int) -> torch.Tensor:
    """Where the main kernel writes: out itself, or float32 partial sums [split_k, M, N]."""
    require(split_k >= 1, kernel, f"split_k must be >= 1, got {split_k}")
    return out if split_k == 1 else torch.empty((split_k, *out.shape), dtype=torch.float32, device=out.device)


def _sum_splits(partial: torch.Tensor, bias_arg: torch.Tensor, out: torch.Tensor, has_bias: bool) -> None:
    """out = the sum of the partial sums (+ bias), when the main kernel split K."""
    if partial is out:
        return
    (m, n), block_n = out.shape, min(block_for(out.shape[1]), 1024)
    sum_splits_kernel[(m, triton.cdiv(n, block_n))](partial, bias_arg, out, m, n, partial.shape[0],
                                                     HAS_BIAS=has_bias, BLOCK_N=block_n)


def bitmap_linear(x: torch.Tensor, bits: torch.Tensor, values: torch.Tensor, tile_offsets: torch.Tensor,
                  shape, padded_shape, tile, bias: torch.Tensor | None = None, *,
                  tensor_cores: bool | None = None, block_m: int | None = None, split_k: int | None = None,
                  num_warps: int | None = None, num_stages: int = 2) -> torch.Tensor:
    """x [..., K] @ W^T + bias -> [..., N] (x's dtype), W [N, K] given as a bitmap encoding
    (runtime/sparse_formats.py: bits [Np, Kp/32] int32, values [nnz], tile_offsets [T + 1] int32).

    Config: tensor_cores (default: above CUDA_CORE_MAX_ROWS rows, when x and values share a dtype and
    tiles have >= 16 rows), block_m (default min(next power of two of M, 8) on CUDA cores, 16..64 on
    tensor cores), split_k (programs per tile row-block, default default_split_k; > 1 adds a float32
    [split_k, M, N] workspace and a summing launch), num_warps (default default_num_warps), num_stages.
    Tile rows and columns must be powers of two.
    """
    kernel = "bitmap_linear"
    parts = {"bits": bits, "values": values, "tile_offsets": tile_offsets}
    rows, out, bias_arg = _prepare(kernel, x, shape, padded_shape, tile, bias, parts)
    (n, k), (np_, kp), (tile_n, tile_k) = tuple(shape), tuple(padded_shape), tuple(tile)
    require_float(kernel, values=values)
    require(_is_pow2(tile_n) and _is_pow2(tile_k) and tile_k >= 32, kernel,
            f"tile {tuple(tile)} must be powers of two with at least 32 columns")
    require(bits.dtype == torch.int32 and tuple(bits.shape) == (np_, kp // 32), kernel,
            f"bits must be int32 [{np_}, {kp // 32}], got {bits.dtype} {tuple(bits.shape)}")
    tiles = (np_ // tile_n) * (kp // tile_k)
    require(tile_offsets.dtype == torch.int32 and tuple(tile_offsets.shape) == (tiles + 1,), kernel,
            f"tile_offsets must be int32 [{tiles + 1}], got {tile_offsets.dtype} {tuple(tile_offsets.shape)}")
    require(values.dim() == 1, kernel, f"values must be 1-D, got shape {tuple(values.shape)}")
    m = rows.shape[0]
    tensor_cores = _pick_tensor_cores(m, tensor_cores, x.dtype == values.dtype, tile_n)
    require(not tensor_cores or (x.dtype == values.dtype and tile_n >= 16), kernel,
            f"tensor cores need x ({x.dtype}) and values ({values.dtype}) in one dtype and >= 16 tile rows")
    block_m = _pick_block_m(kernel, m, block_m, tensor_cores)
    num_warps = num_warps or default_num_warps((tile_n, tile_k), tensor_cores)
    split_k = split_k or default_split_k(np_ // tile_n, kp // tile_k, num_warps)
    partial = _split_outputs(kernel, out, split_k)
    if out.numel():
        grid = (np_ // tile_n, split_k, triton.cdiv(m, block_m))
        bitmap_linear_kernel[grid](rows, bits, values, tile_offsets, bias_arg, partial, m, n, k, rows.stride(0),
                                   kp // 32, kp // tile_k, HAS_BIAS=bias is not None and split_k == 1,
                                   TILE_N=tile_n, TILE_K=tile_k, BLOCK_M=block_m, SPLIT_K=split_k,
                                   TENSOR_CORES=tensor_cores, num_warps=num_warps, num_stages=num_stages)
        _sum_splits(partial, bias_arg, out, bias is not None)
    return out.view(*x.shape[:-1], n)


def tiled_csl_linear(x: torch.Tensor, entries: torch.Tensor, tile_offsets: torch.Tensor, shape, padded_shape,
                     bias: torch.Tensor | None = None, *, weight_dtype: torch.dtype | None = None,
                     tensor_cores: bool | None = None, block_m: int | None = None, split_k: int | None = None,
                     entry_chunk: int = 1024, num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """x [..., K] @ W^T + bias -> [..., N] (x's dtype), W [N, K] given as Tiled-CSL (runtime/sparse_formats.py:
    entries [E] int32, tile_offsets [T + 2] int32); the entries' 16 bits are weight_dtype (default x's
    dtype; float16 or bfloat16).

    Config: tensor_cores (default: above CUDA_CORE_MAX_ROWS rows when x is weight_dtype), block_m (as
    bitmap_linear), split_k (programs per 128-row block, default default_split_k; > 1 adds a float32
    [split_k, M, N] workspace and a summing launch), entry_chunk (entries scattered per step, a power of
    two), num_warps, num_stages.
    """
    kernel = "tiled_csl_linear"
    weight_dtype = weight_dtype or x.dtype
    require(weight_dtype in (torch.float16, torch.bfloat16), kernel,
            f"Tiled-CSL holds 16-bit weights (float16/bfloat16), got {weight_dtype}")
    parts = {"entries": entries, "tile_offsets": tile_offsets}
    rows, out, bias_arg = _prepare(kernel, x, shape, padded_shape, TILED_CSL_TILE, bias, parts)
    (n, k), (np_, kp) = tuple(shape), tuple(padded_shape)
    tiles_n, tiles_k = np_ // TILED_CSL_ROWS, kp // TILED_CSL_COLS
    require(entries.dtype == torch.int32 and entries.dim() == 1, kernel,
            f"entries must be 1-D int32, got {entries.dtype} {tuple(entries.shape)}")
    require(tile_offsets.dtype == torch.int32 and tuple(tile_offsets.shape) == (tiles_n * tiles_k + 2,), kernel,
            f"tile_offsets must be int32 [{tiles_n * tiles_k + 2}], got {tile_offsets.dtype} "
            f"{tuple(tile_offsets.shape)}")
    require(_is_pow2(entry_chunk), kernel, f"entry_chunk must be a power of two, got {entry_chunk}")
    m = rows.shape[0]
    tensor_cores = _pick_tensor_cores(m, tensor_cores, x.dtype == weight_dtype, TILED_CSL_ROWS)
    require(not tensor_cores or x.dtype == weight_dtype, kernel,
            f"tensor cores need x ({x.dtype}) in the weight dtype ({weight_dtype})")
    block_m = _pick_block_m(kernel, m, block_m, tensor_cores)
    split_k = split_k or default_split_k(tiles_n, tiles_k, num_warps)
    partial = _split_outputs(kernel, out, split_k)
    if out.numel():
        m_blocks = triton.cdiv(m, block_m)
        scratch = torch.empty((tiles_n * split_k * m_blocks, TILED_CSL_ROWS * TILED_CSL_COLS), dtype=weight_dtype,
                              device=x.device)
        tiled_csl_linear_kernel[(tiles_n, split_k, m_blocks)](
            rows, entries, tile_offsets, bias_arg, partial, scratch, m, n, k, rows.stride(0), tiles_k,
            HAS_BIAS=bias is not None and split_k == 1, BLOCK_M=block_m, SPLIT_K=split_k,
            ENTRY_CHUNK=entry_chunk, TENSOR_CORES=tensor_cores, num_warps=num_warps, num_stages=num_stages)
        _sum_splits(partial, bias_arg, out, bias is not None)
    return out.view(*x.shape[:-1], n)


def sparse_linear(x: torch.Tensor, weight: SparseWeight, bias: torch.Tensor | None = None, **config) -> torch.Tensor:
    """x [..., K] @ W^T + bias with W an encoded SparseWeight (its tensors on x's device); config as the
    format's wrapper takes it."""
    t = weight.tensors
    if weight.format == "bitmap":
        return bitmap_linear(x, t["bits"], t["values"], t["tile_offsets"], weight.shape, weight.padded_shape,
                             weight.tile, bias, **config)
    if weight.format == "tiled_csl":
        return tiled_csl_linear(x, t["entries"], t["tile_offsets"], weight.shape, weight.padded_shape, bias,
                                weight_dtype=getattr(torch, weight.dtype), **config)
    if weight.format == "chunked_csr":
        from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear   # it builds on this module
        return chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], weight.shape, bias, **config)
    raise ValueError(f"sparse_linear: unknown sparse format {weight.format!r}")
