"""GPU benchmark: fdpp's sparse linear kernels (bitmap, Tiled-CSL) against cuBLAS and fdpp's dense kernels.

Llama-2-7B's four linear shapes, decode batch sizes M and unstructured sparsities: random float16 weights
pruned by magnitude per row, encoded in both formats (runtime/sparse_formats.py). Each candidate kernel
config is first checked against a float64 product with the dense weight (relative error < 2e-3), then
timed over rotating copies of its weights (together > ROTATE_BYTES, so weights come from DRAM as in a real
forward pass): each repeat queues a GPU sleep longer than queueing the calls takes, then one call per copy
between two CUDA events, so the launches hide behind the sleep and the events time the kernels back to
back; the median over repeats. Reported per shape, M, sparsity and format: the best config, its time,
encoded bytes, % of the measured device copy bandwidth (encoded bytes + x + out over the time), and
speedup against cuBLAS and against fdpp's best dense kernel (gemv / flat GEMM) on the dense weight.

    python scripts/bench_sparse.py --out $OUT/sparse                   # H200: the full run, ~5 minutes
    TRITON_INTERPRET=1 python scripts/bench_sparse.py --dry-run --out /tmp/sparse   # CPU: tiny sizes
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from fdpp.compiler.bench import copy_bandwidth_gbs
from fdpp.compiler.tune import magnitude_pruned
from fdpp.codegen.kernels.linear import gemm, gemv
from fdpp.codegen.kernels.sparse_linear import default_num_warps, default_split_k, sparse_linear
from fdpp.passes.select_kernels import flat_gemm_config
from fdpp.runtime.sparse_formats import (TILED_CSL_TILE, SparseWeight, encode_bitmap, encode_chunked_csr,
                                         encode_tiled_csl)

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}
MS = (1, 2, 4, 8, 16, 32, 64)
SPARSITIES = (0.5, 0.7, 0.8, 0.9)
BITMAP_TILES = ((8, 128), (16, 64), (16, 128), (16, 256), (32, 256))
CUDA_CORE_MAX_M = 8               # CUDA-core sparse kernels are tried up to this M
ROTATE_BYTES = 256 << 20          # each candidate's weight copies total at least this (H200 L2: 60 MB)
MAX_COPIES = 16
REPEATS = 20
MAX_ERROR = 2e-3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # cpu: a dry run under TRITON_INTERPRET=1


def time_us(calls: list) -> float:
    """Median microseconds of one call, calls[i] reading the i-th weight copy (see the module docstring)."""
    if DEVICE == "cpu":
        start = time.perf_counter()
        calls[0]()
        return (time.perf_counter() - start) * 1e6
    for call in calls:
        call()                                                  # compile, allocate
    torch.cuda.synchronize()
    enqueue = time.perf_counter()
    for call in calls:
        call()
    enqueue = time.perf_counter() - enqueue
    torch.cuda.synchronize()
    # the sleep must outlast queueing the calls (Python launches cost tens of microseconds), or the
    # events would time the host: three times the measured queueing, at <= 2 GHz
    sleep_cycles = int(3 * enqueue * 2e9) + 100_000
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(sleep_cycles)
        start.record()
        for call in calls:
            call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def pruned_weight(n: int, k: int, sparsity: float, seed: int) -> torch.Tensor:
    """Random float16 [N, K] (scaled like a trained layer) with the smallest |w| of each row zeroed, on DEVICE."""
    return magnitude_pruned(n, k, sparsity, torch.float16, seed, device=DEVICE)


def copies(tensors: dict[str, torch.Tensor], nbytes: int) -> list[dict[str, torch.Tensor]]:
    """The tensors themselves and clones of them, together >= ROTATE_BYTES (one set on the CPU)."""
    count = 1 if DEVICE == "cpu" else max(2, min(MAX_COPIES, -(-ROTATE_BYTES // max(nbytes, 1))))
    return [tensors] + [{name: t.clone() for name, t in tensors.items()} for _ in range(count - 1)]


def dense_and_chunked_csr(n: int, k: int, sparsity: float, seed: int = 1):
    """A pruned weight (pruned_weight), its rotating copies as {"w": weight} sets, its chunked-CSR encoding, and
    rotating copies of the encoding's tensors: what the chunked-CSR benchmarks time against cuBLAS."""
    weight = pruned_weight(n, k, sparsity, seed)
    csr = encode_chunked_csr(weight)
    return weight, copies({"w": weight}, weight.numel() * 2), csr, copies(csr.tensors, csr.nbytes)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def checked_time_us(run, weight_sets: list, ref: torch.Tensor, what) -> float:
    """Median microseconds of run(weight set) over the rotating sets (time_us), after checking run(the first set)
    against the float64 reference; AssertionError naming `what` past MAX_ERROR."""
    error = relative_error(run(weight_sets[0]), ref)
    assert error < MAX_ERROR, (what, error)
    return time_us([lambda t=t: run(t) for t in weight_sets])


