"""The sparse half of the heuristic dataflow: for a pruned linear, dense or which sparse encoding, and which
sparse kernel per row bucket (Flash-LLM's "load as sparse, compute as dense", DESIGN.md §6).

A sparse kernel streams the encoded bytes instead of the dense weight, and pays to rebuild each tile on chip:
per weight position a few integer operations (bitmap: a bit test and a prefix count; Tiled-CSL: a scatter
into an L2-resident scratch tile, zeroing and re-reading it). The cost model is a roofline over three
resources — memory bandwidth, integer throughput (tile decode, repeated for every block of rows), and the
multiply (CUDA cores for a few rows, tensor cores above) — plus the launch. Chunked CSR rebuilds nothing:
its kernel pays per stored entry and group of up to 8 rows of x (one gather of the group's values at the
entry's column, and a multiply-add per row), so its cost grows with the nonzeros and with M rather than with
the positions. The layer takes the encoding
whose total cost over the decode batch buckets is lowest, dense included: where sparse loses, the layer
stays dense. One encoding per layer is stored; each row bucket then gets that encoding's cheaper kernel.
"""

from __future__ import annotations

import math

from fdpp.codegen.kernels import chunked_csr_xshared as xshared_kernel
from fdpp.compiler.errors import CompileError
from fdpp.runtime.schema import KernelChoice
from fdpp.runtime.sparse_formats import CHUNKED_CSR_CHUNK, TILED_CSL_TILE, chunked_csr_chunks, encoded_bytes

# Fraction of bandwidth reached, and integer instructions per weight position to rebuild a tile, per kernel.
# Fitted to H200 runs of scripts/bench_sparse.py (docs/perf/2026-11-22-h200-sparse.md, and for the bitmap
# kernels the pipelined PTX gather of docs/perf/2026-11-22-h200-bitmap-pipelined.md): at M = 1 the bitmap
# CUDA-core kernel rebuilds ~1.1 M positions/us and the Tiled-CSL one ~0.7 M/us whatever the sparsity
# (50-90%), and the tensor-core kernels ~0.7 M/us per 16-row block: the decode, not the bytes, sets
# their time, which is why on an H200 they lose to dense cuBLAS everywhere (0.29-0.72x).
SPARSE_EFFICIENCY = {
    "bitmap": {"bandwidth": 0.60, "decode_ops": {"gemv": 13.5, "gemm": 21.0}},
    "tiled_csl": {"bandwidth": 0.50, "decode_ops": {"gemv": 22.0, "gemm": 25.0}},
}
# Chunked CSR: 66% of the bandwidth at M = 1 (H200, docs/perf/2026-11-22-h200-chunked-csr.md and -interleaved.md);
# issue slots per stored entry for a group of R rows of x gathered together (R = 1: ~11.5, 1.45 M entries/us on
# the H200; R = 2, 4, 8 refitted to an H100's run of the kernel as bundles launch it, x written interleaved by
# its producer, docs/perf/2026-12-06-ccsr-densified-prefill.md: the groups load every row of a column at once,
# then convert and multiply each), and for R > 1 what x's producer pays to write x interleaved
# (passes/interleave_sparse_inputs.py; an H100's RMSNorm over [R, 4096], measured in
# docs/perf/2026-12-06-ccsr-producer-interleave.md), which replaced a separate interleave launch of 2.2-2.5 us.
# An approximation: where the producer cannot write it so (o_proj's prefill, a norm with several readers), that
# launch still runs.
# For many rows (prefill) chunked_csr_gemm writes the weight out dense and multiplies on tensor cores. Fitted to
# the same H100 run (Llama-2-7B's shapes, 16-512 rows): writing the dense copy takes its bytes at 68% of the
# bandwidth plus ~10.5 us per 1,000 columns (one program walks each row: K, not N, sets how long the last
# programs run), and the GEMM over it reaches ~40% of the tensor-core peak.
# The bandwidth fraction differs by GPU: an H100 streams the entries at ~80% of its datasheet bandwidth at M = 1-2
# (median over the four shapes at 50% and 70% sparsity, docs/perf/2026-12-06-ccsr-producer-interleave.md's table;
# with 0.66 the model put the kernel 11-30% over its measured time and kept 50%-sparse layers dense that run
# 1.25-1.34x faster than cuBLAS at M = 1), the H200 at the 66% it was fitted to. Unmeasured targets take 0.66.
# chunked_csr_xshared (x staged in shared memory, 4 or 8 rows gathered together; codegen/kernels/
# chunked_csr_xshared.py): issue slots per stored entry fitted to the bundle kernel's H100 runs with the entries
# bank-spread (docs/perf/2026-12-07-xshared-bundles.md, Llama-2-7B's shapes at 70%), 12% more where x's buffer
# leaves room for one program a multiprocessor (down_proj at 4 rows, 128 KB), plus each program's copy of x into
# shared memory at ~100 GB/s a multiprocessor (one wave of programs assumed). Not refitted since q/k/v's and gate/up's
# sums come from registers (at 8 rows q/k/v 25.7-25.9 against 30.5 us, docs/perf/2026-12-07-xshared-few-rows.md;
# gate/up 48.1 against 55.5, docs/perf/2026-12-07-gated-direct.md): the model (29.0 and 48.0 us) now overstates q/k/v
# at 8 rows by ~13% and fits gate/up, and it picks this kernel for both there already.
CHUNKED_CSR_EFFICIENCY = {"bandwidth": 0.66, "bandwidth_by_target": {"h100": 0.80},
                          "ops_per_entry": {1: 11.5, 2: 20.0, 4: 24.0, 8: 34.0},
                          "xshared_ops_per_entry": {4: 21.5, 8: 25.5}, "xshared_lone_program": 1.12,
                          "xshared_stage_gbs": 100.0,
                          "interleave_us": {2: 0.3, 4: 0.65, 8: 1.4}, "densify_bandwidth": 0.68,
                          "densify_us_per_kilo_column": 10.5, "densified_gemm_compute": 0.4}
