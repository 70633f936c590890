"""Experiment (architecture note 32): chunked-CSR linears that scatter their nonzeros into a shared-memory tile with
Gluon and multiply the tile on tensor cores, Flash-LLM's design. Not used by bundles.

Gluon's shared-memory scatter is in Triton 3.9 here, not in the GPU machine's 3.6, so the kernels are built here
and carried there as code objects, as bundles' kernels are:

    python3 scripts/exp_gluon_ccsr.py build out/gluon_ccsr           # on the CPU machine: cubins for sm_90
    python3 scripts/exp_gluon_ccsr.py check out/gluon_ccsr           # on an H100/H200: float64 check, timings

Three kernels: `gluon_kernel` (the first design: per window, load a chunk a row, wait, scatter, then multiply),
`pipelined_kernel` (a window's chunks and x copied to shared memory asynchronously one window ahead) and
`tiled_csl_kernel` (the same pipeline over Tiled-CSL, whose entries name their swizzled slot in the shared tile).
VARIANTS lists what `build` compiles (earlier runs' sets are at the commits its comment names). `check` launches the
cubins through runtime/cuda_launcher.py (no Triton kernel is compiled there), checks each against float64 on 70%
Llama-2-7B-shaped weights, and times it against cuBLAS on the dense weight, as scripts/bench_sparse.py times
(rotating copies, medians). Results: docs/perf/2026-12-07-gluon-ccsr.md (all exact; chunked CSR at best
0.46-0.57x cuBLAS for M = 4-16; Tiled-CSL at best 0.82-1.02x alone at M = 4-8, 0.76-0.86x with split-K's glue).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

SHAPES = {"o": (4096, 4096), "down": (4096, 11008), "qkv": (12288, 4096), "gate_up": (22016, 4096)}  # hardest first
ROWS_OF_X = (8, 16, 64)      # x rows a program: the first kernel's
PIPELINED_ROWS_OF_X = (16, 64)  # the pipelined kernel's (x is its MMA's M side, 16 at least)
BK = 64                 # columns per MMA step
SHARED_LIMIT = 227 << 10  # an H100's or H200's shared memory a block
# Variants: weight rows a program (16 a warp), shared tile columns (a window of WINDOW columns of K, the rest
# takes masked entries), shared-layout swizzle (1: none; 8: 16-byte vectors, 8 phases, so ldmatrix's 8 rows hit
# different banks), x staged in shared memory by an async copy per window (XSMEM), chunks of each row scattered
# per step (STEP_CHUNKS), the next step's entries loaded before the current ones are scattered (PREFETCH), and
# split-K (SPLIT programs share a row block's windows and add float32 results with atomics into an output the host
# zeroes first and converts after; those two calls are in the timing, and a `k` figure times the kernel alone).
_BASE = dict(SPLIT=1, SWIZZLE=8, XSMEM=0, STEP_CHUNKS=1, PREFETCH=0)
_T512 = {**_BASE, "TILE": 512, "WINDOW": 448}
# The pipelined kernel's: weight rows a program (8 a warp), shared tile columns and window as above, S chunks of
# each row staged a window, SC chunks scattered a step, VEC entries a thread.
_PIPE = dict(PIPELINED=1, TILE=512, WINDOW=448, S=8, SC=2, VEC=1)
# Run 1 measured the first design's variants (commit f48b9a3), run 2 the pipelined ones and run 3 the Tiled-CSL
# ones as of commit 09b6035, run 4 Tiled-CSL variants with more copies in flight (more programs: SPLIT; a deeper
# pipeline: STAGES tiles' copies, a power of two; commit d27c0f5; the best chunked-CSR one, p_n16_v8, beside them).
# This set is for a run 5, built and not yet run (the session's device time ran out): run 4's best three again,
# two tiles (TWO_TILES: one zeroed while the other is filled and multiplied, two barriers a tile instead of three;
# 69 KB, three programs a multiprocessor) and 8 warps.
_TCSL = dict(TILED_CSL=1, WARPS=4, CAP=4096, STAGES=2, TWO_TILES=0)     # 52 KB of shared memory at M <= 16
VARIANTS = {
    # Tiled-CSL (tiled_csl_kernel): a 128-row tile row a program, split-K SPLIT
    "t_s4": {**_TCSL, "SPLIT": 4},
    "t_s8": {**_TCSL, "SPLIT": 8},
    "t_s16": {**_TCSL, "SPLIT": 16},
    "t_s4_2t": {**_TCSL, "SPLIT": 4, "TWO_TILES": 1},
    "t_s8_2t": {**_TCSL, "SPLIT": 8, "TWO_TILES": 1},
    "t_s16_2t": {**_TCSL, "SPLIT": 16, "TWO_TILES": 1},
    "t_s8_w8": {**_TCSL, "SPLIT": 8, "WARPS": 8},
    "t_s16_w8": {**_TCSL, "SPLIT": 16, "WARPS": 8},
}


def _store_out():
    """The kernels' shared epilogue: a [rows of x, weight rows] accumulator (either orientation, as out_at and
    out_ok give it) stored as fp16, or added with float32 atomics where SPLIT programs share the output."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    @gluon.jit
    def store_out(out_at, out_ok, acc, SPLIT: gl.constexpr):
        if SPLIT == 1:
            gl.store(out_at, acc.to(gl.float16), mask=out_ok)
        else:
            gl.atomic_add(out_at, acc, mask=out_ok, sem="relaxed")

    return store_out


