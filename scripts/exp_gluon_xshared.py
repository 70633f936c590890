"""Experiment (architecture note 35): a chunked-CSR linear for 4-8 rows of x on CUDA cores that gathers x from
shared memory instead of L1. Not used by bundles. Results: docs/perf/2026-12-07-gluon-xshared.md.

The shipped kernel (codegen/kernels/chunked_csr_linear.py) gathers each entry's column of x with one 16-byte load
through L1; at 8 rows those scattered loads keep L1 busy and the kernel is about as fast as cuBLAS. Here each
program first copies all of x, interleaved ([K, 8] fp16 for 8 rows: one column's rows in 16 bytes), into shared
memory (64 KB for K = 4096; for 11008, two buffers of 8,192 and 4,096 columns, 192 KB), and then gathers with
Gluon's shared-memory gather, which Triton lowers to one ld.shared.v4 an entry. Shared memory serves a 16-byte
load eight threads a cycle, so the cost is bank conflicts: two of those eight threads whose columns are equal mod
8 (different columns) take a cycle more. Two kernels: `xshared_kernel` (entries as fp16 and byte tensors) and
`xshared_packed_kernel` (entries carried as the loaded 64- and 32-bit words, unpacked at use). `check` times the
weight's entries as encoded (columns ascending in a chunk), reordered within each chunk so one load's entries fall
in different bank groups (runtime/sparse_formats.spread_banks), and, at 8 rows, re-cut into chunks of up to 4
entries a bank group (`balanced_chunks`); the sums do not depend on the order.

Gluon's shared-memory gather is in Triton 3.9 here, not the GPU machine's 3.6, so the kernels are built here and
carried there as code objects (as bundles' kernels are):

    python3 scripts/exp_gluon_xshared.py build out/gluon_xshared     # on the CPU machine: cubins for sm_90
    python3 scripts/exp_gluon_xshared.py check out/gluon_xshared     # on an H100/H200: float64 check, timings

`check` builds 70% magnitude-pruned random weights of Llama-2-7B's four shapes (gate_up as a plain linear, no
activation, for both), checks every kernel against a float64 product (relative error < 2e-3), and times it against
cuBLAS on the dense weight and against the shipped chunked-CSR kernel (its default config, x interleaved by the
producer as in bundles), all over rotating copies, medians (scripts/bench_sparse.py's timing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

SHAPES = {"o": (4096, 4096), "down": (4096, 11008), "qkv": (12288, 4096), "gate_up": (22016, 4096)}
SHARED_LIMIT = 227 << 10      # an H100's or H200's shared memory a block
X_BLOCK = 256                 # columns of x staged a step (divides both K)
CHUNK = 32                    # entries a chunk (the format's)
# Variants: WARPS warps a program; EPT entries a thread a step (a chunk spans 32 / EPT threads; the packed kernel
# takes 4); UNROLL chunks' entries in flight (each set reloaded right after use); PACKED the second kernel; GROUPS
# warp groups sharing a row block's chunks (packed); PROGRAMS programs a multiprocessor (0: one a row block, else a
# persistent grid of PROGRAMS x multiprocessors looping over row blocks).
_BASE = dict(WARPS=4, EPT=4, UNROLL=1, PROGRAMS=0)
VARIANTS = {
    # run 3's best (runs 1-3 had more: the commits the record names)
    "w8_u3": {**_BASE, "WARPS": 8, "UNROLL": 3},
    "pk_w8_u4": {**_BASE, "PACKED": 1, "WARPS": 8, "UNROLL": 4},
    "pk_w8_u4_p": {**_BASE, "PACKED": 1, "WARPS": 8, "UNROLL": 4, "PROGRAMS": 3},
    "pk_w8_g2_u4": {**_BASE, "PACKED": 1, "WARPS": 8, "UNROLL": 4, "GROUPS": 2},
    "pk_w16_g2_u4": {**_BASE, "PACKED": 1, "WARPS": 16, "UNROLL": 4, "GROUPS": 2},
}
ROWS_OF_X = (4, 8)            # rows of x the kernels are built for (WORDS = rows / 2 int32 a column)


def _shared_parts():
    """The kernels' shared parts: stage_x and halves from codegen/kernels/chunked_csr_xshared.py (x's K columns
    copied into a shared buffer; the two fp16 rows of x in each gathered int32 word as float32), and store_rows, a
    row block's sums [R, WORDS] for rows 2w (lo) and 2w + 1 (hi) of x stored as fp16 into out [M, N]."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    from fdpp.codegen.kernels.chunked_csr_xshared import _halves as halves, _stage_x as stage_x

    @gluon.jit
    def store_rows(out_ptr, lo_sum, hi_sum, first_row, M, N, R: gl.constexpr, WORDS: gl.constexpr):
        out_layout: gl.constexpr = lo_sum.type.layout
        out_rows = first_row + gl.arange(0, R, layout=gl.SliceLayout(1, out_layout))
        m = gl.arange(0, WORDS, layout=gl.SliceLayout(0, out_layout)) * 2
        at = out_ptr + gl.expand_dims(m, 0) * N + gl.expand_dims(out_rows, 1)
        ok = gl.expand_dims(out_rows < N, 1)
        gl.store(at, lo_sum.to(gl.float16), mask=ok & gl.expand_dims(m < M, 0))
        gl.store(at + N, hi_sum.to(gl.float16), mask=ok & gl.expand_dims(m + 1 < M, 0))

    return stage_x, halves, store_rows