# Targets chunked_csr_xshared is offered for: the Hopper GPUs its design was measured on (an H100); other NVIDIA
# archs have the instructions but their shared memory and issue rates are unmeasured for it.
XSHARED_ARCHS = ("sm_90",)
# AMD (unmeasured): the datasheet fp32 peak counts packed dual-issue FMAs, which integer ops do not get, and
# Triton 3.6's HIP device library has no popcount, so the bitmap kernel counts bits with ~12 more ops.
HIP_SWAR_POPCOUNT_OPS = 12.0
# A layer is stored sparse only if that saves at least this fraction of its summed decode cost: the sum
# leaves out prefill, where the CUDA-core sparse kernels are far slower than dense tensor cores.
SPARSE_MIN_GAIN = 0.10
GEMV_MAX_ROWS = 4                  # the CUDA-core sparse kernels are offered up to this many rows
TENSOR_BLOCK_M = 16                # rows per program of the tensor-core sparse kernels
LAUNCH_US = 3.0


def bitmap_tile(k: int) -> tuple[int, int]:
    """16 rows (enough programs at M = 1 for N >= 2048) by the longest of 256/128/64 columns dividing K
    (SmolLM2's K = 576 takes 64 rather than padding to 768)."""
    for cols in (256, 128, 64):
        if k % cols == 0:
            return 16, cols
    return 16, 64


def int_ops_per_us(target) -> float:
    """Integer instructions per microsecond the whole GPU issues: NVIDIA's int32 rate is half its fp32 lanes;
    AMD's datasheet fp32 peak is doubled by packed math integers do not get."""
    return target.vector_tflops_fp32 * 1e6 / (4 if target.vendor == "cuda" else 8)


def sparse_tile(fmt: str, k: int, density: float) -> tuple[int, int]:
    """The tile a format is encoded with (chunked CSR: the expected chunks per row, and the chunk)."""
    if fmt == "tiled_csl":
        return TILED_CSL_TILE
    if fmt == "chunked_csr":
        return chunked_csr_chunks(k, density), CHUNKED_CSR_CHUNK
    return bitmap_tile(k)


def _chunked_csr_memory_us(m: int, n: int, k: int, density: float, target, value_bytes: int) -> float:
    """Microseconds a CUDA-core chunked-CSR kernel takes to stream the entries, x and the output."""
    eff = CHUNKED_CSR_EFFICIENCY
    tile = sparse_tile("chunked_csr", k, density)
    moved = encoded_bytes("chunked_csr", (n, k), density, tile, value_bytes) + value_bytes * (m * k + m * n)
    bandwidth = eff["bandwidth_by_target"].get(target.name, eff["bandwidth"])
    return moved / (target.memory_bandwidth_gbs * 1e3 * bandwidth)