def _load_step():
    """The chunked-CSR kernels' direct read of a step's entries from global memory (the first design's every step,
    the pipelined kernel's chunks past what it staged)."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    @gluon.jit
    def load_step(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, first, last, j, entry, chunks_per_row,
                  CHUNK: gl.constexpr):
        """Entries of chunks first+j.. of each row (as many as entry spans): values (0 where the row
        has no such chunk) and absolute columns."""
        c = gl.expand_dims(first + j, 1) + gl.expand_dims(entry // CHUNK, 0)                    # [BLOCK_N, E]
        ok = gl.expand_dims(row_ok, 1) & (c < gl.expand_dims(last, 1))
        at = gl.expand_dims(rows, 1) * (chunks_per_row * CHUNK) + c * CHUNK + gl.expand_dims(entry % CHUNK, 0)
        value = gl.load(values_ptr + at, mask=ok, other=0.0)
        offset = gl.load(offsets_ptr + at, mask=ok, other=0).to(gl.int32)
        chunk_base = gl.load(bases_ptr + gl.expand_dims(rows, 1) * chunks_per_row + c, mask=ok, other=0)
        return value, chunk_base + offset

    return load_step


def gluon_kernel():
    """The kernel, defined only where Gluon has a shared-memory scatter (imported lazily: `check` needs no Triton)."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2
    store_out = _store_out()
    load_step = _load_step()

    @gluon.jit
    def chunked_csr_tile_mma_kernel(
        x_ptr,              # [M, K] fp16, rows K apart
        values_ptr,         # [N, L] fp16 chunked-CSR values (L = chunks_per_row * CHUNK), 0 = padding
        offsets_ptr,        # [N, L] uint8 column minus chunk base
        bases_ptr,          # [N, chunks_per_row] int32 chunk bases, ascending within a row, padding chunks 0
        out_ptr,            # [M, N] fp16
        M, N, chunks_per_row,
        K: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CHUNKS_P2: gl.constexpr, CHUNK: gl.constexpr,
        TILE: gl.constexpr, WINDOW: gl.constexpr, STEP_CHUNKS: gl.constexpr, BK: gl.constexpr,
        WARPS: gl.constexpr, SPLIT: gl.constexpr, SWIZZLE: gl.constexpr, XSMEM: gl.constexpr,
        PREFETCH: gl.constexpr,
    ):
        row_layout: gl.constexpr = gl.BlockedLayout([1, 1], [1, 32], [WARPS, 1], [1, 0])
        tile_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
        x_layout: gl.constexpr = gl.BlockedLayout([8, 1], [8, 4], [1, WARPS], [0, 1])
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, 8])
        first_row = gl.program_id(0) * BLOCK_N
        rows = first_row + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, row_layout))         # [BLOCK_N]
        row_ok = rows < N
        # every chunk base of the program's rows; a padding chunk (index > 0, base 0) counts as far past K
        chunk = gl.arange(0, CHUNKS_P2, layout=gl.SliceLayout(0, row_layout))                  # [CHUNKS_P2]
        chunk_ok = gl.expand_dims(row_ok, 1) & gl.expand_dims(chunk < chunks_per_row, 0)
        base = gl.load(bases_ptr + gl.expand_dims(rows, 1) * chunks_per_row + gl.expand_dims(chunk, 0),
                       mask=chunk_ok, other=0)
        real = chunk_ok & ((gl.expand_dims(chunk, 0) == 0) | (base > 0))
        base = gl.where(real, base, 1 << 30)
        tile_shared: gl.constexpr = gl.SwizzledSharedLayout(SWIZZLE, 1, SWIZZLE, [1, 0])
        tile = gl.allocate_shared_memory(gl.float16, [BLOCK_N, TILE], tile_shared)
        if XSMEM:   # x's window, k-major ([TILE, BLOCK_M], k fastest): copied asynchronously while the scatter runs
            x_window = gl.allocate_shared_memory(gl.float16, [TILE, BLOCK_M], gl.SwizzledSharedLayout(8, 1, 8, [0, 1]))
            kx = gl.arange(0, TILE, layout=gl.SliceLayout(1, x_layout))                         # [TILE]
        acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
        m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, x_layout))                           # [BLOCK_M]
        kk = gl.arange(0, BK, layout=gl.SliceLayout(1, x_layout))                               # [BK]
        entry = gl.arange(0, STEP_CHUNKS * CHUNK, layout=gl.SliceLayout(0, row_layout))         # [STEP * CHUNK]
        windows = gl.cdiv(K, WINDOW)
        per_split = gl.cdiv(windows, SPLIT)
        w_begin = gl.program_id(1) * per_split * WINDOW
        w_end = gl.minimum(w_begin + per_split * WINDOW, K)
        for w in range(w_begin, w_end, WINDOW):
            # each row's chunks that can reach this window: from the first not ending before it
            first = gl.sum((base + 256 <= w).to(gl.int32), axis=1)                              # [BLOCK_N]
            last = gl.sum((base < w + WINDOW).to(gl.int32), axis=1)
            steps = gl.max(last - first, axis=0)
            if XSMEM:
                kcol = w + kx
                async_copy.async_load(
                    x_window, x_ptr + gl.expand_dims(m, 0) * K + gl.expand_dims(kcol, 1),
                    mask=gl.expand_dims(m < M, 0) & gl.expand_dims((kcol < K) & (kx < WINDOW), 1))
                async_copy.commit_group()
            tile.store(gl.zeros([BLOCK_N, TILE], gl.float16, tile_layout))
            gl.barrier()
            if PREFETCH:    # registers hold the next step's entries while the current ones are scattered
                value, column = load_step(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, first, last, 0, entry,
                                          chunks_per_row, CHUNK)
            for j in range(0, steps, STEP_CHUNKS):
                if PREFETCH:
                    next_value, next_column = load_step(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, first, last,
                                                        j + STEP_CHUNKS, entry, chunks_per_row, CHUNK)
                else:
                    value, column = load_step(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, first, last, j, entry,
                                              chunks_per_row, CHUNK)
                column = column - w
                keep = (value != 0) & (column >= 0) & (column < WINDOW)
                # entries outside the window land in the tile's spare columns, which nothing reads
                spare = WINDOW + gl.expand_dims(entry % (TILE - WINDOW), 0)
                tile.scatter(gl.where(keep, value, 0.0), gl.where(keep, column, spare), 1)
                if PREFETCH:
                    value = next_value
                    column = next_column
            if XSMEM:
                async_copy.wait_group(0)
            gl.barrier()
            for k0 in gl.static_range(0, WINDOW, BK):
                a = tile.slice(k0, BK, 1).load(gl.DotOperandLayout(0, mma, 2))                 # [BLOCK_N, BK]
                if XSMEM:
                    b = x_window.slice(k0, BK, 0).load(gl.DotOperandLayout(1, mma, 2))         # [BK, BLOCK_M]
                else:
                    kcol = w + k0 + kk
                    xt = gl.load(x_ptr + gl.expand_dims(m, 0) * K + gl.expand_dims(kcol, 1),
                                 mask=gl.expand_dims(m < M, 0) & gl.expand_dims(kcol < K, 1), other=0.0)
                    b = gl.convert_layout(xt, gl.DotOperandLayout(1, mma, 2))                  # [BK, BLOCK_M]
                acc = mma_v2(a, b, acc)
            gl.barrier()
        out_rows = first_row + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
        out_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
        out_at = out_ptr + gl.expand_dims(out_m, 0) * N + gl.expand_dims(out_rows, 1)
        out_ok = gl.expand_dims(out_m < M, 0) & gl.expand_dims(out_rows < N, 1)
        store_out(out_at, out_ok, acc, SPLIT)

    return chunked_csr_tile_mma_kernel