def sparse_configs(fmt: str, m: int, n: int, k: int, tiles: tuple, options) -> list[dict]:
    """Candidate configs of one format at M rows (a few: the budget is minutes). Per tile and kernel: the
    wrappers' default warps and split (or --warps / --splits), and half that split."""
    tensor_block = min(triton.next_power_of_2(max(m, 16)), 64)
    kernels = ([{"tensor_cores": False, "block_m": min(triton.next_power_of_2(m), 4)}] if m <= CUDA_CORE_MAX_M
               else []) + [{"tensor_cores": True, "block_m": tensor_block}]
    layouts = ([{"tile": tile} for tile in tiles] if fmt == "bitmap"
               else [{"entry_chunk": chunk} for chunk in options.entry_chunks])
    configs = []
    for kernel, layout in itertools.product(kernels, layouts):
        tile = layout.get("tile", TILED_CSL_TILE)
        if fmt == "bitmap" and kernel["tensor_cores"] and (tile[0] < 16 or tile[1] < 128):
            continue                                    # too little work per tile for tl.dot
        for warps in options.warps or [default_num_warps(tile, kernel["tensor_cores"])]:
            split = default_split_k(-(-n // tile[0]), -(-k // tile[1]), warps)
            for split_k in options.splits or sorted({max(1, split // 2), split}):
                configs.append({**layout, **kernel, "split_k": split_k, "num_warps": warps})
    return configs


def dense_candidates(m: int, n: int, k: int) -> dict[str, tuple]:
    """fdpp's dense kernels at their compiled defaults (codegen/launch_specs.py, select_kernels)."""
    block_m = min(triton.next_power_of_2(m), 8)
    gemv_cfg = {"block_m": block_m, "block_n": 4, "block_k": max(128, 1024 // block_m),
                "num_warps": 4 if block_m == 1 else 2}
    gemm_cfg = {"block_m": 16, **flat_gemm_config(n, k)}          # the flat GEMM pads M to 16 at any M
    candidates = {"gemm " + json.dumps(gemm_cfg): (gemm, gemm_cfg)}
    if m <= CUDA_CORE_MAX_M:
        candidates["gemv " + json.dumps(gemv_cfg)] = (gemv, gemv_cfg)
    return candidates


def bench_point(name: str, n: int, k: int, sparsity: float, ms, tiles, copy_gbs: float,
                dense_us: dict, log, options) -> list[dict]:
    """Every M for one shape and sparsity: dense baselines (once per shape and M), then both formats."""
    weight = pruned_weight(n, k, sparsity, seed=n + k + int(sparsity * 100))
    dense_sets = copies({"w": weight}, weight.numel() * 2)
    density = float((weight != 0).float().mean())
    cpu_weight = weight.cpu()                                   # the encoders run on the CPU
    encodings = {("bitmap", tile): encode_bitmap(cpu_weight, tile) for tile in tiles} \
        if "bitmap" in options.formats else {}
    if "tiled_csl" in options.formats:
        encodings[("tiled_csl", None)] = encode_tiled_csl(cpu_weight)
    sets = {}
    for key, enc in encodings.items():
        on_device = {part: t.to(DEVICE) for part, t in enc.tensors.items()}
        sets[key] = [SparseWeight(enc.format, enc.shape, enc.padded_shape, enc.tile, enc.nnz, enc.dtype, tensors)
                     for tensors in copies(on_device, enc.nbytes)]
    rows = []
    for m in ms:
        x = (torch.randn(m, k, device=DEVICE) * 0.5).half()
        ref = x.double() @ weight.double().T
        io_bytes = 2 * (m * k + m * n)
        if (name, m) not in dense_us:
            vendor = x if DEVICE == "cuda" else x.float()      # the CPU has no half-precision GEMM to time
            cublas_us = time_us([lambda s=s: F.linear(vendor, s["w"].to(vendor.dtype)) for s in dense_sets])
            ours = []
            for label, (fn, cfg) in dense_candidates(m, n, k).items():
                error = relative_error(fn(x, weight, **cfg), ref)
                assert error < MAX_ERROR, (name, m, label, error)
                ours.append((time_us([lambda s=s, fn=fn, cfg=cfg: fn(x, s["w"], **cfg) for s in dense_sets]), label))
            dense_us[(name, m)] = {"cublas_us": cublas_us, "dense_us": min(ours)[0], "dense_cfg": min(ours)[1]}
        base = dense_us[(name, m)]
        for fmt in options.formats:
            results = []
            for cfg in sparse_configs(fmt, m, n, k, tiles, options):
                cfg = dict(cfg)
                weights = sets[(fmt, cfg.pop("tile", None))]
                error = relative_error(sparse_linear(x, weights[0], **cfg), ref)
                assert error < MAX_ERROR, (name, m, sparsity, fmt, cfg, weights[0].tile, error)
                us = time_us([lambda w=w, cfg=cfg: sparse_linear(x, w, **cfg) for w in weights])
                results.append({"us": us, "config": {"tile": list(weights[0].tile), **cfg},
                                "bytes": weights[0].nbytes, "error": error})
            best = min(results, key=lambda r: r["us"])
            row = {"shape": name, "n": n, "k": k, "m": m, "sparsity": sparsity, "format": fmt,
                   "density": density,
                   "us": best["us"], "config": best["config"], "bytes": best["bytes"], "error": best["error"],
                   "bandwidth": (best["bytes"] + io_bytes) / (best["us"] * 1e-6) / 1e9 / copy_gbs,
                   "vs_cublas": base["cublas_us"] / best["us"], "vs_dense": base["dense_us"] / best["us"],
                   **base, "dense_bandwidth": (2 * n * k + io_bytes) / (base["dense_us"] * 1e-6) / 1e9 / copy_gbs,
                   "candidates": results}
            log.write(json.dumps(row) + "\n")
            log.flush()
            rows.append(row)
            print(f"{name} M={m} s={sparsity} {fmt}: {row['us']:.1f}us ({100 * row['bandwidth']:.0f}% BW) "
                  f"x{row['vs_cublas']:.2f} cuBLAS ({base['cublas_us']:.1f}us) x{row['vs_dense']:.2f} dense "
                  f"({base['dense_us']:.1f}us) {json.dumps(row['config'])}", flush=True)
    del sets, dense_sets
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return rows


def plot(rows: list[dict], shapes, ms, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(2, len(shapes), figsize=(4 * len(shapes), 7), squeeze=False)
    for col, name in enumerate(shapes):
        for row_index, fmt in enumerate(("bitmap", "tiled_csl")):
            ax = axes[row_index][col]
            for m in ms:
                sel = sorted((r for r in rows if r["shape"] == name and r["format"] == fmt and r["m"] == m),
                             key=lambda r: r["sparsity"])
                ax.plot([r["sparsity"] for r in sel], [r["vs_cublas"] for r in sel], marker="o", label=f"M={m}")
            ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.set_title(f"{fmt} {name}")
            ax.set_xlabel("sparsity")
            ax.set_ylabel("speedup vs cuBLAS")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_shapes(text: str) -> dict[str, tuple[int, int]]:
    """'qkv,o' (names of SHAPES) or 'NxK,...' (dry runs)."""
    shapes = {}
    for item in text.split(","):
        if item in SHAPES:
            shapes[item] = SHAPES[item]
        else:
            n, k = (int(v) for v in item.lower().split("x"))
            shapes[item] = (n, k)
    return shapes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for sparse.json, sparse.jsonl, sparse.png")
    parser.add_argument("--shapes", type=parse_shapes, default=dict(SHAPES),
                        help="comma-separated names of Llama-2-7B shapes (qkv,o,gate_up,down) or NxK sizes")
    parser.add_argument("--ms", type=int, nargs="+", help=f"rows of x (default {' '.join(map(str, MS))})")
    parser.add_argument("--sparsities", type=float, nargs="+",
                        help=f"fractions of zeros (default {' '.join(map(str, SPARSITIES))})")
    parser.add_argument("--tiles", type=str, default=",".join(f"{r}x{c}" for r, c in BITMAP_TILES),
                        help="bitmap tiles ROWSxCOLS, comma-separated")
    parser.add_argument("--entry-chunks", type=int, nargs="+", default=[1024],
                        help="Tiled-CSL entries scattered per step, candidates")
    parser.add_argument("--warps", type=int, nargs="+", help="num_warps candidates (default: the wrappers')")
    parser.add_argument("--splits", type=int, nargs="+", help="split_k candidates (default: the wrappers' "
                        "default_split_k and half of it)")
    parser.add_argument("--formats", nargs="+", default=["bitmap", "tiled_csl"])
    parser.add_argument("--dry-run", action="store_true", help="CPU under TRITON_INTERPRET=1: tiny default sizes")
    args = parser.parse_args()
    if DEVICE == "cpu" and not args.dry_run:
        parser.error("no GPU here: pass --dry-run (and run under TRITON_INTERPRET=1)")
    tiles = tuple(tuple(int(v) for v in t.split("x")) for t in args.tiles.split(","))
    if args.dry_run:                                          # interpreter speed: tiny sizes by default
        args.shapes = {"96x128": (96, 128), "130x70": (130, 70)} if args.shapes == SHAPES else args.shapes
        args.ms, args.sparsities = args.ms or [1, 17], args.sparsities or [0.5, 0.9]
        tiles = tuple(t for t in tiles if t[1] <= 128) or ((16, 64),)
    args.ms, args.sparsities = args.ms or list(MS), args.sparsities or list(SPARSITIES)
    args.out.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0) if DEVICE == "cuda" else None
    gpu, sms = (props.name, props.multi_processor_count) if props else ("cpu (dry run)", 4)
    copy_gbs = copy_bandwidth_gbs(DEVICE, 1 << 30)
    print(f"{gpu}, {sms} SMs, copy bandwidth {copy_gbs:.0f} GB/s, torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    started = time.perf_counter()
    rows, dense_us = [], {}
    with open(args.out / "sparse.jsonl", "w") as log:
        for (name, (n, k)), sparsity in itertools.product(args.shapes.items(), args.sparsities):
            rows += bench_point(name, n, k, sparsity, args.ms, tiles, copy_gbs, dense_us, log, args)
    elapsed = time.perf_counter() - started
    result = {"gpu": gpu, "sms": sms, "copy_gbs": copy_gbs, "torch": torch.__version__, "triton": triton.__version__,
              "seconds": elapsed, "rows": rows}
    (args.out / "sparse.json").write_text(json.dumps(result, indent=1))
    plot(rows, list(args.shapes), args.ms, args.out / "sparse.png")
    lines = [f"{gpu}: copy {copy_gbs:.0f} GB/s; {elapsed:.0f} s",
             f"{'shape':<8} {'M':>3} {'sp':>4} {'format':<9} {'us':>7} {'MB':>6} {'%BW':>4} {'xcuBLAS':>7} "
             f"{'xdense':>6} {'cuBLAS':>7} {'dense':>7}  config"]
    for r in rows:
        cfg = r["config"]
        layout = f"tile={cfg['tile'][0]}x{cfg['tile'][1]}" if r["format"] == "bitmap" else f"chunk={cfg['entry_chunk']}"
        short = f"{layout} split={cfg['split_k']} " + ("tc" if cfg["tensor_cores"] else "cc") \
            + f" bm={cfg['block_m']} w={cfg['num_warps']}"
        lines.append(f"{r['shape']:<8} {r['m']:>3} {r['sparsity']:>4.2f} {r['format']:<9} {r['us']:>7.1f} "
                     f"{r['bytes'] / 1e6:>6.2f} {100 * r['bandwidth']:>4.0f} {r['vs_cublas']:>7.2f} "
                     f"{r['vs_dense']:>6.2f} {r['cublas_us']:>7.1f} {r['dense_us']:>7.1f}  {short}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