def chunked_csr_cost_us(m: int, n: int, k: int, density: float, target, value_bytes: int = 2) -> float:
    """Microseconds of the chunked-CSR kernel: streaming the entries, or gathering x for each entry and group
    of rows (as many as default_chunked_csr_config gathers together: up to 8)."""
    eff = CHUNKED_CSR_EFFICIENCY
    chunks, chunk = sparse_tile("chunked_csr", k, density)
    memory_us = _chunked_csr_memory_us(m, n, k, density, target, value_bytes)
    together = min(1 << (m - 1).bit_length(), 8)
    groups = math.ceil(m / together)
    gather_us = groups * n * chunks * chunk * eff["ops_per_entry"][together] / int_ops_per_us(target)
    interleave_us = eff["interleave_us"][together] if together > 1 else 0.0
    return max(memory_us, gather_us) + interleave_us + LAUNCH_US


def xshared_offered(m: int, k: int, dtype: str, target) -> bool:
    """Whether chunked_csr_xshared is a candidate at m rows: 3-8 rows (gathered as 4 or 8; at 1-2 rows it measured
    no faster than the L1 kernel on an H100, docs/perf/2026-12-07-xshared-few-rows.md), float16, a target of
    XSHARED_ARCHS whose shared memory holds x, and a compiling Triton whose Gluon has the shared-memory gather."""
    return (xshared_kernel.GLUON_SHARED_GATHER and 3 <= m <= 8 and dtype == "float16" and target.vendor == "cuda"
            and target.arch in XSHARED_ARCHS
            and xshared_kernel.xshared_fits(k, xshared_kernel.xshared_rows(m),
                                            target.shared_memory_per_block_kb << 10))


def xshared_cost_us(m: int, n: int, k: int, density: float, target, value_bytes: int = 2) -> float:
    """Microseconds of chunked_csr_xshared: streaming the entries, or gathering x from shared memory for each entry
    (4 or 8 rows at once), plus each program's copy of x into shared memory."""
    eff = CHUNKED_CSR_EFFICIENCY
    chunks, chunk = sparse_tile("chunked_csr", k, density)
    together = xshared_kernel.xshared_rows(m)
    gather_us = n * chunks * chunk * eff["xshared_ops_per_entry"][together] / int_ops_per_us(target)
    if 2 * xshared_kernel.xshared_x_bytes(k, together) > target.shared_memory_per_block_kb << 10:   # one program
        gather_us *= eff["xshared_lone_program"]                                                     # an SM
    stage_us = value_bytes * k * together / (eff["xshared_stage_gbs"] * 1e3)
    memory_us = _chunked_csr_memory_us(m, n, k, density, target, value_bytes)
    return max(memory_us, gather_us) + stage_us + eff["interleave_us"][together] + LAUNCH_US


def densified_gemm_cost_us(m: int, n: int, k: int, density: float, target, value_bytes: int = 2) -> float:
    """Microseconds of chunked_csr_gemm: writing the weight out dense (the encoding read, the dense bytes
    written, and a term per column for the row-walking programs), then a tensor-core GEMM over it (the dense
    weight and x read, out written, or the math)."""
    eff = CHUNKED_CSR_EFFICIENCY
    tile = sparse_tile("chunked_csr", k, density)
    dense_bytes = value_bytes * n * k
    densify_us = (encoded_bytes("chunked_csr", (n, k), density, tile, value_bytes) + dense_bytes) / \
        (target.memory_bandwidth_gbs * 1e3 * eff["densify_bandwidth"]) + eff["densify_us_per_kilo_column"] * k / 1e3
    gemm_memory_us = (dense_bytes + value_bytes * (m * k + m * n)) / (target.memory_bandwidth_gbs * 1e3 * 0.75)
    gemm_compute_us = 2 * m * n * k / (target.tensor_tflops_fp16 * 1e6 * eff["densified_gemm_compute"])
    return densify_us + max(gemm_memory_us, gemm_compute_us) + 2 * LAUNCH_US