def pipelined_kernel():
    """Second design: x and each window's chunks are staged in shared memory by asynchronous copies one window
    ahead, so the copies of window w + 1 run while window w is scattered and multiplied; out^T = x W^T puts the
    weight rows on the MMA's N side (8 a warp), so a program of 16-32 rows still spreads over several warps."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2
    load_step = _load_step()

    @gluon.jit
    def stage_window(x_ptr, values_ptr, offsets_ptr, bases_ptr, x_s, values_s, offsets_s, bases_s, buf, w,
                     first_row, base, next_base, M, N, chunks_per_row,
                     K: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CHUNK: gl.constexpr,
                     TILE: gl.constexpr, WINDOW: gl.constexpr, S: gl.constexpr, WARPS: gl.constexpr):
        """Queue the copies of window w (columns [w, w + WINDOW)) into buffer buf: x's window [BLOCK_M, TILE] and,
        per row, up to S chunks from the first that reaches the window, with their bases."""
        vec_layout: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [WARPS, 1], [1, 0])
        base_layout: gl.constexpr = gl.BlockedLayout([1, 1], [32 // S, S], [WARPS, 1], [1, 0])
        first = gl.sum((next_base <= w).to(gl.int32), axis=1)                                  # [BLOCK_N]
        mx = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, vec_layout))
        kx = gl.arange(0, TILE, layout=gl.SliceLayout(0, vec_layout))
        kcol = w + kx
        async_copy.async_load(x_s.index(buf), x_ptr + gl.expand_dims(mx, 1) * K + gl.expand_dims(kcol, 0),
                              mask=gl.expand_dims(mx < M, 1) & gl.expand_dims((kcol < K) & (kx < WINDOW), 0))
        rows = first_row + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, vec_layout))
        entry = gl.arange(0, S * CHUNK, layout=gl.SliceLayout(0, vec_layout))
        first_v = gl.convert_layout(first, gl.SliceLayout(1, vec_layout))
        c = gl.expand_dims(first_v, 1) + gl.expand_dims(entry // CHUNK, 0)                      # [BLOCK_N, S * CHUNK]
        ok = gl.expand_dims(rows < N, 1) & (c < chunks_per_row)
        at = gl.expand_dims(rows, 1) * (chunks_per_row * CHUNK) + c * CHUNK + gl.expand_dims(entry % CHUNK, 0)
        async_copy.async_load(values_s.index(buf), values_ptr + at, mask=ok)
        async_copy.async_load(offsets_s.index(buf), offsets_ptr + at, mask=ok)
        brows = first_row + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, base_layout))
        bc = gl.expand_dims(gl.convert_layout(first, gl.SliceLayout(1, base_layout)), 1) + \
            gl.expand_dims(gl.arange(0, S, layout=gl.SliceLayout(0, base_layout)), 0)
        async_copy.async_load(bases_s.index(buf), bases_ptr + gl.expand_dims(brows, 1) * chunks_per_row + bc,
                              mask=gl.expand_dims(brows < N, 1) & (bc < chunks_per_row))
        async_copy.commit_group()

    @gluon.jit
    def chunked_csr_pipelined_kernel(
        x_ptr, values_ptr, offsets_ptr, bases_ptr, out_ptr,   # as chunked_csr_tile_mma_kernel's
        M, N, chunks_per_row,
        K: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CHUNKS_P2: gl.constexpr,
        CHUNK: gl.constexpr, TILE: gl.constexpr, WINDOW: gl.constexpr, S: gl.constexpr, SC: gl.constexpr,
        BK: gl.constexpr, WARPS: gl.constexpr, VEC: gl.constexpr, LANES_E: gl.constexpr,
    ):
        # a step's entries [BLOCK_N, SC * CHUNK]: VEC consecutive ones a thread, LANES_E threads along a row
        row_layout: gl.constexpr = gl.BlockedLayout([1, VEC], [32 // LANES_E, LANES_E], [WARPS, 1], [1, 0])
        tile_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, WARPS], instr_shape=[16, 8])
        swizzled: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
        plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])       # buffers: a leading index
        first_row = gl.program_id(0) * BLOCK_N
        rows = first_row + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, row_layout))         # [BLOCK_N]
        row_ok = rows < N
        chunk = gl.arange(0, CHUNKS_P2, layout=gl.SliceLayout(0, row_layout))                  # [CHUNKS_P2]
        at = gl.expand_dims(rows, 1) * chunks_per_row + gl.expand_dims(chunk, 0)
        chunk_ok = gl.expand_dims(row_ok, 1) & gl.expand_dims(chunk < chunks_per_row, 0)
        base = gl.load(bases_ptr + at, mask=chunk_ok, other=0)
        base = gl.where(chunk_ok & ((gl.expand_dims(chunk, 0) == 0) | (base > 0)), base, 1 << 30)  # padding: far
        next_ok = gl.expand_dims(row_ok, 1) & gl.expand_dims(chunk + 1 < chunks_per_row, 0)
        next_base = gl.load(bases_ptr + at + 1, mask=next_ok, other=0)
        next_base = gl.where(next_base > 0, next_base, 1 << 30)     # a chunk's columns end before the next's base
        x_s = gl.allocate_shared_memory(gl.float16, [2, BLOCK_M, TILE], swizzled)
        x_s.index(0).store(gl.zeros([BLOCK_M, TILE], gl.float16, tile_layout))   # masked copies leave stale data
        x_s.index(1).store(gl.zeros([BLOCK_M, TILE], gl.float16, tile_layout))
        values_s = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, S * CHUNK], plain)
        offsets_s = gl.allocate_shared_memory(gl.uint8, [2, BLOCK_N, S * CHUNK], plain)
        bases_s = gl.allocate_shared_memory(gl.int32, [2, BLOCK_N, S], plain)
        tile = gl.allocate_shared_memory(gl.float16, [BLOCK_N, TILE], swizzled)
        gl.barrier()
        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
        entry = gl.arange(0, SC * CHUNK, layout=gl.SliceLayout(0, row_layout))                 # [SC * CHUNK]
        spare = WINDOW + gl.expand_dims(entry % (TILE - WINDOW), 0)
        stage_window(x_ptr, values_ptr, offsets_ptr, bases_ptr, x_s, values_s, offsets_s, bases_s, 0, 0,
                     first_row, base, next_base, M, N, chunks_per_row,
                     K, BLOCK_M, BLOCK_N, CHUNK, TILE, WINDOW, S, WARPS)
        for wi in range(0, (K + WINDOW - 1) // WINDOW):
            w = wi * WINDOW
            buf = wi % 2
            if w + WINDOW < K:
                stage_window(x_ptr, values_ptr, offsets_ptr, bases_ptr, x_s, values_s, offsets_s, bases_s, 1 - buf,
                             w + WINDOW, first_row, base, next_base, M, N, chunks_per_row,
                             K, BLOCK_M, BLOCK_N, CHUNK, TILE, WINDOW, S, WARPS)
                async_copy.wait_group(1)
            else:
                async_copy.wait_group(0)
            first = gl.sum((next_base <= w).to(gl.int32), axis=1)                              # [BLOCK_N]
            count = gl.sum((base < w + WINDOW).to(gl.int32), axis=1) - first                   # chunks reaching w
            steps = gl.max(count, axis=0)
            tile.store(gl.zeros([BLOCK_N, TILE], gl.float16, tile_layout))
            gl.barrier()
            for jj in gl.static_range(0, S, SC):
                if jj < steps:
                    c = jj + entry // CHUNK                                                    # [SC * CHUNK]
                    ok = gl.expand_dims(c, 0) < gl.expand_dims(count, 1)                       # [BLOCK_N, E]
                    value = values_s.index(buf).slice(jj * CHUNK, SC * CHUNK, 1).load(row_layout)
                    offset = offsets_s.index(buf).slice(jj * CHUNK, SC * CHUNK, 1).load(row_layout).to(gl.int32)
                    chunk_base = bases_s.index(buf).gather(gl.zeros([BLOCK_N, SC * CHUNK], gl.int32, row_layout)
                                                           + gl.expand_dims(c, 0), 1)
                    column = chunk_base + offset - w
                    keep = ok & (value != 0) & (column >= 0) & (column < WINDOW)
                    tile.scatter(gl.where(keep, value, 0.0), gl.where(keep, column, spare), 1)
            for j in range(S, steps, SC):     # a window reached by more than S chunks: the rest from global memory
                value, column = load_step(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, first, first + count, j,
                                          entry, chunks_per_row, CHUNK)
                column = column - w
                keep = (value != 0) & (column >= 0) & (column < WINDOW)    # value is 0 where a chunk is missing
                tile.scatter(gl.where(keep, value, 0.0), gl.where(keep, column, spare), 1)
            gl.barrier()
            for k0 in gl.static_range(0, WINDOW, BK):
                a = x_s.index(buf).slice(k0, BK, 1).load(gl.DotOperandLayout(0, mma, 2))       # [BLOCK_M, BK]
                b = tile.slice(k0, BK, 1).permute([1, 0]).load(gl.DotOperandLayout(1, mma, 2))  # [BK, BLOCK_N]
                acc = mma_v2(a, b, acc)
            gl.barrier()
        out_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma))
        out_rows = first_row + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
        gl.store(out_ptr + gl.expand_dims(out_m, 1) * N + gl.expand_dims(out_rows, 0), acc.to(gl.float16),
                 mask=gl.expand_dims(out_m < M, 1) & gl.expand_dims(out_rows < N, 0))

    return chunked_csr_pipelined_kernel


def tiled_csl_kernel():
    """Third design (architecture note 32's next step): the pipeline over Tiled-CSL. A program owns a 128-row tile
    row (and, split-K, a share of its tiles along K); each tile's entries are one contiguous range, copied to shared
    memory asynchronously a tile ahead, and an entry's high half is its slot in the swizzled 128 x 64 tile, the flat
    index that SwizzledSharedLayout(8, 1, 8) stores (row, column) at, so the scatter needs no arithmetic."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2
    store_out = _store_out()

    @gluon.jit
    def scatter_entries(slots, entry, j, count, last):
        """Entries j into the tile's 8,192 flat slots. Those past the tile's count (stale or zero-filled) write the
        tile's last entry again: the same bits to the same slot, so the race is harmless and no spare slots are
        needed (a count is a multiple of 4 and a thread holds 4 entries, so a thread's are all real or none)."""
        entry = gl.where(j < count, entry, last)
        slots.scatter((entry & 0xFFFF).to(gl.int16).to(gl.float16, bitcast=True), (entry >> 16) & 0xFFFF, 0)

    @gluon.jit
    def tile_entries(tile_offsets_ptr, tile, ok):
        """(first entry, entries) of tile `tile` (0, 0 where not ok)."""
        begin = gl.load(tile_offsets_ptr + tile, mask=ok, other=0) * 4
        return begin, gl.load(tile_offsets_ptr + tile + 1, mask=ok, other=0) * 4 - begin

    @gluon.jit
    def stage_tile(x_ptr, entries_ptr, x_s, entries_s, buf, begin, count, kt, ok, M,
                   K: gl.constexpr, BLOCK_M: gl.constexpr, CAP: gl.constexpr, WARPS: gl.constexpr):
        """Queue the copies of a tile (column tile kt of its row; `count` entries from `begin`): its entries (up
        to CAP, in pieces of one 16-byte copy a thread) and x's 64 columns, as one commit group. Where not ok the
        group is empty, so every iteration commits one group and waits for a fixed count."""
        SUB: gl.constexpr = 4 * 32 * WARPS
        flat: gl.constexpr = gl.BlockedLayout([4], [32], [WARPS], [0])
        x_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
        i = gl.arange(0, SUB, layout=flat)
        for piece in gl.static_range(0, CAP, SUB):
            async_copy.async_load(entries_s.index(buf).slice(piece, SUB), entries_ptr + begin + piece + i,
                                  mask=ok & (piece + i < count))
        mx = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, x_layout))
        kcol = kt * 64 + gl.arange(0, 64, layout=gl.SliceLayout(0, x_layout))
        async_copy.async_load(x_s.index(buf), x_ptr + gl.expand_dims(mx, 1) * K + gl.expand_dims(kcol, 0),
                              mask=ok & gl.expand_dims(mx < M, 1) & gl.expand_dims(kcol < K, 0))
        async_copy.commit_group()

    @gluon.jit
    def tiled_csl_pipelined_kernel(
        x_ptr,              # [M, K] fp16
        entries_ptr,        # [E] int32 Tiled-CSL entries: slot << 16 | fp16 bits
        tile_offsets_ptr,   # [T + 2] int32 entries / 4 before each tile, tiles row-major
        out_ptr,            # [M, N] fp16 (SPLIT 1) or fp32 zeroed (SPLIT > 1, atomics)
        M, N,
        K: gl.constexpr, BLOCK_M: gl.constexpr, CAP: gl.constexpr, SPLIT: gl.constexpr, WARPS: gl.constexpr,
        STAGES: gl.constexpr, TWO_TILES: gl.constexpr,
    ):
        SUB: gl.constexpr = 4 * 32 * WARPS               # entries a scatter step: 4 a thread (one 16-byte read)
        KT: gl.constexpr = (K + 63) // 64                 # tiles along K
        gl.static_assert(CAP % SUB == 0)
        flat: gl.constexpr = gl.BlockedLayout([4], [32], [WARPS], [0])
        tile_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, WARPS], instr_shape=[16, 8])
        swizzled: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
        plain1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
        row_tile = gl.program_id(0)
        per_split = (KT + SPLIT - 1) // SPLIT
        kt_begin = gl.program_id(1) * per_split
        kt_end = gl.minimum(kt_begin + per_split, KT)
        first = row_tile * KT                             # the program's tile row's first tile
        entries_s = gl.allocate_shared_memory(gl.int32, [STAGES, CAP], plain1)
        x_s = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_M, 64], swizzled)
        for s in gl.static_range(STAGES):     # x's masked-off rows must read as zeros
            x_s.index(s).store(gl.zeros([BLOCK_M, 64], gl.float16, tile_layout))
        # the 128 x 64 tile (two with TWO_TILES: one filled and multiplied while the other is zeroed), viewed
        # by Tiled-CSL slot (reinterpret) for the scatter
        tiles = gl.allocate_shared_memory(gl.float16, [2 if TWO_TILES else 1, 128, 64], swizzled)
        if TWO_TILES:
            tiles.index(0).store(gl.zeros([128, 64], gl.float16, tile_layout))
        acc = gl.zeros([BLOCK_M, 128], gl.float32, mma)
        gl.barrier()
        for early in gl.static_range(STAGES - 1):        # the first STAGES - 1 tiles' copies
            ok = kt_begin + early < kt_end
            begin, count = tile_entries(tile_offsets_ptr, first + kt_begin + early, ok)
            stage_tile(x_ptr, entries_ptr, x_s, entries_s, early, begin, count, kt_begin + early, ok, M,
                       K, BLOCK_M, CAP, WARPS)
        for kt in range(kt_begin, kt_end):
            buf = (kt - kt_begin) % STAGES
            tile_buf = (kt - kt_begin) % 2          # TWO_TILES: the tile this iteration fills
            # this tile's offsets and last entry (L2 hits: read when its copy was queued) load while it waits
            begin, count = tile_entries(tile_offsets_ptr, first + kt, True)
            last = gl.load(entries_ptr + begin + count - 1, mask=count > 0, other=0)
            ahead = kt + STAGES - 1
            ahead_begin, ahead_count = tile_entries(tile_offsets_ptr, first + ahead, ahead < kt_end)
            if TWO_TILES:
                # the refilled buffers were read in the last iteration, so the copy is queued after the barrier
                async_copy.wait_group(STAGES - 2)
                gl.barrier()
            stage_tile(x_ptr, entries_ptr, x_s, entries_s, (kt - kt_begin + STAGES - 1) % STAGES, ahead_begin,
                       ahead_count, ahead, ahead < kt_end, M, K, BLOCK_M, CAP, WARPS)
            if TWO_TILES:
                target = tiles.index(tile_buf)
            else:
                async_copy.wait_group(STAGES - 1)
                target = tiles.index(0)
                target.store(gl.zeros([128, 64], gl.float16, tile_layout))
                gl.barrier()
            target_slots = target.reinterpret(gl.float16, [8192], plain1)
            for piece in gl.static_range(0, CAP, SUB):      # only the pieces holding entries
                if piece < count:
                    j = piece + gl.arange(0, SUB, layout=flat)
                    scatter_entries(target_slots, entries_s.index(buf).slice(piece, SUB).load(flat), j, count, last)
            for more in range(CAP, count, SUB):   # a tile denser than CAP entries: the rest from global memory
                j = more + gl.arange(0, SUB, layout=flat)
                entry = gl.load(entries_ptr + begin + j, mask=j < count, other=0)
                scatter_entries(target_slots, entry, j, count, last)
            gl.barrier()
            for k0 in gl.static_range(0, 64, 16):
                a = x_s.index(buf).slice(k0, 16, 1).load(gl.DotOperandLayout(0, mma, 2))      # [BLOCK_M, 16]
                b = target.slice(k0, 16, 1).permute([1, 0]).load(gl.DotOperandLayout(1, mma, 2))  # [16, 128]
                acc = mma_v2(a, b, acc)
            if TWO_TILES:    # zero the other tile for the next iteration (its last reader passed this one's barrier)
                tiles.index(1 - tile_buf).store(gl.zeros([128, 64], gl.float16, tile_layout))
            else:
                gl.barrier()
        out_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma))
        out_rows = row_tile * 128 + gl.arange(0, 128, layout=gl.SliceLayout(0, mma))
        out_at = out_ptr + gl.expand_dims(out_m, 1) * N + gl.expand_dims(out_rows, 0)
        out_ok = gl.expand_dims(out_m < M, 1) & gl.expand_dims(out_rows < N, 0)
        store_out(out_at, out_ok, acc, SPLIT)

    return tiled_csl_pipelined_kernel


