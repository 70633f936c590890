"""Sparse linear layers over the chunked-CSR encoding (runtime/sparse_formats.py), x [M, K] @ W[N, K]^T
(+ bias), float32 accumulation, on CUDA cores for a few rows of x; for many rows (prefill) densify_kernel writes
the weight out dense for a tensor-core GEMM (codegen/launch_specs.py chunked_csr_gemm).

The bitmap and Tiled-CSL kernels rebuild every weight position of a tile on chip, which costs integer work
per position whatever the sparsity. This kernel works per nonzero instead: an entry's column is its chunk's
base plus its 8-bit offset, so a program multiplies each stored value by the activation at that column
(a gather from x, which stays in L1) and sums along the row: no tile is rebuilt and no position that holds
a zero costs anything. Each program owns BLOCK_N weight rows, ROWS rows of x and one of SPLIT_K slices of
the rows' chunks; with SPLIT_K > 1 it writes float32 partial sums that sum_splits_kernel adds. For more than
one row, x is read with each column's ROWS values side by side, so one vector load per entry gathers every
row (rather than a gather per entry and row). In bundles x's producer writes x so (OUT_ROWS here and in the
norms and decode attention; passes/interleave_sparse_inputs.py); otherwise interleave_rows lays it out first.
The loads of a step's entries are issued during the step before.

The entries are loaded evict-first, since each is read once. Measured on an H200
(docs/perf/2026-11-23-h200-evict-first.md, Llama-2-7B shapes, 70% sparsity): 1.61-1.75x cuBLAS on the
dense weight at M = 1, 1.27-1.47x at M = 2, 1.05-1.21x at M = 4 and 0.71-0.81x at M = 8, where the scattered
16-byte gathers keep L1 ~80% busy (ncu).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from fdpp.codegen.kernels._common import (as_rows, block_for, empty_output, interleaved_shape, let_next_start,
                                          require, require_float, wait_for_producers)
from fdpp.codegen.kernels.activation import ACTIVATION_CODES
from fdpp.codegen.kernels.linear import linear_epilogue
from fdpp.codegen.kernels.sparse_linear import HARDWARE_POPCOUNT, _sum_splits
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


def _column_words_ptx(words: int) -> tl.constexpr:
    """Inline PTX: $0..$(words-1) = the `words` 32-bit words at address $(words+2) + $words * $(words+1) (a chunk's
    first column plus an entry's offset times the bytes a column takes), in one read-only vector load, two for 8
    words. The address is one 32x32->64-bit multiply-add; the column stride is a constant operand, which ptxas
    folds into it."""
    loads = []
    for first in range(0, words, 4):
        regs = [f"${i}" for i in range(first, min(first + 4, words))]
        target = f".v{len(regs)}.b32 {{{', '.join(regs)}}}" if len(regs) > 1 else f".b32 {regs[0]}"
        loads.append(f"ld.global.nc{target}, [a+{4 * first}];")
    return tl.constexpr(f"{{ .reg .b64 a; mad.wide.u32 a, ${words}, ${words + 1}, ${words + 2}; {' '.join(loads)} }}")


COLUMN_WORDS1_PTX, COLUMN_WORDS2_PTX = _column_words_ptx(1), _column_words_ptx(2)
COLUMN_WORDS4_PTX, COLUMN_WORDS8_PTX = _column_words_ptx(4), _column_words_ptx(8)


@triton.jit
def _column_words(chunk_x, offset, column_bytes, WORDS: tl.constexpr):
    """The WORDS (1, 2, 4 or 8) 32-bit words of column `offset` past chunk_x (a pointer per entry to its chunk's
    first column; columns column_bytes apart, the address aligned to the load), as int32 tensors in the
    offset's layout; unused slots repeat word 0."""
    stride = tl.full(offset.shape, column_bytes, tl.int32)
    if WORDS == 1:
        w0 = tl.inline_asm_elementwise(COLUMN_WORDS1_PTX, "=r,r,r,l", [offset, stride, chunk_x], dtype=tl.int32,
                                       is_pure=True, pack=1)
        w1, w2, w3, w4, w5, w6, w7 = w0, w0, w0, w0, w0, w0, w0
    elif WORDS == 2:
        w0, w1 = tl.inline_asm_elementwise(COLUMN_WORDS2_PTX, "=r,=r,r,r,l", [offset, stride, chunk_x],
                                           dtype=(tl.int32,) * 2, is_pure=True, pack=1)
        w2, w3, w4, w5, w6, w7 = w0, w0, w0, w0, w0, w0
    elif WORDS == 4:
        w0, w1, w2, w3 = tl.inline_asm_elementwise(COLUMN_WORDS4_PTX, "=r,=r,=r,=r,r,r,l", [offset, stride, chunk_x],
                                                   dtype=(tl.int32,) * 4, is_pure=True, pack=1)
        w4, w5, w6, w7 = w0, w0, w0, w0
    else:
        w0, w1, w2, w3, w4, w5, w6, w7 = tl.inline_asm_elementwise(
            COLUMN_WORDS8_PTX, "=r,=r,=r,=r,=r,=r,=r,=r,r,r,l", [offset, stride, chunk_x], dtype=(tl.int32,) * 8,
            is_pure=True, pack=1)
    return w0, w1, w2, w3, w4, w5, w6, w7


@triton.jit
def _halves(word, BFLOAT: tl.constexpr):
    """The two 16-bit floats packed in an int32 word (low half first), as float32."""
    if BFLOAT:
        low = (word << 16).to(tl.float32, bitcast=True)
        high = (word & -65536).to(tl.float32, bitcast=True)
    else:
        low, high = tl.inline_asm_elementwise(
            "{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }", "=f,=f,r",
            [word], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    return low, high


@triton.jit
def _gather_rows(chunk_x, offset, ROWS: tl.constexpr):
    """chunk_x[offset * ROWS + r] for r < ROWS as float32 (x interleaved: one column's ROWS rows side by side;
    chunk_x points at the entry's chunk's first column), ROWS of 1, 2, 4 or 8; slots r >= ROWS repeat row 0.
    On NVIDIA one vector load (two for float32 x at 8 rows), so the cost of a gather barely grows with the
    rows. float32 x (its producer's result before rounding) takes twice the bytes and no conversions."""
    if ROWS == 1:
        x0 = _gather(chunk_x, offset).to(tl.float32)
        x1, x2, x3, x4, x5, x6, x7 = x0, x0, x0, x0, x0, x0, x0
    elif HARDWARE_POPCOUNT and hasattr(libdevice, "byte_perm"):     # NVIDIA (see _gather)
        if chunk_x.dtype.element_ty.primitive_bitwidth == 16:
            bf = chunk_x.dtype.element_ty == tl.bfloat16
            w0, w1, w2, w3, _, _, _, _ = _column_words(chunk_x, offset, ROWS * 2, ROWS // 2)
            x0, x1 = _halves(w0, bf)
            x2, x3, x4, x5, x6, x7 = x0, x0, x0, x0, x0, x0
            if ROWS >= 4:
                x2, x3 = _halves(w1, bf)
            if ROWS == 8:
                x4, x5 = _halves(w2, bf)
                x6, x7 = _halves(w3, bf)
        else:
            w0, w1, w2, w3, w4, w5, w6, w7 = _column_words(chunk_x, offset, ROWS * 4, ROWS)
            x0, x1, x2, x3 = (w0.to(tl.float32, bitcast=True), w1.to(tl.float32, bitcast=True),
                              w2.to(tl.float32, bitcast=True), w3.to(tl.float32, bitcast=True))
            x4, x5, x6, x7 = (w4.to(tl.float32, bitcast=True), w5.to(tl.float32, bitcast=True),
                              w6.to(tl.float32, bitcast=True), w7.to(tl.float32, bitcast=True))
    else:
        first = chunk_x + offset * ROWS
        x0 = tl.load(first).to(tl.float32)
        x1 = tl.load(first + 1).to(tl.float32)
        x2, x3, x4, x5, x6, x7 = x0, x0, x0, x0, x0, x0
        if ROWS >= 4:
            x2 = tl.load(first + 2).to(tl.float32)
            x3 = tl.load(first + 3).to(tl.float32)
        if ROWS == 8:
            x4 = tl.load(first + 4).to(tl.float32)
            x5 = tl.load(first + 5).to(tl.float32)
            x6 = tl.load(first + 6).to(tl.float32)
            x7 = tl.load(first + 7).to(tl.float32)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _load_step(c, last_chunk, feature_ok, row_entries, entry_in_step, row_bases, values_ptr, offsets_ptr,
               chunks_per_row, BLOCK_N: tl.constexpr, CHUNKS: tl.constexpr, CHUNK: tl.constexpr,
               VECTOR: tl.constexpr):
    """The values, offsets and chunk bases of the CHUNKS chunks from chunk c of each weight row, each
    [BLOCK_N, CHUNKS, CHUNK]; chunks at or past last_chunk (or of rows past N) read value 0 and offset 0."""
    chunk = tl.arange(0, CHUNKS)                                                            # [CHUNKS]
    chunk_ok = feature_ok[:, None] & (c + chunk < last_chunk)[None, :]                      # [BLOCK_N, CHUNKS]
    # each entry reads its chunk's base (a broadcast: one load per thread and chunk once compiled); a
    # chunk past the slice reads the row's last, a valid column for its zero-valued entries
    chunk_index = tl.minimum(c + chunk, chunks_per_row - 1)[None, :, None]                  # [1, CHUNKS, 1]
    base = _gather(row_bases, tl.broadcast_to(chunk_index, (BLOCK_N, CHUNKS, CHUNK)))
    entry = tl.max_contiguous(tl.multiple_of(row_entries + c * CHUNK + entry_in_step, (1, 1, VECTOR)),
                              (1, 1, VECTOR))
    entry_ok = chunk_ok[:, :, None]
    # entries are read once: evict them first, so x's lines stay in the caches for the gathers
    value = tl.load(values_ptr + entry, mask=entry_ok, other=0.0, eviction_policy="evict_first")
    offset = tl.load(offsets_ptr + entry, mask=entry_ok, other=0, eviction_policy="evict_first")
    return value, offset, base


@triton.jit
def _finish_row(acc, row, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split,
                HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GATED: tl.constexpr, ACTIVATION: tl.constexpr,
                SPLIT_K: tl.constexpr, BLOCK_F: tl.constexpr, OUT_ROWS: tl.constexpr):
    """One row of x's sums, acc [BLOCK_N, CHUNKS, CHUNK] over the program's weight rows (gate rows then up
    rows when GATED), into out: SPLIT_K == 1 through linear_epilogue (bias, act(gate) * up, residual), else
    float32 partial sums into out[split, row, features] (no epilogue: sum_splits_kernel adds the bias).
    OUT_ROWS > 1 (SPLIT_K 1): out interleaved as the next chunked-CSR linear reads x (_common.out_offsets)."""
    total = tl.sum(tl.sum(acc, axis=2), axis=1)                                                 # [BLOCK_N]
    features = row_block * BLOCK_F + tl.arange(0, BLOCK_F)                                      # [BLOCK_F]
    rows = row + tl.arange(0, 1)                                                                # [1]
    if SPLIT_K == 1:
        if GATED:
            gate, up = tl.split(tl.permute(tl.reshape(total, (2, BLOCK_F)), (1, 0)))           # [BLOCK_F] each
        else:
            gate, up = total, total
        linear_epilogue(gate[None, :], up[None, :], rows, features, bias_ptr, residual_ptr, out_ptr, M, N,
                        HAS_BIAS, HAS_RESIDUAL, GATED, ACTIVATION, OUT_ROWS)
    else:
        out = out_ptr + (split.to(tl.int64) * M + rows)[:, None] * N + features[None, :]
        tl.store(out, total[None, :], mask=(rows < M)[:, None] & (features < N)[None, :])


@triton.jit
def chunked_csr_linear_kernel(
    x_ptr,              # ROWS == 1: [M, K], unit stride along K; else [cdiv(M, ROWS), K, ROWS] (interleave_rows,
                        # or written so by x's producer: passes/interleave_sparse_inputs.py)
    values_ptr,         # [N, L] the nonzeros of each row chunk by chunk (L = chunks_per_row * CHUNK), 0 = padding
    offsets_ptr,        # [N, L] uint8: an entry's column minus its chunk's base
    bases_ptr,          # [N, chunks_per_row] int32: each chunk's first column
    bias_ptr,           # [N] bias ([2N] when GATED; read only when HAS_BIAS, which needs SPLIT_K == 1)
    residual_ptr,       # [M, N] added last (read only when HAS_RESIDUAL, which needs SPLIT_K == 1)
    out_ptr,            # SPLIT_K == 1: [M, N] output, contiguous (interleaved: OUT_ROWS); else [SPLIT_K, M, N]
                        # float32 partial sums
    M, N,               # rows of x, output features (the weight has 2N rows when GATED)
    x_block_stride,     # elements between blocks of ROWS rows of x (ROWS == 1: x's row stride; else K * ROWS)
    chunks_per_row,     # chunks of every weight row
    HAS_BIAS: tl.constexpr,      # add the bias
    HAS_RESIDUAL: tl.constexpr,  # add residual to the result
    GATED: tl.constexpr,         # out = act(x @ gate^T) * (x @ up^T), the weight (gate; up) stacked
    ACTIVATION: tl.constexpr,    # activation code (activation.ACTIVATION_CODES) when GATED
    ROWS: tl.constexpr,          # rows of x per program (1, 2, 4 or 8; grid axis 2), gathered together
    BLOCK_N: tl.constexpr,       # weight rows per program: BLOCK_F, or 2 * BLOCK_F when GATED
    BLOCK_F: tl.constexpr,       # output features per program (grid axis 0)
    CHUNKS: tl.constexpr,        # chunks of each row per step
    CHUNK: tl.constexpr,         # entries per chunk (the format's)
    SPLIT_K: tl.constexpr,       # programs sharing one row block's chunks (grid axis 1)
    VECTOR: tl.constexpr,        # entries one thread loads at once (values and offsets alike)
    PREFETCH: tl.constexpr,      # load each step's entries during the step before
    OUT_ROWS: tl.constexpr = 1,  # > 1 (SPLIT_K 1): out interleaved by blocks of OUT_ROWS rows (_common.out_offsets)
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY, LET_NEXT_START=False)
    row_block, split, row_group = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # the program's weight rows: BLOCK_F features, and when GATED the same features' up rows N further on
    slot = tl.arange(0, BLOCK_N)                                                             # [BLOCK_N]
    feature = row_block * BLOCK_F + slot % BLOCK_F
    feature_ok = feature < N
    features = tl.where(feature_ok, feature + (slot // BLOCK_F) * N, 0)                      # weight rows
    steps = tl.cdiv(tl.cdiv(chunks_per_row, CHUNKS), SPLIT_K)
    first_chunk = split * steps * CHUNKS
    last_chunk = tl.minimum(first_chunk + steps * CHUNKS, chunks_per_row)
    chunk = tl.arange(0, CHUNKS)                                                            # [CHUNKS]
    entry_in_step = (chunk[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :])[None, :, :]   # [1, CHUNKS, CHUNK]
    row_entries = features.to(tl.int64)[:, None, None] * (chunks_per_row * CHUNK)            # [BLOCK_N, 1, 1]
    row_bases = bases_ptr + (features.to(tl.int64) * chunks_per_row)[:, None, None]
    # x's block as a tensor in the entries' layout (the gathers take per-element addresses)
    x_block = x_ptr + (row_group.to(tl.int64) * x_block_stride + features.to(tl.int64) * 0)[:, None, None]
    # sums per row of x, built from the entry indices so they live in the layout the loads give the entries
    # (a plain tl.zeros gets a default layout, and every step would move its products into it)
    acc0 = (row_entries + entry_in_step).to(tl.float32) * 0.0                              # [BLOCK_N, CHUNKS, CHUNK]
    acc1, acc2, acc3, acc4, acc5, acc6, acc7 = acc0, acc0, acc0, acc0, acc0, acc0, acc0
    # software-pipelined: a step's values, offsets and bases load while the step before gathers x
    value, offset, base = _load_step(first_chunk, last_chunk, feature_ok, row_entries, entry_in_step, row_bases,
                                     values_ptr, offsets_ptr, chunks_per_row, BLOCK_N, CHUNKS, CHUNK, VECTOR)
    for c in range(first_chunk, last_chunk, CHUNKS):
        if PREFETCH:
            next_value, next_offset, next_base = _load_step(
                c + CHUNKS, last_chunk, feature_ok, row_entries, entry_in_step, row_bases, values_ptr, offsets_ptr,
                chunks_per_row, BLOCK_N, CHUNKS, CHUNK, VECTOR)
        # one pointer per chunk (shared by its entries' registers), the entry's offset added in the gather
        chunk_x = x_block + base * ROWS                                                     # [BLOCK_N, CHUNKS, CHUNK]
        weight = value.to(tl.float32)
        x0, x1, x2, x3, x4, x5, x6, x7 = _gather_rows(chunk_x, offset.to(tl.int32), ROWS)
        acc0 += x0 * weight
        if ROWS >= 2:
            acc1 += x1 * weight
        if ROWS >= 4:
            acc2 += x2 * weight
            acc3 += x3 * weight
        if ROWS == 8:
            acc4 += x4 * weight
            acc5 += x5 * weight
            acc6 += x6 * weight
            acc7 += x7 * weight
        if PREFETCH:
            value, offset, base = next_value, next_offset, next_base
        else:
            value, offset, base = _load_step(
                c + CHUNKS, last_chunk, feature_ok, row_entries, entry_in_step, row_bases, values_ptr, offsets_ptr,
                chunks_per_row, BLOCK_N, CHUNKS, CHUNK, VECTOR)
    let_next_start(GRID_DEPENDENCY)
    first_row = row_group * ROWS
    _finish_row(acc0, first_row, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split, HAS_BIAS, HAS_RESIDUAL,
                GATED, ACTIVATION, SPLIT_K, BLOCK_F, OUT_ROWS)
    if ROWS >= 2:
        _finish_row(acc1, first_row + 1, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split, HAS_BIAS,
                    HAS_RESIDUAL, GATED, ACTIVATION, SPLIT_K, BLOCK_F, OUT_ROWS)
    if ROWS >= 4:
        _finish_row(acc2, first_row + 2, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split, HAS_BIAS,
                    HAS_RESIDUAL, GATED, ACTIVATION, SPLIT_K, BLOCK_F, OUT_ROWS)
        _finish_row(acc3, first_row + 3, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split, HAS_BIAS,
                    HAS_RESIDUAL, GATED, ACTIVATION, SPLIT_K, BLOCK_F, OUT_ROWS)
    if ROWS == 8:
        _finish_row(acc4, first_row + 4, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split, HAS_BIAS,
                    HAS_RESIDUAL, GATED, ACTIVATION, SPLIT_K, BLOCK_F, OUT_ROWS)
        _finish_row(acc5, first_row + 5, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split, HAS_BIAS,
                    HAS_RESIDUAL, GATED, ACTIVATION, SPLIT_K, BLOCK_F, OUT_ROWS)
        _finish_row(acc6, first_row + 6, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split, HAS_BIAS,
                    HAS_RESIDUAL, GATED, ACTIVATION, SPLIT_K, BLOCK_F, OUT_ROWS)
        _finish_row(acc7, first_row + 7, row_block, bias_ptr, residual_ptr, out_ptr, M, N, split, HAS_BIAS,
                    HAS_RESIDUAL, GATED, ACTIVATION, SPLIT_K, BLOCK_F, OUT_ROWS)


@triton.jit
def interleave_rows_kernel(
    x_ptr,              # [M, K] activations, unit stride along K
    out_ptr,            # [cdiv(M, ROWS), K, ROWS]: out[b, k, r] = x[b * ROWS + r, k], 0 past M
    M, K,               # rows and columns of x
    x_row_stride,       # elements between rows of x
    ROWS: tl.constexpr,          # rows side by side
    BLOCK_K: tl.constexpr,       # columns per program (grid axis 1)
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    """x's rows in blocks of ROWS with each column's ROWS values side by side, so that chunked_csr_linear
    gathers every row of a column in one load. Grid (cdiv(M, ROWS), cdiv(K, BLOCK_K))."""
    wait_for_producers(GRID_DEPENDENCY)
    block, column_block = tl.program_id(0), tl.program_id(1)
    rows = block * ROWS + tl.arange(0, ROWS)                                                 # [ROWS]
    columns = column_block * BLOCK_K + tl.arange(0, BLOCK_K)                                 # [BLOCK_K]
    ok = (rows < M)[:, None] & (columns < K)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * x_row_stride + columns[None, :], mask=ok, other=0.0)
    out = out_ptr + block.to(tl.int64) * K * ROWS + columns[:, None] * ROWS + tl.arange(0, ROWS)[None, :]
    tl.store(out, tl.trans(x), mask=(columns < K)[:, None])


@triton.jit
def densify_kernel(
    values_ptr,         # [N, L] the nonzeros of each row chunk by chunk (L = chunks_per_row * CHUNK), 0 = padding
    offsets_ptr,        # [N, L] uint8: an entry's column minus its chunk's base
    bases_ptr,          # [N, chunks_per_row] int32: each chunk's first column
    out_ptr,            # [N, K] the dense weight, contiguous
    K,                  # columns of the weight
    chunks_per_row,     # chunks of every weight row
    CHUNK: tl.constexpr,         # entries per chunk (the format's)
    CHUNKS: tl.constexpr,        # chunks scattered per step
    BLOCK_K: tl.constexpr,       # columns zeroed per step
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    """The chunked-CSR weight written out dense, one program per weight row (grid (N,)): the row is zeroed, then
    (after a barrier, so no zero lands after a value) each entry's value stored at its column. Padding entries
    (value 0, offset 0) store nothing, so they cannot overwrite the nonzero at their chunk's base. For many rows
    of x (prefill), where a tensor-core GEMM over the dense copy beats gathering x per entry."""
    wait_for_producers(GRID_DEPENDENCY)
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK_K)
    zeros = tl.zeros((BLOCK_K,), dtype=out_ptr.dtype.element_ty)
    for start in range(0, K, BLOCK_K):
        tl.store(out_ptr + row * K + start + columns, zeros, mask=start + columns < K)
    tl.debug_barrier()
    chunk = tl.arange(0, CHUNKS)[:, None]                                                 # [CHUNKS, 1]
    entry = tl.arange(0, CHUNK)[None, :]                                                  # [1, CHUNK]
    for first in range(0, chunks_per_row, CHUNKS):
        chunk_ok = first + chunk < chunks_per_row                                         # [CHUNKS, 1]
        entries = row * chunks_per_row * CHUNK + (first + chunk) * CHUNK + entry           # [CHUNKS, CHUNK]
        value = tl.load(values_ptr + entries, mask=chunk_ok, other=0.0)
        offset = tl.load(offsets_ptr + entries, mask=chunk_ok, other=0).to(tl.int32)
        base = tl.load(bases_ptr + row * chunks_per_row + first + chunk, mask=chunk_ok, other=0)
        tl.store(out_ptr + row * K + base + offset, value.to(out_ptr.dtype.element_ty),
                 mask=chunk_ok & (value != 0))


DENSIFY_BLOCK_K, DENSIFY_CHUNKS = 1024, 8


def densify(values: torch.Tensor, offsets: torch.Tensor, bases: torch.Tensor, shape) -> torch.Tensor:
    """The dense [N, K] weight (values' dtype) of a chunked-CSR encoding, through densify_kernel."""
    n, k = tuple(shape)
    out = torch.empty((n, k), dtype=values.dtype, device=values.device)
    chunks_per_row = bases.shape[1]
    if out.numel():
        densify_kernel[(n,)](values, offsets, bases, out, k, chunks_per_row,
                             CHUNK=values.shape[1] // max(1, chunks_per_row), CHUNKS=DENSIFY_CHUNKS,
                             BLOCK_K=DENSIFY_BLOCK_K)
    return out


INTERLEAVE_BLOCK_K = 512


def default_chunked_csr_config(n: int, chunks_per_row: int, m: int) -> dict:
    """rows (gathered together), block_n, chunks (per step), split_k, vector, num_warps, prefetch for a weight
    of n rows and m rows of x: the best of H200 sweeps (scripts/bench_chunked_csr.py, Llama-2-7B's shapes
    at 70%; docs/perf/2026-11-22-h200-chunked-csr-interleaved.md). Weights of <= 8192 rows take 2 rows per
    program at M = 1, so the grid fills the GPU, and the stacked gate/up weight (> 16384 rows) 8, which
    was 3% faster there (docs/perf/2026-11-23-h200-evict-first.md). Pipelining gains 0-8% up to 4 rows and
    nothing at 8, where the L1 gathers bound the kernel."""
    rows = min(block_for(m), 8)
    if rows == 8:
        block_n, chunks = 8, 4
    elif rows == 1:
        block_n, chunks = (2 if n <= 8192 else 8 if n > 16384 else 4), 8
    else:
        block_n, chunks = 4, 8
    return {"rows": rows, "block_n": block_n, "chunks": chunks, "split_k": 1, "vector": 8, "num_warps": 4,
            "prefetch": rows < 8}


def interleave_rows(x_rows: torch.Tensor, together: int) -> torch.Tensor:
    """x_rows [M, K] as [cdiv(M, together), K, together] with each column's rows side by side (zero rows
    past M); x_rows itself when together is 1."""
    if together == 1:
        return x_rows
    m, k = x_rows.shape
    out = torch.empty((triton.cdiv(m, together), k, together), dtype=x_rows.dtype, device=x_rows.device)
    interleave_rows_kernel[(out.shape[0], triton.cdiv(k, INTERLEAVE_BLOCK_K))](
        x_rows, out, m, k, x_rows.stride(0), ROWS=together, BLOCK_K=INTERLEAVE_BLOCK_K)
    return out


def chunked_csr_linear(x: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, bases: torch.Tensor,
                       shape, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                       gated: str | None = None, x_interleaved: torch.Tensor | None = None,
                       out_rows_together: int = 1, **config) -> torch.Tensor:
    """x [..., K] @ W^T + bias (+ residual) -> [..., N] (x's dtype), W [N, K] given as chunked CSR (values
    [N, L], offsets [N, L] uint8, bases [N, L / chunk] int32); with `gated` (an activation name) W is
    (gate; up) [2N, K] and the result act(x @ gate^T + b_gate) * (x @ up^T + b_up) (+ residual), as
    reference_ops.fused_linear. Config keys as default_chunked_csr_config returns; block_n counts weight rows
    (so a gated program writes block_n / 2 features); the epilogues need split_k 1.
    x_interleaved: x's rows already laid out as interleave_rows(x, rows) does (as x's producer writes them in a
    bundle); the kernel reads it and skips the interleave launch, and x only gives the shape.
    out_rows_together T > 1 (split_k 1): the result is interleaved, [cdiv(M, T), N, T] (_common.out_offsets), as
    the next chunked-CSR linear reads its x."""
    kernel = "chunked_csr_linear"
    require_float(kernel, x=x, values=values)
    rows_w, k = tuple(shape)
    require(x.shape[-1] == k, kernel, f"x [..., {x.shape[-1]}] does not fit the weight's shape {tuple(shape)} ([N, K])")
    require(bases.dim() == 2 and bases.shape[0] == rows_w and bases.dtype == torch.int32, kernel,
            f"bases must be int32 [{rows_w}, chunks], got {bases.dtype} {tuple(bases.shape)}")
    chunks_per_row = bases.shape[1]
    require(values.dim() == 2 and values.shape[0] == rows_w and values.shape[1] % max(1, chunks_per_row) == 0,
            kernel, f"values must be [{rows_w}, chunks * chunk], got {tuple(values.shape)}")
    chunk = values.shape[1] // max(1, chunks_per_row)
    require(offsets.shape == values.shape and offsets.dtype == torch.uint8, kernel,
            f"offsets must be uint8 {tuple(values.shape)}, got {offsets.dtype} {tuple(offsets.shape)}")
    require(gated is None or (gated in ACTIVATION_CODES and rows_w % 2 == 0), kernel,
            f"gated needs an activation of {sorted(ACTIVATION_CODES)} and an even number of weight rows, "
            f"got {gated!r} over {rows_w}")
    require(bias is None or tuple(bias.shape) == (rows_w,), kernel, f"bias must be [{rows_w}]")
    for name, part in {"values": values, "offsets": offsets, "bases": bases}.items():
        require(part.device == x.device, kernel, f"{name} is on {part.device}, x on {x.device}")
        require(part.is_contiguous(), kernel, f"{name} must be contiguous")
    n = rows_w // 2 if gated else rows_w
    x_rows = as_rows(x, k)
    m = x_rows.shape[0]
    require(residual is None or tuple(residual.shape) == (*x.shape[:-1], n), kernel,
            f"residual must be {(*x.shape[:-1], n)}, got {None if residual is None else tuple(residual.shape)}")
    cfg = {**default_chunked_csr_config(rows_w, chunks_per_row, m), **config}
    split_k, together, block_n = cfg["split_k"], cfg["rows"], cfg["block_n"]
    require(together in (1, 2, 4, 8), kernel, f"rows must be 1, 2, 4 or 8, got {together}")
    require(split_k == 1 or (gated is None and residual is None), kernel,
            f"the gated and residual epilogues need split_k 1, got {split_k}")
    require(not gated or block_n % 2 == 0, kernel, f"a gated program needs an even block_n, got {block_n}")
    require(out_rows_together in (1, 2, 4, 8) and (out_rows_together == 1 or split_k == 1), kernel,
            f"out_rows_together must be 1, 2, 4 or 8, and 1 with split_k > 1; got {out_rows_together}")
    require(x_interleaved is None or (together > 1 and x_interleaved.is_contiguous()
                                      and tuple(x_interleaved.shape) == interleaved_shape(m, k, together)
                                      and x_interleaved.dtype == x.dtype), kernel,
            f"x_interleaved must be a contiguous {x.dtype} {interleaved_shape(m, k, together)} (rows {together} > 1), "
            f"got {None if x_interleaved is None else (x_interleaved.dtype, tuple(x_interleaved.shape))}")
    out = empty_output(kernel, m, n, out_rows_together, x)
    partial = out if split_k == 1 else torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    bias_arg = bias.contiguous() if bias is not None else values
    residual_arg = residual.reshape(m, n).contiguous() if residual is not None else out
    if out.numel():
        x_arg = x_interleaved if x_interleaved is not None else interleave_rows(x_rows, together)
        x_block_stride = x_rows.stride(0) if together == 1 else k * together
        block_f = block_n // 2 if gated else block_n
        grid = (triton.cdiv(n, block_f), split_k, triton.cdiv(m, together))
        chunked_csr_linear_kernel[grid](
            x_arg, values, offsets, bases, bias_arg, residual_arg, partial, m, n, x_block_stride, chunks_per_row,
            HAS_BIAS=bias is not None and split_k == 1, HAS_RESIDUAL=residual is not None, GATED=bool(gated),
            ACTIVATION=ACTIVATION_CODES[gated] if gated else 0, ROWS=together, BLOCK_N=block_n, BLOCK_F=block_f,
            CHUNKS=cfg["chunks"], CHUNK=chunk, SPLIT_K=split_k, VECTOR=cfg["vector"], PREFETCH=cfg["prefetch"],
            OUT_ROWS=out_rows_together, num_warps=cfg["num_warps"])
        _sum_splits(partial, bias_arg, out, bias is not None)
    return out if out_rows_together > 1 else out.view(*x.shape[:-1], n)
