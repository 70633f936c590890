"""Chunked-CSR linear for 1-8 rows of x with x staged in shared memory (Gluon): the dataflow's
`chunked_csr_xshared`, beside chunked_csr_linear's L1-gathering kernel (architecture notes 35 and 37).

At 4-8 rows the L1 kernel gathers each entry's column of x (8 or 16 bytes) from scattered addresses and L1 bounds
it: on an H100 it runs at about cuBLAS's speed at 8 rows. Here each program first copies the whole of x's row
group, interleaved ([K, ROWS] fp16 as [K, WORDS] int32 words, WORDS = ROWS / 2; one row: each value zero-extended
to a word), into shared memory, and each entry gathers its column with Gluon's `shared_memory_descriptor.gather`
(one ld.shared an entry, a vector from 4 rows). Measured on an H100 as bundles build it, 70%, with each layer's
epilogue (docs/perf/2026-12-07-xshared-bundles.md run 2, docs/perf/2026-12-07-xshared-few-rows.md run 1,
docs/perf/2026-12-07-gated-direct.md run 1): 4 rows 1.50-1.81x cuBLAS (o_proj at the edge; down_proj 1.50x, where
the L1 kernel's 1.63x is kept), 8 rows 1.10x (o_proj), 1.46x (gate/up) and 1.46-1.49x (q/k/v); both of the latter
take their sums from registers (q/k/v 30.5 us, gate/up 55.5 us with them through shared memory), against 0.94-1.10x
for the L1 kernel. At 1 and 2 rows it is no faster than the L1 kernel there (the best of six configs: 1 row 1-15%
slower, 2 rows 12% slower to 3.5% faster), so the dataflow offers it from 3 rows.

The loop design carries what that record found:
- a thread takes 4 entries of a chunk, loaded as one int64 of values and one int32 of offsets and unpacked only
  where used (the loop's registers never wait on a load in flight);
- UNROLL sets of entries in flight, each reloaded right after its use (a register prefetch rotated by copies
  waited in the iteration that loaded it);
- GROUPS warp groups may share a row block's chunks (for weights with few rows, e.g. o_proj);
- a persistent grid (PROGRAMS a multiprocessor) for weights with many rows;
- a row block of one warp group hands its sums to the epilogue from registers (DIRECT), a gated one (at 8 rows by
  default) with each feature's gate and up rows 8 lanes apart, paired by one shuffle; other row blocks sum through
  shared memory.
Entries are best arranged so the 8 entries one gather instruction reads fall in different bank groups
(runtime/sparse_formats.spread_banks, which the encoder applies to every chunked-CSR weight).

x must fit in shared memory: K rounded up to a power of two (Gluon's allocations must be), times 4 * WORDS bytes,
under the target's limit; down_proj (K = 11008) fits at 4 rows, not at 8 (`xshared_fits`). The epilogues are the
L1 kernel's: bias, act(gate) * up for the stacked (gate; up) weight, residual add, and the output written
interleaved for the next chunked-CSR linear (OUT_ROWS). float16 only.

Gluon's shared-memory gather is in Triton 3.9 here; with an older Triton (the GPU machine's 3.6)
GLUON_SHARED_GATHER is False and the dataflow does not offer this kernel. Gluon kernels do not run under the
interpreter: CI compiles them and checks their code; scripts/gpu_xshared_check.py runs them on a GPU.
"""

from __future__ import annotations

import math

import triton

from fdpp.codegen.kernels.activation import apply_activation

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    GLUON_SHARED_GATHER = hasattr(gl.shared_memory_descriptor, "gather")
except ImportError:     # a Triton without Gluon
    GLUON_SHARED_GATHER = False

__all__ = ["GLUON_SHARED_GATHER", "XSHARED_ROWS", "default_xshared_config", "xshared_constexprs", "xshared_fits",
           "xshared_grid", "xshared_rows", "xshared_shared_bytes", "xshared_x_bytes"]

XSHARED_ROWS = (1, 2, 4, 8)    # rows of x gathered together (one int32 word holds two rows' fp16 values; one row:
                               # its value zero-extended to a word)