def signature(split: int, tiled_csl: bool = False) -> dict[str, str]:
    out = "*fp16" if split == 1 else "*fp32"
    if tiled_csl:
        return {"x_ptr": "*fp16", "entries_ptr": "*i32", "tile_offsets_ptr": "*i32", "out_ptr": out,
                "M": "i32", "N": "i32"}
    return {"x_ptr": "*fp16", "values_ptr": "*fp16", "offsets_ptr": "*u8", "bases_ptr": "*i32", "out_ptr": out,
            "M": "i32", "N": "i32", "chunks_per_row": "i32"}


def kernel_name(variant: str, block_m: int, chunks_p2: int, k: int) -> str:
    return f"ccsr_tile_mma_{variant}_m{block_m}_c{chunks_p2}_k{k}"


def rows_of_x(config: dict) -> tuple[int, ...]:
    return PIPELINED_ROWS_OF_X if config.get("PIPELINED") or config.get("TILED_CSL") else ROWS_OF_X


def chunks_for(k: int) -> int:
    """Chunks per row of the 70% weights `check` builds (pow2 bound), as encode_chunked_csr gives them."""
    from fdpp.runtime.sparse_formats import chunked_csr_chunks
    return 1 << (chunked_csr_chunks(k, 0.3) + 8 - 1).bit_length()      # margin over the expected count