def xshared_kernel():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    stage_x, halves, store_rows = _shared_parts()

    @gluon.jit
    def load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, c, chunks_per_row,
                     EPT: gl.constexpr, entry_layout: gl.constexpr):
        """Chunk c of each thread's row: its EPT values [T, EPT] (fp16), offsets [T, EPT] (int32) and the chunk's
        base [T] (one load a thread); zeros past the row's chunks or past N."""
        j = gl.arange(0, EPT, layout=gl.SliceLayout(0, entry_layout))
        ok = row_ok & (c < chunks_per_row)                                                      # [T]
        at = gl.expand_dims(rows * (chunks_per_row * 32) + c * 32 + lane * EPT, 1) + gl.expand_dims(j, 0)
        value = gl.load(values_ptr + at, mask=gl.expand_dims(ok, 1), other=0.0)
        offset = gl.load(offsets_ptr + at, mask=gl.expand_dims(ok, 1), other=0).to(gl.int32)
        base = gl.load(bases_ptr + rows * chunks_per_row + c, mask=ok, other=0)
        return value, offset, base

    @gluon.jit
    def accumulate(x_s, value, offset, base, acc_lo, acc_hi, T: gl.constexpr, EPT: gl.constexpr,
                   WORDS: gl.constexpr, gather3: gl.constexpr):
        """acc += value * x[:, column] for a thread's EPT entries: x's words gathered from shared memory, split
        into their fp16 halves (rows 2w and 2w + 1) as float32."""
        column = gl.expand_dims(base, 1) + offset                                               # [T, EPT]
        index = gl.expand_dims(column, 2) + gl.zeros([T, EPT, WORDS], gl.int32, gather3)
        words = gl.reshape(x_s.gather(gl.reshape(index, [T * EPT, WORDS]), 0), [T, EPT, WORDS])
        words = gl.convert_layout(words, gather3)
        lo, hi = halves(words)
        v = gl.expand_dims(value.to(gl.float32), 2)
        return acc_lo + v * lo, acc_hi + v * hi

    @gluon.jit
    def ccsr_xshared_kernel(
        x_ptr,              # [K, WORDS] int32: x interleaved, column k's 2 * WORDS rows side by side as fp16 pairs
        values_ptr,         # [N, chunks_per_row * 32] fp16: each row's nonzeros chunk by chunk, 0 = padding
        offsets_ptr,        # [N, chunks_per_row * 32] uint8: an entry's column minus its chunk's base
        bases_ptr,          # [N, chunks_per_row] int32: each chunk's first column
        out_ptr,            # [M, N] fp16
        M, N, chunks_per_row, row_blocks,
        K: gl.constexpr, WORDS: gl.constexpr, EPT: gl.constexpr, WARPS: gl.constexpr, XB: gl.constexpr,
        UNROLL: gl.constexpr,
    ):
        T: gl.constexpr = WARPS * 32
        LANES: gl.constexpr = 32 // EPT          # threads a chunk
        R: gl.constexpr = T // LANES             # weight rows a row block
        # [T, EPT, WORDS]: a thread's EPT entries of one chunk and the WORDS words of x each gathers
        gather3: gl.constexpr = gl.BlockedLayout([1, EPT, WORDS], [32, 1, 1], [WARPS, 1, 1], [2, 1, 0])
        entry_layout: gl.constexpr = gl.SliceLayout(2, gather3)                                 # [T, EPT]
        thread_layout: gl.constexpr = gl.SliceLayout(1, entry_layout)                           # [T]
        stage_layout: gl.constexpr = gl.BlockedLayout([1, WORDS], [32, 1], [WARPS, 1], [1, 0])
        x_s = stage_x(x_ptr, K, K, WORDS, XB, stage_layout)
        t = gl.arange(0, T, layout=thread_layout)
        lane = t % LANES
        for rb in range(gl.program_id(0), row_blocks, gl.num_programs(0)):
            rows = rb * R + t // LANES
            row_ok = rows < N
            acc_lo = gl.zeros([T, EPT, WORDS], gl.float32, gather3)       # rows 2w of x
            acc_hi = gl.zeros([T, EPT, WORDS], gl.float32, gather3)       # rows 2w + 1
            # UNROLL chunks' entries in flight: each set is reloaded right after it is used, so a load has the
            # other sets' work to land in, and no register copy waits on a load in flight
            a_value, a_offset, a_base = load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, 0,
                                                     chunks_per_row, EPT, entry_layout)
            if UNROLL >= 2:
                b_value, b_offset, b_base = load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, 1,
                                                         chunks_per_row, EPT, entry_layout)
            if UNROLL >= 3:
                c_value, c_offset, c_base = load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, 2,
                                                         chunks_per_row, EPT, entry_layout)
            if UNROLL >= 4:
                d_value, d_offset, d_base = load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, 3,
                                                         chunks_per_row, EPT, entry_layout)
            for c in range(0, chunks_per_row, UNROLL):
                acc_lo, acc_hi = accumulate(x_s, a_value, a_offset, a_base, acc_lo, acc_hi, T, EPT, WORDS, gather3)
                a_value, a_offset, a_base = load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane,
                                                         c + UNROLL, chunks_per_row, EPT, entry_layout)
                if UNROLL >= 2:
                    acc_lo, acc_hi = accumulate(x_s, b_value, b_offset, b_base, acc_lo, acc_hi, T, EPT, WORDS,
                                                gather3)
                    b_value, b_offset, b_base = load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok,
                                                             lane, c + UNROLL + 1, chunks_per_row, EPT, entry_layout)
                if UNROLL >= 3:
                    acc_lo, acc_hi = accumulate(x_s, c_value, c_offset, c_base, acc_lo, acc_hi, T, EPT, WORDS,
                                                gather3)
                    c_value, c_offset, c_base = load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok,
                                                             lane, c + UNROLL + 2, chunks_per_row, EPT, entry_layout)
                if UNROLL >= 4:
                    acc_lo, acc_hi = accumulate(x_s, d_value, d_offset, d_base, acc_lo, acc_hi, T, EPT, WORDS,
                                                gather3)
                    d_value, d_offset, d_base = load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok,
                                                             lane, c + UNROLL + 3, chunks_per_row, EPT, entry_layout)
            # a row's sums: over a thread's EPT entries, then over the LANES threads of its chunk
            lo_sum = gl.sum(gl.reshape(gl.sum(acc_lo, axis=1), [R, LANES, WORDS]), axis=1)      # [R, WORDS]
            hi_sum = gl.sum(gl.reshape(gl.sum(acc_hi, axis=1), [R, LANES, WORDS]), axis=1)
            store_rows(out_ptr, lo_sum, hi_sum, rb * R, M, N, R, WORDS)

    return ccsr_xshared_kernel


