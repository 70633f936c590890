"""GPU: the flat GEMM on one [N, K] shape over a wider config grid than `fdcc tune` tries (8 warps, 512-column K
chunks, 6-8 pipeline stages, grids of 1-2 programs a multiprocessor), timed the tune's way (compiler/tune.py
time_candidate: checked against torch first, CUDA-graph replays over rotating weights), with the tune's own grid
and cuBLAS in the same run. Prints the fastest configs per row count, each with its GB/s of weight traffic and its
share of measured copy bandwidth, and writes every timing to --out as JSON lines.

    python3 scripts/flat_gemm_wide_grid.py --shape 4096:4096 --rows 1,16 --out $OUT/wide.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from fdpp.compiler import tune
from fdpp.compiler.bench import copy_bandwidth_gbs

WIDE_GRID = {"block_n": (16, 32, 64), "block_k": (256, 512), "num_stages": (4, 6, 8), "num_warps": (4, 8),
             "per_multiprocessor": (0, 1, 2)}


def wide_candidates(n: int, multiprocessors: int) -> list[dict]:
    """WIDE_GRID's flat GEMM configs; per_multiprocessor 0 tiles N by block_n, otherwise a spread grid of that
    many programs a multiprocessor (block_n then the narrowest that holds a program's run, as the tune has it)."""
    from fdpp.codegen.kernels.linear import spread_block_n
    out = []
    for bn, bk, st, w, per_sm in itertools.product(*WIDE_GRID.values()):
        config = {"block_n": bn, "block_k": bk, "num_stages": st, "num_warps": w}
        if per_sm:
            spread = per_sm * multiprocessors
            config = {**config, "block_n": spread_block_n(n, spread), "spread": spread}
        if config not in out:
            out.append(config)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="4096:4096", help="N:K of the weight (default o_proj's)")
    parser.add_argument("--rows", default="1,16", help="row counts of x, comma-separated")
    parser.add_argument("--top", type=int, default=8, help="configs printed per row count")
    parser.add_argument("--out", required=True, help="JSON lines of every timing")
    args = parser.parse_args()
    n, k = (int(v) for v in args.shape.split(":"))
    multiprocessors = torch.cuda.get_device_properties(0).multi_processor_count
    bandwidth = copy_bandwidth_gbs("cuda")
    weights = tune.rotating_weights(n, k, torch.float16)
    nbytes = n * k * 2
    print(f"{torch.cuda.get_device_name()}: copy {bandwidth:.0f} GB/s, weight [{n}, {k}] fp16, "
          f"{len(weights)} rotating copies")
    with open(args.out, "w") as log:
        for m in (int(v) for v in args.rows.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            reference = x.float() @ weights[0].float().T
            shipped = [("tune", kernel, config) for kernel, config in tune._candidates(m, n, multiprocessors)]
            wide = [("wide", "flat_gemm", config) for config in wide_candidates(n, multiprocessors)]
            rows = []
            for grid, kernel, config in shipped + wide:
                us = tune.time_candidate(kernel, config, x, weights, False, reference)
                row = {"m": m, "grid": grid, "kernel": kernel, "config": config, "us": us}
                log.write(json.dumps(row) + "\n")
                log.flush()  # a call cut off by its time limit keeps every timing so far
                if us is not None:
                    rows.append(row)
            cublas = next(r["us"] for r in rows if r["kernel"] == "tc_gemm")
            best_tune = min((r for r in rows if r["grid"] == "tune"), key=lambda r: r["us"])
            print(f"M={m}: cuBLAS {cublas:.2f} us; the tune grid's best {best_tune['us']:.2f} us "
                  f"({nbytes / best_tune['us'] / 1e3 / bandwidth:.1%} of copy) {best_tune['config']}; "
                  f"{sum(r['grid'] == 'wide' for r in rows)} of {len(wide)} wide configs ran")
            for r in sorted(rows, key=lambda r: r["us"])[:args.top]:
                gbs = nbytes / r["us"] / 1e3
                print(f"  {r['us']:7.2f} us {gbs:6.0f} GB/s {gbs / bandwidth:6.1%}  x{cublas / r['us']:.3f} cuBLAS  "
                      f"{r['grid']:4} {r['kernel']} {r['config']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