def sparse_cost_us(fmt: str, kernel: str, m: int, n: int, k: int, density: float, target,
                   value_bytes: int = 2) -> float:
    if kernel == "chunked_csr_gemm":
        return densified_gemm_cost_us(m, n, k, density, target, value_bytes)
    if kernel == "chunked_csr_xshared":
        return xshared_cost_us(m, n, k, density, target, value_bytes)
    if fmt == "chunked_csr":
        return chunked_csr_cost_us(m, n, k, density, target, value_bytes)
    eff = SPARSE_EFFICIENCY[fmt]
    tile = sparse_tile(fmt, k, density)
    moved = encoded_bytes(fmt, (n, k), density, tile, value_bytes) + value_bytes * (m * k + m * n)
    memory_us = moved / (target.memory_bandwidth_gbs * 1e3 * eff["bandwidth"])
    path = "gemv" if kernel.endswith("gemv") else "gemm"
    # the CUDA-core kernel decodes once for all its rows (each row adds ~1/8 for its products); the
    # tensor-core one decodes again for every block of 16 rows
    repeats = 1 + (m - 1) / 8 if path == "gemv" else math.ceil(m / TENSOR_BLOCK_M)
    ops = eff["decode_ops"][path] + (HIP_SWAR_POPCOUNT_OPS if fmt == "bitmap" and target.vendor == "hip" else 0)
    decode_us = repeats * n * k * ops / int_ops_per_us(target)
    if path == "gemv":
        compute_us = 2 * m * n * k / (target.vector_tflops_fp32 * 1e6 * 0.6)
    else:
        compute_us = 2 * repeats * TENSOR_BLOCK_M * n * k / (target.tensor_tflops_fp16 * 1e6 * 0.5)
    return max(memory_us, decode_us + compute_us) + LAUNCH_US


def _sparse_kernels(fmt: str, m: int, n: int, k: int, density: float, target, dtype: str) -> dict[str, float]:
    value_bytes = 4 if dtype == "float32" else 2
    if fmt == "chunked_csr":    # CUDA cores over the encoding (x from L1 or shared memory), or tensor cores over a
        # dense copy written first
        kernels = ["chunked_csr_gemv", "chunked_csr_gemm"]
        if xshared_offered(m, k, dtype, target):
            kernels.append("chunked_csr_xshared")
        return {kernel: sparse_cost_us(fmt, kernel, m, n, k, density, target, value_bytes) for kernel in kernels}
    kernels = {f"{fmt}_gemm": sparse_cost_us(fmt, f"{fmt}_gemm", m, n, k, density, target, value_bytes)}
    if m <= GEMV_MAX_ROWS:
        kernels[f"{fmt}_gemv"] = sparse_cost_us(fmt, f"{fmt}_gemv", m, n, k, density, target, value_bytes)
    return kernels


CHUNKED_CSR_CUDA_CORE_KERNELS = ("chunked_csr_gemv", "chunked_csr_xshared")   # gather x by rows together


def rows_free(kernel: str) -> bool:
    """Whether a kernel's launch is the same for every row count of a merged bucket range (not the CUDA-core
    chunked-CSR kernels', whose rows per program follow the bucket)."""
    return kernel not in CHUNKED_CSR_CUDA_CORE_KERNELS


MEASURED_DENSITY_SLACK = 0.05     # a profile's sparse config stands for layers within this density of its own
# A measured config replaces the wrapper's default only if it beat the default by more than this in the tune: the
# down projection's config won by 2.8% on one H100 (0.6% on another) and ran 3.5% slower in the model step
# (docs/perf/2026-12-07-ccsr-tune.md), while o_proj's and gate/up's wins of 5.0-5.9% held there.
MIN_CONFIG_GAIN = 0.04


def measured_sparse_config(profile: dict | None, fmt: str, n: int, k: int, gated: bool, density: float,
                           m: int) -> dict | None:
    """The profile's sparse entry (`fdcc tune --sparsity`) for format fmt, weight [N, K] (gated: stacked gate/up),
    exactly m rows, measured at the density nearest this layer's and within MEASURED_DENSITY_SLACK; else None."""
    near = [e for e in (profile or {}).get("sparse_entries", [])
            if (e["format"], e["n"], e["k"], e.get("gated", False), e["m"]) == (fmt, n, k, gated, m)
            and abs(e["density"] - density) <= MEASURED_DENSITY_SLACK]
    return min(near, key=lambda e: abs(e["density"] - density)) if near else None


def measured_time_and_config(entry: dict) -> tuple[float, dict, bool]:
    """(microseconds, config, whether the measured config is kept) of a profile's sparse entry: its best config,
    unless the wrapper's default (the entry's default_us, when recorded) came within MIN_CONFIG_GAIN of it; then
    the default's time and config ({}: the wrapper decides)."""
    default_us = entry.get("default_us")
    if default_us is not None and default_us <= entry["us"] * (1 + MIN_CONFIG_GAIN):
        return default_us, {}, False
    return entry["us"], dict(entry["config"]), True