def build(directory: Path) -> None:
    from fdpp.codegen.build import compile_kernel
    from fdpp.codegen.kernels._probe_gluon import GLUON_SHARED_SCATTER
    from fdpp.compiler.targets import get_target
    from fdpp.runtime.kernel_binary import save_kernel
    if not GLUON_SHARED_SCATTER:
        import triton
        raise SystemExit(f"exp_gluon_ccsr: triton {triton.__version__}'s Gluon has no shared-memory scatter; "
                         f"build on a machine with a newer triton (3.9 has it)")
    windowed, pipelined, tiled = gluon_kernel(), pipelined_kernel(), tiled_csl_kernel()
    for variant, config in VARIANTS.items():
        rows = rows_of_x(config)
        config = dict(config)
        fn = tiled if config.pop("TILED_CSL", 0) else pipelined if config.pop("PIPELINED", 0) else windowed
        warps = config.pop("WARPS", None) or config["BLOCK_N"] // (8 if fn is pipelined else 16)
        for k in sorted({k for _, k in SHAPES.values()}):
            for block_m in rows:
                if fn is tiled:
                    constexprs = {"K": k, "BLOCK_M": block_m, "WARPS": warps, **config}
                else:
                    constexprs = {"K": k, "BLOCK_M": block_m, "CHUNKS_P2": chunks_for(k), "CHUNK": 32,
                                  "BK": BK, "WARPS": warps, **config}
                if fn is pipelined:
                    constexprs["LANES_E"] = min(32, config["SC"] * 32 // config["VEC"])
                built = compile_kernel(fn, get_target("h100"), signature(config.get("SPLIT", 1), fn is tiled),
                                       constexprs, name=kernel_name(variant, block_m, chunks_for(k), k),
                                       num_warps=warps)
                if built.shared_memory_bytes > SHARED_LIMIT:
                    print(f"{built.name}: skipped, needs {built.shared_memory_bytes} bytes of shared memory")
                    continue
                save_kernel(built, directory)
                print(f"{built.name}: shared {built.shared_memory_bytes} bytes")
    (directory / "constexprs.json").write_text(json.dumps({"VARIANTS": VARIANTS, "ROWS_OF_X": ROWS_OF_X}))


def tiled_csl_sets(weight: torch.Tensor, bench) -> list[dict[str, torch.Tensor]]:
    """Rotating copies of weight's Tiled-CSL tensors on the GPU (encoded on the CPU, as bench_sparse does)."""
    from fdpp.runtime.sparse_formats import encode_tiled_csl
    encoded = encode_tiled_csl(weight.cpu())
    return bench.copies({part: t.cuda() for part, t in encoded.tensors.items()}, encoded.nbytes)


def check(directory: Path) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_sparse as BENCH
    import torch.nn.functional as F
    from fdpp.runtime.cuda_launcher import CudaKernel
    from fdpp.runtime.kernel_binary import load_kernel
    variants = json.loads((directory / "constexprs.json").read_text())["VARIANTS"]
    print("| shape | M | cuBLAS us | " + " | ".join(f"{v} us (x cuBLAS)" for v in variants) + " |")
    print("| --- | --- | --- |" + " --- |" * len(variants))
    failed = 0
    for name, (n, k) in SHAPES.items():
        weight, dense_sets, csr, csr_sets = BENCH.dense_and_chunked_csr(n, k, 0.7)
        tcsl_sets = tiled_csl_sets(weight, BENCH)
        chunks = csr.tensors["bases"].shape[1]
        if chunks > chunks_for(k):
            print(f"| {name} | weight has {chunks} chunks a row, kernels built for {chunks_for(k)} |")
            continue
        for m in (4, 8, 16, 64):
            x = (torch.randn(m, k, device="cuda") * 0.5).half()
            ref = x.double() @ weight.double().T
            cublas = BENCH.time_us([lambda s=s, x=x: F.linear(x, s["w"]) for s in dense_sets])
            cells = []
            for variant, config in variants.items():
                block_m = next(b for b in rows_of_x(config) if b >= m)
                kernel_path = directory / f"{kernel_name(variant, block_m, chunks_for(k), k)}.json"
                if not kernel_path.is_file():
                    cells.append("not built")
                    continue
                kernel = CudaKernel(load_kernel(directory, kernel_path.stem))
                tiled = bool(config.get("TILED_CSL"))
                rows_a_program = 128 if tiled else config["BLOCK_N"]
                grid = ((n + rows_a_program - 1) // rows_a_program, config.get("SPLIT", 1))
                out = torch.empty(m, n, device="cuda", dtype=torch.float16 if grid[1] == 1 else torch.float32)

                def launch(t, out=out, kernel=kernel, x=x, m=m, grid=grid, tiled=tiled):
                    if tiled:
                        kernel(grid, x, t["entries"], t["tile_offsets"], out, m, n)
                    else:
                        kernel(grid, x, t["values"], t["offsets"], t["bases"], out, m, n, t["bases"].shape[1])

                def run(t, out=out, launch=launch):
                    if out.dtype == torch.float16:
                        launch(t)
                        return out
                    out.zero_()
                    launch(t)
                    return out.half()
                sets = tcsl_sets if tiled else csr_sets
                error = BENCH.relative_error(run(sets[0]), ref)
                if error >= BENCH.MAX_ERROR:
                    failed += 1
                    cells.append(f"error {error:.2e}")
                    continue
                us = BENCH.time_us([lambda t=t: run(t) for t in sets])
                cell = f"{us:.1f} ({cublas / us:.2f}x)"
                if out.dtype != torch.float16:   # split-K: also the kernel alone, without zeroing and converting
                    alone = BENCH.time_us([lambda t=t: launch(t) for t in sets])
                    cell += f" k {alone:.1f} ({cublas / alone:.2f}x)"
                cells.append(cell)
            print(f"| {name} | {m} | {cublas:.1f} | " + " | ".join(cells) + " |", flush=True)
        del dense_sets, csr_sets, tcsl_sets
        torch.cuda.empty_cache()
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


def main() -> int:
    from gluon_experiment import experiment_main
    return experiment_main(__doc__, "exp_gluon_ccsr", build, check, "Gluon's shared-memory scatter")


if __name__ == "__main__":
    sys.exit(main())