def xshared_packed_kernel():
    """The second design, which bundles now run (codegen/kernels/chunked_csr_xshared.py; its loop is that module's
    `_row_sums`): a thread's four entries of a chunk load as one 64-bit word of values and one 32-bit word of
    offsets, which the loop carries as loaded and unpacks only where they are used (the first design's fp16 and byte
    tensors are unpacked into the loop's registers right after their load, which waits for it), and each of the
    four entries gathers separately, so the sums need only [T, WORDS] accumulators."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from fdpp.codegen.kernels.chunked_csr_xshared import _row_sums as run_chunks
    stage_x, _, store_rows = _shared_parts()

    @gluon.jit
    def ccsr_xshared_packed_kernel(
        x_ptr,              # [K, WORDS] int32: x interleaved, column k's 2 * WORDS rows side by side as fp16 pairs
        values_ptr,         # [N, chunks_per_row * 8] int64: the fp16 values, four a word
        offsets_ptr,        # [N, chunks_per_row * 8] int32: the uint8 offsets, four a word
        bases_ptr,          # [N, chunks_per_row] int32: each chunk's first column
        out_ptr,            # [M, N] fp16
        M, N, chunks_per_row, row_blocks,
        chunks_lo,          # SPLIT_AT > 0: each row's chunks below chunks_lo have columns < SPLIT_AT, the rest >= it
        K: gl.constexpr, WORDS: gl.constexpr, EPT: gl.constexpr, WARPS: gl.constexpr, XB: gl.constexpr,
        UNROLL: gl.constexpr, GROUPS: gl.constexpr, K_ALLOC: gl.constexpr, SPLIT_AT: gl.constexpr,
        HI_ALLOC: gl.constexpr,
    ):
        """SPLIT_AT > 0: x in two shared buffers, columns [0, SPLIT_AT) (K_ALLOC = SPLIT_AT) and [SPLIT_AT, K)
        (HI_ALLOC columns), so a K whose power-of-two round-up does not fit still does."""
        T: gl.constexpr = WARPS * 32
        LANES: gl.constexpr = 8                  # threads a chunk (4 entries a thread)
        R: gl.constexpr = T // (LANES * GROUPS)  # weight rows a row block; GROUPS warp groups share its chunks
        word_layout: gl.constexpr = gl.BlockedLayout([1, WORDS], [32, 1], [WARPS, 1], [1, 0])    # [T, WORDS]
        thread_layout: gl.constexpr = gl.SliceLayout(1, word_layout)                             # [T]
        if SPLIT_AT:
            x_s = stage_x(x_ptr, SPLIT_AT, K_ALLOC, WORDS, XB, word_layout)
            x_hi = stage_x(x_ptr + SPLIT_AT * WORDS, K - SPLIT_AT, HI_ALLOC, WORDS, XB, word_layout)
        else:
            x_s = stage_x(x_ptr, K, K_ALLOC, WORDS, XB, word_layout)
        t = gl.arange(0, T, layout=thread_layout)
        lane = t % LANES
        group = t // (T // GROUPS)               # warp-uniform: group g takes chunks g, g + GROUPS, ...
        for rb in range(gl.program_id(0), row_blocks, gl.num_programs(0)):
            rows = rb * R + (t % (T // GROUPS)) // LANES
            row_ok = rows < N
            acc_lo = gl.zeros([T, WORDS], gl.float32, word_layout)
            acc_hi = gl.zeros([T, WORDS], gl.float32, word_layout)
            if SPLIT_AT:
                acc_lo, acc_hi = run_chunks(x_s, values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, group, 0,
                                            chunks_lo, chunks_per_row, 0, acc_lo, acc_hi, UNROLL, GROUPS, WORDS,
                                            word_layout)
                acc_lo, acc_hi = run_chunks(x_hi, values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, group,
                                            chunks_lo, chunks_per_row, chunks_per_row, SPLIT_AT, acc_lo, acc_hi,
                                            UNROLL, GROUPS, WORDS, word_layout)
            else:
                acc_lo, acc_hi = run_chunks(x_s, values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, group, 0,
                                            chunks_per_row, chunks_per_row, 0, acc_lo, acc_hi, UNROLL, GROUPS, WORDS,
                                            word_layout)
            # a row's sums: over the LANES threads of its chunk and over the warp groups
            lo_sum = gl.sum(gl.sum(gl.reshape(acc_lo, [GROUPS, R, LANES, WORDS]), axis=2), axis=0)   # [R, WORDS]
            hi_sum = gl.sum(gl.sum(gl.reshape(acc_hi, [GROUPS, R, LANES, WORDS]), axis=2), axis=0)
            store_rows(out_ptr, lo_sum, hi_sum, rb * R, M, N, R, WORDS)

    return ccsr_xshared_packed_kernel


SIGNATURE = {"x_ptr": "*i32", "values_ptr": "*fp16", "offsets_ptr": "*u8", "bases_ptr": "*i32", "out_ptr": "*fp16",
             "M": "i32", "N": "i32", "chunks_per_row": "i32", "row_blocks": "i32"}
PACKED_SIGNATURE = {**SIGNATURE, "values_ptr": "*i64", "offsets_ptr": "*i32", "chunks_lo": "i32"}
SPLIT_AT = 8192         # x's columns in the first shared buffer where K's power-of-two round-up does not fit


def kernel_name(variant: str, rows: int, k: int) -> str:
    return f"ccsr_xshared_{variant}_m{rows}_k{k}"


def x_split_at(k: int, rows: int) -> int:
    """SPLIT_AT where x ([K, rows] fp16) rounded up to a power of two of columns would not fit a block's shared
    memory, so the packed kernel holds it in two buffers; else 0 (one buffer)."""
    import triton
    return SPLIT_AT if triton.next_power_of_2(k) * rows * 2 > SHARED_LIMIT else 0


def build(directory: Path) -> None:
    from fdpp.codegen.build import compile_kernel
    from fdpp.compiler.targets import get_target
    from fdpp.runtime.kernel_binary import save_kernel
    import triton
    from triton.experimental.gluon import language as gl
    if not hasattr(gl.shared_memory_descriptor, "gather"):
        raise SystemExit(f"exp_gluon_xshared: triton {triton.__version__}'s Gluon has no shared-memory gather; "
                         f"build on a machine with a newer triton (3.9 has it)")
    kernels = {0: xshared_kernel(), 1: xshared_packed_kernel()}
    directory.mkdir(parents=True, exist_ok=True)
    for variant, config in VARIANTS.items():
        for k in sorted({k for _, k in SHAPES.values()}):
            packed = config.get("PACKED", 0)
            if k & (k - 1) and not packed:
                print(f"K = {k}: not built for {variant} (Gluon's shared allocations need power-of-two shapes)")
                continue
            for rows in ROWS_OF_X:
                constexprs = {"K": k, "WORDS": rows // 2, "EPT": config["EPT"], "WARPS": config["WARPS"],
                              "XB": X_BLOCK, "UNROLL": config["UNROLL"]}
                if packed:      # x's allocation rounded up to a power of two, or two buffers (split at SPLIT_AT)
                    split_at = x_split_at(k, rows)
                    constexprs.update(GROUPS=config.get("GROUPS", 1), SPLIT_AT=split_at,
                                      K_ALLOC=split_at or triton.next_power_of_2(k),
                                      HI_ALLOC=triton.next_power_of_2(k - split_at) if split_at else 1)
                built = compile_kernel(kernels[packed], get_target("h100"), PACKED_SIGNATURE if packed else SIGNATURE,
                                       constexprs, name=kernel_name(variant, rows, k), num_warps=config["WARPS"])
                if built.shared_memory_bytes > SHARED_LIMIT:
                    print(f"{built.name}: skipped, needs {built.shared_memory_bytes} bytes of shared memory")
                    continue
                save_kernel(built, directory)
                print(f"{built.name}: shared {built.shared_memory_bytes} bytes")
    (directory / "constexprs.json").write_text(json.dumps({"VARIANTS": VARIANTS, "ROWS_OF_X": ROWS_OF_X}))


def balanced_chunks(weight: torch.Tensor, classes: int = 8, fill: bool = True):
    """Chunked CSR of weight [N, K] (same layout as encode_chunked_csr, other chunks) whose chunks take up to
    32 // classes entries of each column class (column mod classes: x's bank group at 8 rows), entry
    4 * class + k being the class's k-th, so a chunk's 8 threads (4 entries each) gather from 8 different bank
    groups in each load. Chunks are cut greedily from each row's smallest remaining column, within 256 columns.
    A class short of entries leaves its slots to other classes' next entries in reach (`fill`: one bank conflict
    a slot) or to padding (value 0) at a column of its own class; within 7 columns of x's end no such column may
    exist, and the padding takes the chunk's base (a conflict). Rows run in parallel, one chunk a step."""
    per = CHUNK // classes
    n, k = weight.shape
    device = weight.device
    present = weight != 0
    cols = torch.arange(k, device=device)
    cls = cols % classes
    # per row and class, the columns in order, padded with a sentinel past every reach
    far = k + 1024
    lists = []
    counts = []
    for c in range(classes):
        sel = present[:, cls == c]                                        # [N, K / classes]
        ccols = cols[cls == c]
        cnt = sel.sum(1)
        order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)   # present first, in column order
        lst = torch.where(torch.arange(sel.shape[1], device=device)[None, :] < cnt[:, None], ccols[order], far)
        lists.append(torch.nn.functional.pad(lst, (0, -(-k // classes) - lst.shape[1]), value=far))
        counts.append(cnt)
    L = torch.stack(lists, 1)                                             # [N, classes, Lmax]
    L = torch.cat([L, torch.full((n, classes, CHUNK + per + 1), far, device=device)], 2)
    ptr = torch.zeros(n, classes, dtype=torch.long, device=device)
    vals, offs, bases = [], [], []
    rows = torch.arange(n, device=device)[:, None]
    kk = torch.arange(per, device=device)
    while True:
        head = L.gather(2, ptr[:, :, None])[:, :, 0]                       # [N, classes]
        start = head.min(1).values                                         # [N]
        active = start < far
        if not bool(active.any()):
            break
        reach = torch.searchsorted(L.reshape(n * classes, -1).contiguous(),
                                   (start[:, None].expand(n, classes) + 256).reshape(-1, 1).contiguous()).view(n, classes)
        avail = torch.where(active[:, None], torch.clamp(reach - ptr, min=0), 0)
        take = torch.clamp(avail, max=per)                                 # [N, classes]
        idx = ptr[:, :, None] + kk[None, None, :]                          # [N, classes, per]
        col = L.gather(2, idx)                                             # [N, classes, per]
        real = (kk[None, None, :] < take[:, :, None]) & active[:, None, None]
        base = torch.where(active, start, 0)
        pad_col = base[:, None, None] + (torch.arange(classes, device=device)[None, :, None] - base[:, None, None]) % classes
        pad_col = torch.where(pad_col < k, pad_col, base[:, None, None])   # a column of x, near the end too
        col = torch.where(real, col, pad_col)
        # slots a short class leaves take other classes' next entries in reach (a bank conflict, but no padding)
        if fill:
            extra = avail - take
            deficit = CHUNK - take.sum(1)                                      # [N]
            i32 = torch.arange(CHUNK, device=device)
            cand_col = L.gather(2, (ptr + take)[:, :, None] + i32[None, None, :])   # [N, classes, CHUNK]
            cand_ok = (i32[None, None, :] < extra[:, :, None]).reshape(n, -1)
            rank = cand_ok.long().cumsum(1) - 1
            use = cand_ok & (rank < deficit[:, None])
            used = use.view(n, classes, CHUNK).sum(2)                          # [N, classes]
            ranked = torch.full((n, CHUNK + 1), 0, dtype=torch.long, device=device)
            ranked.scatter_(1, torch.where(use, rank, CHUNK), cand_col.reshape(n, -1))
            free = (~real).reshape(n, CHUNK) & active[:, None]
            slot_rank = free.long().cumsum(1) - 1
            filled = free & (slot_rank < used.sum(1, keepdim=True))
            col = torch.where(filled, ranked.gather(1, slot_rank.clamp(0, CHUNK)), col.reshape(n, CHUNK)).view(n, classes, per)
            real = real | filled.view(n, classes, per)
            take = take + used
        col = torch.where(active[:, None, None], col, 0)
        v = torch.where(real, weight.gather(1, col.clamp(max=k - 1).view(n, -1)).view(n, classes, per), 0)
        vals.append(v.reshape(n, CHUNK))
        offs.append((col - base[:, None, None]).reshape(n, CHUNK))
        bases.append(base)
        ptr = ptr + torch.where(active[:, None], take, 0)
    values = torch.stack(vals, 1).reshape(n, -1).to(weight.dtype)
    offsets = torch.stack(offs, 1).reshape(n, -1)
    assert int(offsets.min()) >= 0 and int(offsets.max()) < 256
    return values, offsets.to(torch.uint8), torch.stack(bases, 1).to(torch.int32)


def arranged(weight: torch.Tensor, label: str, words: int):
    """weight's chunked-CSR tensors in one of check's arrangements: "as encoded" (encode_chunked_csr), "spread"
    (spread_banks), "balanced" / "balanced, no fill" (balanced_chunks)."""
    from fdpp.runtime.sparse_formats import encode_chunked_csr, spread_banks
    if label.startswith("balanced"):
        return balanced_chunks(weight, fill=label == "balanced")
    encoded = encode_chunked_csr(weight)
    if label == "spread":      # a column of x takes 4 * words bytes: 32 / words columns fill the 32 banks
        encoded = spread_banks(encoded, groups=32 // words)
    t = encoded.tensors
    return t["values"], t["offsets"], t["bases"]


def arranged_copies(bench, weight: torch.Tensor, label: str, words: int, split_at: int) -> list[dict]:
    """Rotating copies of weight's tensors arranged as `label`; split_at > 0: columns below split_at and the rest
    encoded apart, each row's low chunks first (chunks_lo of them, the most any row has), as the two-buffer kernels
    read them."""
    if not split_at:
        values, offsets, bases = arranged(weight, label, words)
        extra = {}
    else:
        low, high = arranged(weight[:, :split_at], label, words), arranged(weight[:, split_at:], label, words)
        values, offsets = torch.cat([low[0], high[0]], 1), torch.cat([low[1], high[1]], 1)
        bases = torch.cat([low[2], high[2] + split_at], 1)
        extra = {"chunks_lo": low[2].shape[1]}
    copies = bench.copies({"values": values.contiguous(), "offsets": offsets.contiguous(),
                           "bases": bases.contiguous()}, values.numel() * 3 + bases.numel() * 4)
    return [{**c, **extra} for c in copies]


def check(directory: Path) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_sparse as BENCH
    import torch.nn.functional as F
    from fdpp.codegen.kernels.chunked_csr_linear import (chunked_csr_linear, default_chunked_csr_config,
                                                         interleave_rows)
    from fdpp.runtime.cuda_launcher import CudaKernel
    from fdpp.runtime.kernel_binary import load_kernel
    built = json.loads((directory / "constexprs.json").read_text())
    variants, rows_built = built["VARIANTS"], built["ROWS_OF_X"]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    # the entries as encoded (columns ascending in a chunk), reordered within chunks (spread_banks), and, at 8 rows,
    # re-chunked so each load's 8 threads hit 8 bank groups (balanced_chunks, with and without fill-ins)
    arrangements = ["as encoded", "spread", "balanced", "balanced, no fill"]
    print("| shape | M | cuBLAS us | shipped ccsr us (x cuBLAS) | entries | " + " | ".join(f"{v} us (x cuBLAS)" for v in variants)
          + " |")
    print("| --- | --- | --- | --- | --- |" + " --- |" * len(variants))
    failed = 0
    for name, (n, k) in SHAPES.items():
        if not any((directory / f"{kernel_name(v, r, k)}.json").is_file() for v in variants for r in rows_built):
            print(f"| {name} | | | no kernel built for K = {k} |")
            continue
        weight, dense_sets, csr, csr_sets = BENCH.dense_and_chunked_csr(n, k, 0.7)
        for m in (4, 8):
            rows = next(r for r in rows_built if r >= m)
            x = (torch.randn(m, k, device="cuda") * 0.5).half()
            ref = x.double() @ weight.double().T
            cublas = BENCH.time_us([lambda s=s, x=x: F.linear(x, s["w"]) for s in dense_sets])
            cfg = default_chunked_csr_config(n, csr.tensors["bases"].shape[1], m)
            ready = interleave_rows(x, cfg["rows"])

            def shipped(t, cfg=cfg, ready=ready, x=x):
                return chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], (n, k), x_interleaved=ready,
                                          **cfg)
            error = BENCH.relative_error(shipped(csr_sets[0]), ref)
            if error >= BENCH.MAX_ERROR:
                failed += 1
            base_us = BENCH.time_us([lambda t=t: shipped(t) for t in csr_sets])
            shipped_cell = f"{base_us:.1f} ({cublas / base_us:.2f}x)" + ("" if error < BENCH.MAX_ERROR else
                                                                        f" error {error:.1e}")
            x_words = interleave_rows(x, rows)[0].contiguous().view(torch.int32)               # [K, rows / 2]
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            split_at = x_split_at(k, rows)          # > 0: the kernels take x in two buffers
            sets_of = {label: csr_sets if label == "as encoded" and not split_at else
                       arranged_copies(BENCH, weight.cuda(), label, rows // 2, split_at)
                       for label in (arrangements if rows == 8 else arrangements[:2])}
            launches = {}                           # variant -> run(t): the built kernel over encoding set t
            for variant, config in variants.items():
                path = directory / f"{kernel_name(variant, rows, k)}.json"
                if not path.is_file():
                    continue
                kernel = CudaKernel(load_kernel(directory, path.stem))
                r_block = config["WARPS"] * 32 // (32 // config["EPT"]) // config.get("GROUPS", 1)
                row_blocks = -(-n // r_block)
                grid = (row_blocks if not config["PROGRAMS"] else min(row_blocks, config["PROGRAMS"] * sms),)

                def run(t, kernel=kernel, grid=grid, row_blocks=row_blocks, out=out, m=m,
                        packed=config.get("PACKED", 0)):
                    values, offsets = t["values"], t["offsets"]
                    if packed:      # the same bytes, four entries a word
                        values, offsets = values.view(torch.int64), offsets.view(torch.int32)
                    chunks = t["bases"].shape[1]
                    kernel(grid, x_words, values, offsets, t["bases"], out, m, n, chunks, row_blocks,
                           *([t.get("chunks_lo", chunks)] if packed else []))
                    return out
                launches[variant] = run
            for arrangement, sets in sets_of.items():
                cells = []
                for variant in variants:
                    run = launches.get(variant)
                    if run is None:
                        cells.append("not built")
                        continue
                    error = BENCH.relative_error(run(sets[0]), ref)
                    if error >= BENCH.MAX_ERROR:
                        failed += 1
                        cells.append(f"error {error:.2e}")
                        continue
                    us = BENCH.time_us([lambda t=t: run(t) for t in sets])
                    cells.append(f"{us:.1f} ({cublas / us:.2f}x)")
                chunks = sets[0]["bases"].shape[1]
                print(f"| {name} | {m} | {cublas:.1f} | {shipped_cell} | {arrangement} ({chunks} chunks a row) | "
                      + " | ".join(cells) + " |", flush=True)
        del dense_sets, csr_sets, sets_of
        torch.cuda.empty_cache()
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


def main() -> int:
    from gluon_experiment import experiment_main
    return experiment_main(__doc__, "exp_gluon_xshared", build, check, "Gluon's shared-memory gather")


if __name__ == "__main__":
    sys.exit(main())