def choose_sparse_linear(n: int, k: int, density: float, dtype: str, forced: str, row_buckets: list[int],
                         decode_buckets: tuple[int, ...], target, dense_cost, epilogue: bool = False,
                         measured=None, gpu: str = "") -> dict:
    """The encoding of one pruned weight [N, K] and its kernel per row bucket.

    forced: "auto", or a format ("bitmap", "tiled_csl", "chunked_csr", "dense") to use whatever the costs.
    epilogue: the linear has a gated or residual epilogue, which only dense and chunked CSR have.
    dense_cost(m) -> microseconds of the best dense kernel at m rows.
    measured(fmt, m) -> a profile's sparse entry (measured_sparse_config) or None: where one exists, its time
    replaces the cost model's for the CUDA-core chunked-CSR kernel at m rows (in the format's total, the kernel
    choice and the expected speedup; chunked_csr_xshared's modelled time is scaled by the same measured/modelled
    ratio), and its config replaces the wrapper's default in that choice unless the
    default measured within MIN_CONFIG_GAIN of it (measured_time_and_config); gpu names the profile's GPU in the
    reason.
    Returns {"format", "tile", "choices" (KernelChoices; empty for dense), "expected_speedup" (decode, batch 1),
    "costs" (per format, summed over the decode buckets)}.
    """
    value_bytes = 4 if dtype == "float32" else 2
    formats = ["chunked_csr"] if epilogue else ["bitmap", "chunked_csr"] + (["tiled_csl"] if value_bytes == 2 else [])
    if forced not in ("auto", "dense", *formats):
        raise CompileError(f"--sparse-format {forced}: its kernels have no gated or residual epilogue, which this "
                           f"linear has; use auto, chunked_csr or dense")

    def kernel_costs(fmt: str, m: int) -> tuple[dict[str, float], dict | None]:
        costs = _sparse_kernels(fmt, m, n, k, density, target, dtype)
        entry = measured(fmt, m) if measured and "chunked_csr_gemv" in costs else None
        if entry:
            modelled = costs["chunked_csr_gemv"]
            costs["chunked_csr_gemv"] = measured_time_and_config(entry)[0]
            if "chunked_csr_xshared" in costs:     # unmeasured by the profile: scaled as the model has it against
                # the L1 kernel, so both stand on the profile's (graph-replay) timing rather than the model's launch
                costs["chunked_csr_xshared"] *= costs["chunked_csr_gemv"] / modelled
        return costs, entry

    total = {"dense": sum(dense_cost(m) for m in decode_buckets)}
    for fmt in formats:
        total[fmt] = sum(min(kernel_costs(fmt, m)[0].values()) for m in decode_buckets)
    best = min(total, key=total.get)
    if best != "dense" and total[best] > (1 - SPARSE_MIN_GAIN) * total["dense"]:
        best = "dense"
    chosen = best if forced == "auto" else forced
    result = {"format": chosen, "costs": {f: round(us, 2) for f, us in total.items()}, "choices": (),
              "tile": None, "expected_speedup": 1.0}
    if chosen == "dense":
        return result
    result["tile"] = list(sparse_tile(chosen, k, density))
    result["expected_speedup"] = round(dense_cost(1) / min(kernel_costs(chosen, 1)[0].values()), 2)
    choices: list[KernelChoice] = []
    for m in row_buckets:
        costs, entry = kernel_costs(chosen, m)
        best = min(costs, key=costs.get)
        entry = entry if best == "chunked_csr_gemv" else None
        reason = (f"{'forced ' if forced != 'auto' else ''}{chosen} at density {density:.3f}: "
                  + ", ".join(f"{name} {us:.1f}us" for name, us in costs.items()) + f", dense {dense_cost(m):.1f}us")
        # the persistent grid of chunked_csr_xshared is sized by the target's multiprocessors
        config = {"multiprocessors": target.multiprocessors} if best == "chunked_csr_xshared" else {}
        if entry:
            _, config, kept = measured_time_and_config(entry)
            reason = (f"profile ({gpu}, chunked_csr_gemv measured at density {entry['density']:.3f}"
                      f"{'' if kept else ', default config within the noise of the best'}): {reason}")
        # buckets with one kernel share a choice, except chunked CSR's: its rows per program follow the bucket
        if choices and choices[-1].kernel == best and rows_free(best):
            choices[-1] = KernelChoice(m, best, {}, choices[-1].reason)
        else:
            choices.append(KernelChoice(m, best, config, reason))
    result["choices"] = tuple(choices)
    return result