LANES = 8                      # threads a chunk: 4 entries each of the format's 32
STAGE_COLUMNS = 256            # x's columns copied into shared memory a step (at most; a power of two dividing K)


def xshared_rows(m: int) -> int:
    """Rows of x a program gathers together for a bucket of up to m (<= 8) rows: 1, 2, 4 or 8."""
    if not 1 <= m <= XSHARED_ROWS[-1]:
        raise ValueError(f"chunked_csr_xshared: takes 1-{XSHARED_ROWS[-1]} rows of x, got {m}")
    return next(rows for rows in XSHARED_ROWS if m <= rows)


def xshared_words(rows: int) -> int:
    """int32 words a column of x takes in shared memory: two rows' fp16 values a word, one row's value alone."""
    return max(rows // 2, 1)


def xshared_x_bytes(k: int, rows: int) -> int:
    """Shared memory x's buffer takes: K rounded up to a power of two (Gluon's allocations must be) columns of
    xshared_words(rows) int32 words."""
    return 4 * xshared_words(rows) * triton.next_power_of_2(k)


def _block_rows(config: dict) -> int:
    """Weight rows a row block: a chunk takes 8 threads, and `groups` warp groups share a row's chunks."""
    return config["num_warps"] * 32 // (LANES * config["groups"])


def xshared_shared_bytes(k: int, rows: int, config: dict) -> int:
    """Shared memory a program takes: x ([pow2(K), xshared_words(rows)] int32) and the row block's sums (two
    [R, WORDS] float32 buffers, allocated whether or not the sums go through them)."""
    return xshared_x_bytes(k, rows) + 2 * 4 * xshared_words(rows) * _block_rows(config)


def xshared_fits(k: int, rows: int, shared_limit: int, config: dict | None = None) -> bool:
    """Whether x of K columns at `rows` rows (1, 2, 4 or 8) and the sums fit a block's shared memory."""
    config = config or default_xshared_config(1, k, rows)
    return rows in XSHARED_ROWS and xshared_shared_bytes(k, rows, config) <= shared_limit


BIG_X_BYTES = 64 << 10      # x's buffer from which a multiprocessor holds at most three programs


def default_xshared_config(n: int, k: int, m: int) -> dict:
    """rows, num_warps, groups, unroll, programs for a weight [n, k] (n: the stacked gate/up counts both) and m rows
    of x, from the H100 runs of docs/perf/2026-12-07-gluon-xshared.md (runs 3, 5 and 6, Llama-2-7B's shapes at 70%):
    - weights of <= 8192 rows (o_proj, down_proj) have too few row blocks for the 132 multiprocessors and take
      two warp groups per row block: 8 warps, or 16 where x's buffer takes more than 64 KB (down_proj at 4 rows,
      88 KB: 23.2 us against 31.5). o_proj at 8 rows (64 KB) took 16 until the H100 run of
      docs/perf/2026-12-07-default-check.md measured the kernel as it is now: 12.7 us with 8, 13.6 with 16;
    - more rows (qkv, gate/up) take 8 warps in one group on a persistent grid of 3 programs a multiprocessor
      (qkv at 8 rows 25.8 us, against 29.0 with 16 warps in two groups); where x's buffer exceeds 64 KB (K > 4096
      at 8 rows, unmeasured) the o_proj rule instead."""
    rows = xshared_rows(m)
    x_bytes = xshared_x_bytes(k, rows)
    if n <= 8192 or x_bytes > BIG_X_BYTES:
        return {"rows": rows, "num_warps": 16 if x_bytes > BIG_X_BYTES else 8, "groups": 2, "unroll": 4,
                "programs": 0}
    return {"rows": rows, "num_warps": 8, "groups": 1, "unroll": 4, "programs": 3}


def _stage_columns(k: int) -> int:
    return math.gcd(k, STAGE_COLUMNS)


def xshared_row_blocks(out_features: int, gated: bool, config: dict) -> int:
    """Row blocks of the weight: R = num_warps * 32 / (8 * groups) weight rows each (R / 2 features when gated)."""
    block_rows = _block_rows(config)
    features = block_rows // 2 if gated else block_rows
    return triton.cdiv(out_features, features)


def xshared_grid(out_features: int, gated: bool, config: dict, multiprocessors: int) -> int:
    """Programs along grid axis 0: one per row block, or a persistent grid of `programs` a multiprocessor."""
    blocks = xshared_row_blocks(out_features, gated, config)
    return min(blocks, config["programs"] * multiprocessors) if config["programs"] else blocks


def xshared_constexprs(k: int, config: dict, *, has_bias: bool, has_residual: bool, activation: int | None,
                       out_rows: int) -> dict:
    """The kernel's constexprs for a weight of K columns; activation: the gated epilogue's code
    (activation.ACTIVATION_CODES), None for a plain linear."""
    rows = config["rows"]
    if rows not in XSHARED_ROWS:
        raise ValueError(f"chunked_csr_xshared: rows must be one of {XSHARED_ROWS}, got {rows}")
    if config["unroll"] not in (1, 2, 4):
        raise ValueError(f"chunked_csr_xshared: unroll must be 1, 2 or 4, got {config['unroll']}")
    if config["num_warps"] * 32 % (LANES * config["groups"] * 2):
        raise ValueError(f"chunked_csr_xshared: {config['num_warps']} warps do not split into {config['groups']} "
                         f"groups of an even number of rows")
    if config.get("direct") and config["groups"] != 1:
        raise ValueError(f"chunked_csr_xshared: sums from registers (direct) need one warp group, got "
                         f"{config['groups']}")
    return {"K": k, "K_ALLOC": triton.next_power_of_2(k), "WORDS": xshared_words(rows), "SINGLE": rows == 1,
            "XB": _stage_columns(k),
            # a row block's sums straight to the epilogue from registers (no shared-memory round trip, no barriers;
            # gated blocks pair gate and up rows 8 lanes apart): on an H100 q/k/v at 8 rows 25.7-25.9 against 30.5
            # us (docs/perf/2026-12-07-xshared-few-rows.md), gate/up at 8 rows 48.1 against 55.5
            # (docs/perf/2026-12-07-gated-direct.md); gated at 1-4 rows unmeasured, so there only when asked for.
            # Warp groups sum across warps, so they cannot
            "DIRECT": bool(config.get("direct", config["groups"] == 1 and (activation is None or rows == 8))),
            "WARPS": config["num_warps"], "GROUPS": config["groups"], "UNROLL": config["unroll"],
            "HAS_BIAS": has_bias, "HAS_RESIDUAL": has_residual, "GATED": activation is not None,
            "ACTIVATION": activation or 0, "OUT_ROWS": out_rows,
            # first chunks of a program's first row block asked of L2 before x's copy (opt-in; unmeasured)
            "EARLY": int(config.get("early", 0))}


XSHARED_SIGNATURE = {"x_ptr": "*i32", "values_ptr": "*i64", "offsets_ptr": "*i32", "bases_ptr": "*i32",
                     "bias_ptr": "*fp16", "residual_ptr": "*fp16", "out_ptr": "*fp16", "M": "i32", "N": "i32",
                     "chunks_per_row": "i32", "row_blocks": "i32"}


if GLUON_SHARED_GATHER:
    @gluon.jit
    def _grid_dependency_wait(GRID_DEPENDENCY: gl.constexpr, anchor):
        """wait_for_producers without letting the next kernel start (Gluon has no gdc helpers: the PTX inline).
        anchor: any scalar, which the inline assembly needs as an operand."""
        if GRID_DEPENDENCY:
            gl.inline_asm_elementwise("griddepcontrol.wait; mov.b32 $0, 0;", "=r,r", [anchor], dtype=gl.int32,
                                      is_pure=False, pack=1)

    @gluon.jit
    def _let_next_start(GRID_DEPENDENCY: gl.constexpr, anchor):
        if GRID_DEPENDENCY:
            gl.inline_asm_elementwise("griddepcontrol.launch_dependents; mov.b32 $0, 0;", "=r,r", [anchor],
                                      dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _block_rows_of(rb, slot, F: gl.constexpr, N, GATED: gl.constexpr, DIRECT: gl.constexpr):
        """Row block rb's weight row for each thread's slot (clamped to 0 past the weight), and whether it is real."""
        if GATED and DIRECT:           # gate and up rows of a feature in neighbouring slots (8 lanes apart)
            feature = rb * F + slot // 2
            rows = gl.where(slot % 2 == 0, feature, feature + N)
        elif GATED:                    # the block's gate rows, then the same features' up rows
            feature = rb * F + slot % F
            rows = gl.where(slot < F, feature, feature + N)
        else:
            feature = rb * F + slot
            rows = feature
        row_ok = feature < N
        # rows past the weight's are masked by row_ok in every load; clamped too, which measured faster at 8
        # rows on an H100 than leaving them (qkv 30.5 against 36.7 us; docs/perf/2026-12-07-xshared-bundles.md)
        return gl.where(row_ok, rows, 0), row_ok

    @gluon.jit
    def _ask_l2_for_first_chunks(values_ptr, offsets_ptr, rows, lane, chunks_per_row, EARLY: gl.constexpr):
        """prefetch.global.L2 of each thread's share of its row's first EARLY chunks (values and offsets), so their
        first loads after x's copy meet L2 rather than device memory. Weights do not depend on the previous
        kernel, so this may run before the grid-dependency wait."""
        for c in gl.static_range(EARLY):        # chunks past the row's last ask for its last again
            at = rows * (chunks_per_row * 8) + gl.minimum(c, chunks_per_row - 1) * 8 + lane
            gl.inline_asm_elementwise("prefetch.global.L2 [$1]; prefetch.global.L2 [$2]; mov.b32 $0, 0;",
                                      "=r,l,l", [values_ptr + at, offsets_ptr + at], dtype=gl.int32,
                                      is_pure=False, pack=1)

    @gluon.jit
    def _stage_x(x_ptr, K: gl.constexpr, K_ALLOC: gl.constexpr, WORDS: gl.constexpr, XB: gl.constexpr,
                 layout: gl.constexpr, SINGLE: gl.constexpr = False):
        """x's K columns ([K, WORDS] int32 at x_ptr; SINGLE: one row, [K] fp16 bits as int16, each value zero-extended)
        copied into a [K_ALLOC, WORDS] shared buffer XB columns a step, then a barrier; returns the buffer."""
        x_s = gl.allocate_shared_memory(gl.int32, [K_ALLOC, WORDS], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        kk = gl.arange(0, XB, layout=gl.SliceLayout(1, layout))
        ww = gl.arange(0, WORDS, layout=gl.SliceLayout(0, layout))
        for kb in gl.static_range(K // XB):
            if SINGLE:      # x_ptr: int16 (fp16 bits)
                halves = x_ptr + gl.expand_dims(kb * XB + kk, 1) + gl.expand_dims(ww, 0)
                x_s.slice(kb * XB, XB, 0).store(gl.load(halves).to(gl.int32) & 0xFFFF)
            else:
                x_s.slice(kb * XB, XB, 0).store(gl.load(x_ptr + gl.expand_dims(kb * XB + kk, 1) * WORDS
                                                        + gl.expand_dims(ww, 0)))
        gl.barrier()
        return x_s

    @gluon.jit
    def _halves(words):
        """The two fp16 values of each int32 word (low half: x row 2w, high half: row 2w + 1) as float32."""
        return gl.inline_asm_elementwise(
            "{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }", "=f,=f,r",
            [words], dtype=(gl.float32, gl.float32), is_pure=True, pack=1)

    @gluon.jit
    def _low_half(words):
        """The fp16 value in each int32 word's low half as float32."""
        return gl.inline_asm_elementwise("{ .reg .b16 l, h; mov.b32 {l, h}, $1; cvt.f32.f16 $0, l; }", "=f,r",
                                         [words], dtype=gl.float32, is_pure=True, pack=1)

    @gluon.jit
    def _partner_rows(sums):
        """Each thread's value from the thread 8 lanes away (a row block's sums: row r ^ 1's)."""
        return gl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 8, 0x1f, 0xffffffff;", "=f,f", [sums],
                                         dtype=gl.float32, is_pure=True, pack=1)

    @gluon.jit
    def _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, c, chunks_per_row, limit, shift):
        """Chunk c of each thread's weight row: its 4 values as an int64, 4 offsets as an int32, the chunk's base
        less shift (its column in the x buffer it gathers from); all [T]; zeros from chunk `limit` on (value 0 adds
        nothing) or past the weight's rows."""
        ok = row_ok & (c < limit)
        at = rows * (chunks_per_row * 8) + c * 8 + lane
        value = gl.load(values_ptr + at, mask=ok, other=0)
        offset = gl.load(offsets_ptr + at, mask=ok, other=0)
        base = gl.load(bases_ptr + rows * chunks_per_row + c, mask=ok, other=shift) - shift
        return value, offset, base

    @gluon.jit
    def _gather_one(x_s, column, v, acc_lo, acc_hi, WORDS: gl.constexpr, word_layout: gl.constexpr,
                    SINGLE: gl.constexpr = False):
        index = gl.expand_dims(column, 1) + gl.zeros([column.shape[0], WORDS], gl.int32, word_layout)
        words = x_s.gather(index, 0)                                                          # [T, WORDS]
        vv = gl.expand_dims(v, 1)
        if SINGLE:                                # one row of x: acc_hi stays as it is
            return acc_lo + vv * _low_half(words), acc_hi
        lo, hi = _halves(words)
        return acc_lo + vv * lo, acc_hi + vv * hi

    @gluon.jit
    def _accumulate(x_s, value, offset, base, acc_lo, acc_hi, WORDS: gl.constexpr, word_layout: gl.constexpr,
                    SINGLE: gl.constexpr = False):
        """acc += value_j * x[:, column_j] for a thread's 4 entries, unpacked here from their loaded words."""
        v0, v1, v2, v3 = gl.inline_asm_elementwise(
            "{ .reg .b16 a, b, c, d; mov.b64 {a, b, c, d}, $4; cvt.f32.f16 $0, a; cvt.f32.f16 $1, b; "
            "cvt.f32.f16 $2, c; cvt.f32.f16 $3, d; }", "=f,=f,=f,=f,l",
            [value], dtype=(gl.float32,) * 4, is_pure=True, pack=1)
        v = (v0, v1, v2, v3)
        for j in gl.static_range(4):            # entry j's column: its base plus the offset in byte j
            acc_lo, acc_hi = _gather_one(x_s, base + ((offset >> (8 * j)) & 255), v[j], acc_lo, acc_hi, WORDS,
                                         word_layout, SINGLE)
        return acc_lo, acc_hi

    @gluon.jit
    def _row_sums(x_s, values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, group, first, limit, chunks_per_row,
                  shift, acc_lo, acc_hi, UNROLL: gl.constexpr, GROUPS: gl.constexpr, WORDS: gl.constexpr,
                  word_layout: gl.constexpr, SINGLE: gl.constexpr = False):
        """acc_lo, acc_hi ([T, WORDS], x rows 2w and 2w + 1) plus each thread's share of its weight row's products
        over chunks [first, limit), gathering x from x_s (bases less shift: scripts/exp_gluon_xshared.py holds x in
        two buffers). UNROLL sets of entries in flight (1, 2 or 4), each reloaded right after its use, so a load has
        the other sets' work to land in; warp group g takes chunks first + g, first + g + GROUPS, ..."""
        gl.static_assert((UNROLL == 1) or (UNROLL == 2) or (UNROLL == 4))
        a_value, a_offset, a_base = _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane,
                                                  first + group, chunks_per_row, limit, shift)
        if UNROLL >= 2:
            b_value, b_offset, b_base = _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane,
                                                      first + group + GROUPS, chunks_per_row, limit, shift)
        if UNROLL >= 4:
            c_value, c_offset, c_base = _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane,
                                                      first + group + 2 * GROUPS, chunks_per_row, limit, shift)
            d_value, d_offset, d_base = _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane,
                                                      first + group + 3 * GROUPS, chunks_per_row, limit, shift)
        STEP: gl.constexpr = UNROLL * GROUPS
        for c0 in range(first, limit, STEP):
            c = c0 + STEP + group              # the chunk each set loads next
            acc_lo, acc_hi = _accumulate(x_s, a_value, a_offset, a_base, acc_lo, acc_hi, WORDS, word_layout,
                                         SINGLE)
            a_value, a_offset, a_base = _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, c,
                                                      chunks_per_row, limit, shift)
            if UNROLL >= 2:
                acc_lo, acc_hi = _accumulate(x_s, b_value, b_offset, b_base, acc_lo, acc_hi, WORDS, word_layout,
                                             SINGLE)
                b_value, b_offset, b_base = _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane,
                                                          c + GROUPS, chunks_per_row, limit, shift)
            if UNROLL >= 4:
                acc_lo, acc_hi = _accumulate(x_s, c_value, c_offset, c_base, acc_lo, acc_hi, WORDS, word_layout,
                                             SINGLE)
                c_value, c_offset, c_base = _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane,
                                                          c + 2 * GROUPS, chunks_per_row, limit, shift)
                acc_lo, acc_hi = _accumulate(x_s, d_value, d_offset, d_base, acc_lo, acc_hi, WORDS, word_layout,
                                             SINGLE)
                d_value, d_offset, d_base = _load_entries(values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane,
                                                          c + 3 * GROUPS, chunks_per_row, limit, shift)
        return acc_lo, acc_hi

    @gluon.jit
    def _gate_and_up(sums_s, F: gl.constexpr, GATED: gl.constexpr, layout: gl.constexpr):
        """A row block's sums ([R, WORDS] in shared memory) as _finish's gate and up: when GATED the first F rows
        and the next F; otherwise all R rows as both (up unused)."""
        if GATED:
            gate = sums_s.slice(0, F, 0).load(layout)
            up = sums_s.slice(F, F, 0).load(layout)
        else:
            gate = sums_s.load(layout)
            up = gate
        return gate, up

    # activation.apply_activation re-jitted as a Gluon function: its tl operations are elementwise, so they keep the
    # layout of what they are given (all four activations compile)
    _activation = gluon.jit(apply_activation.fn)

    @gluon.jit
    def _finish(gate, up, first_feature, parity, first_x_row, bias_ptr, residual_ptr, out_ptr, M, N,
                WORDS: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_RESIDUAL: gl.constexpr, GATED: gl.constexpr,
                ACTIVATION: gl.constexpr, OUT_ROWS: gl.constexpr, PAIRED: gl.constexpr = False):
        """Sums gate (and up when GATED) [F, WORDS] float32 of features first_feature.. for x rows
        first_x_row + 2w + parity: + bias, act(gate) * up, + residual (row-major [M, N]), stored into
        out [M, N] (OUT_ROWS > 1: interleaved by blocks of OUT_ROWS rows, _common.out_offsets). PAIRED: gate and
        up are [2F, WORDS], row 2f holding feature first_feature + f (odd rows are not stored)."""
        layout: gl.constexpr = gate.type.layout
        slots = gl.arange(0, gate.shape[0], layout=gl.SliceLayout(1, layout))
        features = first_feature + (slots // 2 if PAIRED else slots)                                 # [F]
        x_rows = first_x_row + 2 * gl.arange(0, WORDS, layout=gl.SliceLayout(0, layout)) + parity
        feature = gl.expand_dims(features, 1)                                                        # [F, 1]
        x_row = gl.expand_dims(x_rows, 0)                                                            # [1, WORDS]
        mask = (feature < N) & (x_row < M)
        if PAIRED:
            mask = mask & (gl.expand_dims(slots, 1) % 2 == 0)
        if HAS_BIAS:
            gate += gl.load(bias_ptr + feature, mask=feature < N, other=0.0).to(gl.float32)
            if GATED:
                up += gl.load(bias_ptr + N + feature, mask=feature < N, other=0.0).to(gl.float32)
        if GATED:
            gate = _activation(gate, ACTIVATION) * up
        if HAS_RESIDUAL:
            gate += gl.load(residual_ptr + x_row * N + feature, mask=mask, other=0.0).to(gl.float32)
        if OUT_ROWS == 1:
            at = x_row * N + feature
        else:
            at = (x_row // OUT_ROWS) * (N * OUT_ROWS) + feature * OUT_ROWS + x_row % OUT_ROWS
        gl.store(out_ptr + at, gate.to(gl.float16), mask=mask)

    @gluon.jit
    def chunked_csr_xshared_kernel(
        x_ptr,              # [cdiv(M, 2 * WORDS), K, WORDS] int32: x interleaved (a column's rows side by side,
                            # fp16 pairs), as interleave_rows writes it or x's producer does (OUT_ROWS); SINGLE:
                            # [M, K] fp16, rows contiguous, a row a row group
        values_ptr,         # [N_w, chunks_per_row * 8] int64: the chunked-CSR fp16 values, four a word
        offsets_ptr,        # [N_w, chunks_per_row * 8] int32: the uint8 offsets, four a word
        bases_ptr,          # [N_w, chunks_per_row] int32: each chunk's first column
        bias_ptr,           # [N_w] fp16 (read only when HAS_BIAS)
        residual_ptr,       # [M, N] fp16 added last (read only when HAS_RESIDUAL)
        out_ptr,            # [M, N] fp16, contiguous (interleaved: OUT_ROWS)
        M, N,               # rows of x, output features (the weight has N_w = 2N rows when GATED)
        chunks_per_row,     # chunks of every weight row
        row_blocks,         # xshared_row_blocks
        K: gl.constexpr, K_ALLOC: gl.constexpr,  # x's columns, and the power of two its buffer takes
        WORDS: gl.constexpr,                     # int32 words a column of x (xshared_words: 1, 1, 2 or 4)
        SINGLE: gl.constexpr,                    # one row of x (M = 1): x_ptr is x's [K] fp16
        XB: gl.constexpr,                        # columns of x staged a step (divides K)
        WARPS: gl.constexpr,                     # warps a program (the launch's num_warps)
        GROUPS: gl.constexpr,                    # warp groups sharing a row block's chunks
        UNROLL: gl.constexpr,                    # chunks' entries in flight a thread (1, 2 or 4)
        HAS_BIAS: gl.constexpr, HAS_RESIDUAL: gl.constexpr, GATED: gl.constexpr, ACTIVATION: gl.constexpr,
        OUT_ROWS: gl.constexpr,                  # > 1: out interleaved by blocks of OUT_ROWS rows
        DIRECT: gl.constexpr,                    # sums to the epilogue from registers (GROUPS == 1)
        EARLY: gl.constexpr = 0,                 # first chunks a row asked of L2 before x's copy (0: none)
        GRID_DEPENDENCY: gl.constexpr = False,   # launched as a programmatic dependent
    ):
        """Grid (xshared_grid, cdiv(M, rows)): programs loop over row blocks of R = WARPS * 32 / (8 * GROUPS)
        weight rows (when GATED: R / 2 features' gate rows, then the same features' up rows; with DIRECT each
        feature's gate and up rows side by side)."""
        row_group = gl.program_id(1)
        T: gl.constexpr = WARPS * 32
        R: gl.constexpr = T // (8 * GROUPS)
        F: gl.constexpr = R // 2 if GATED else R                                         # features a row block
        word_layout: gl.constexpr = gl.BlockedLayout([1, WORDS], [32, 1], [WARPS, 1], [1, 0])    # [T, WORDS]
        thread_layout: gl.constexpr = gl.SliceLayout(1, word_layout)                             # [T]
        sums_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        t = gl.arange(0, T, layout=thread_layout)
        lane = t % 8
        group = t // (T // GROUPS)               # warp-uniform
        slot = (t % (T // GROUPS)) // 8          # the thread's weight row within the block
        if EARLY:
            first_rows, _ = _block_rows_of(gl.program_id(0), slot, F, N, GATED, DIRECT)
            _ask_l2_for_first_chunks(values_ptr, offsets_ptr, first_rows, lane, chunks_per_row, EARLY)
        _grid_dependency_wait(GRID_DEPENDENCY, row_group)
        # x's row group: K * WORDS words from a compile-time multiple, so the copy loads 16 bytes a thread (a runtime
        # stride here cost 20-25% at 8 rows on an H100); one row: K fp16 values a row, rows contiguous
        if SINGLE:
            first_x_row = row_group
            x_s = _stage_x(x_ptr.to(gl.pointer_type(gl.int16)) + row_group * K, K, K_ALLOC, WORDS, XB, word_layout,
                           SINGLE)
        else:
            first_x_row = row_group * (2 * WORDS)
            x_s = _stage_x(x_ptr + row_group * (K * WORDS), K, K_ALLOC, WORDS, XB, word_layout, SINGLE)
        lo_s = gl.allocate_shared_memory(gl.float32, [R, WORDS], sums_layout)
        hi_s = gl.allocate_shared_memory(gl.float32, [R, WORDS], sums_layout)
        for rb in range(gl.program_id(0), row_blocks, gl.num_programs(0)):
            rows, row_ok = _block_rows_of(rb, slot, F, N, GATED, DIRECT)
            acc_lo, acc_hi = _row_sums(x_s, values_ptr, offsets_ptr, bases_ptr, rows, row_ok, lane, group, 0,
                                       chunks_per_row, chunks_per_row, 0,
                                       gl.zeros([T, WORDS], gl.float32, word_layout),
                                       gl.zeros([T, WORDS], gl.float32, word_layout), UNROLL, GROUPS, WORDS,
                                       word_layout, SINGLE)
            if DIRECT:
                gl.static_assert(GROUPS == 1)
                # a row's sums over the 8 threads of its chunk, in registers (warp shuffles), to the epilogue; gated:
                # each even row (gate) takes its odd neighbour's (up) from 8 lanes away
                lo = gl.sum(gl.reshape(acc_lo, [R, 8, WORDS]), axis=1)
                _finish(lo, _partner_rows(lo) if GATED else lo, rb * F, 0, first_x_row, bias_ptr, residual_ptr,
                        out_ptr, M, N, WORDS, HAS_BIAS, HAS_RESIDUAL, GATED, ACTIVATION, OUT_ROWS, GATED)
                if not SINGLE:
                    hi = gl.sum(gl.reshape(acc_hi, [R, 8, WORDS]), axis=1)
                    _finish(hi, _partner_rows(hi) if GATED else hi, rb * F, 1, first_x_row, bias_ptr, residual_ptr,
                            out_ptr, M, N, WORDS, HAS_BIAS, HAS_RESIDUAL, GATED, ACTIVATION, OUT_ROWS, GATED)
            else:
                # a row's sums: over the 8 threads of its chunk and over the warp groups, through shared memory into
                # the epilogue's layout (gate rows then up rows)
                lo_s.store(gl.sum(gl.sum(gl.reshape(acc_lo, [GROUPS, R, 8, WORDS]), axis=2), axis=0))
                if not SINGLE:
                    hi_s.store(gl.sum(gl.sum(gl.reshape(acc_hi, [GROUPS, R, 8, WORDS]), axis=2), axis=0))
                gl.barrier()
                gate, up = _gate_and_up(lo_s, F, GATED, word_layout)
                _finish(gate, up, rb * F, 0, first_x_row, bias_ptr, residual_ptr, out_ptr, M, N, WORDS, HAS_BIAS,
                        HAS_RESIDUAL, GATED, ACTIVATION, OUT_ROWS)
                if not SINGLE:
                    gate, up = _gate_and_up(hi_s, F, GATED, word_layout)
                    _finish(gate, up, rb * F, 1, first_x_row, bias_ptr, residual_ptr, out_ptr, M, N, WORDS, HAS_BIAS,
                            HAS_RESIDUAL, GATED, ACTIVATION, OUT_ROWS)
                gl.barrier()                        # the sums buffers are free for the next row block
        _let_next_start(GRID_DEPENDENCY, row_group)
else:
    chunked_csr_xshared_kernel = None
