"""GPU only: the flat GEMM with its grid matched to the multiprocessors (gemm `spread`: 1-4 programs per
multiprocessor, each owning a run of about N / spread features) against the kernel the shipped profile picks,
and cuBLAS, on Llama-2-7B's four decode shapes at M 1..16, in one run. Candidates and timing are `fdcc tune`'s
(compiler/tune.py: each checked against float32 torch first, then CUDA-graph replays over rotating weights).
Prints a table (% of copy bandwidth: fdcc bench's yardstick, a 1 GiB device copy, reads plus writes) and writes
every timing to spread.jsonl and the profile entries this run would give to entries.json.

    python3 scripts/bench_flat_gemm_spread.py --target h100 --out $OUT/spread
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fdpp.compiler.bench import copy_bandwidth_gbs
from fdpp.compiler.tune import graph_time_us, rotating_weights, shipped_profile, spread_candidates, time_candidate
from fdpp.runtime.reference_ops import fused_linear

SHAPES = {"qkv": (12288, 4096, False), "o": (4096, 4096, False), "gate_up": (22016, 4096, True),
          "down": (4096, 11008, False)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="whose shipped profile gives the current choice")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    profile = {(e["n"], e["k"], e["gated"], e["m"]): e for e in shipped_profile(args.target)["entries"]}
    multiprocessors = torch.cuda.get_device_properties(0).multi_processor_count
    copy = copy_bandwidth_gbs("cuda")
    print(f"{torch.cuda.get_device_name()}: {multiprocessors} multiprocessors, copy {copy:.0f} GB/s")
    rows, entries = [], []
    with open(args.out / "spread.jsonl", "w") as log:
        for name in args.shapes.split(","):
            n, k, gated = SHAPES[name]
            weights = rotating_weights(n, k, torch.float16)
            features = n // 2 if gated else n
            for m in (int(v) for v in args.rows.split(",")):
                torch.manual_seed(m)
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                reference = fused_linear(x.float(), weights[0].float(), gated="silu" if gated else None)
                shipped = profile[(n, k, gated, m)]
                results = [("shipped", shipped["kernel"], shipped["config"])] + \
                    [("spread", "flat_gemm", c) for c in spread_candidates(features, multiprocessors)]
                timings = []
                for label, kernel, config in results:
                    us = time_candidate(kernel, config, x, weights, gated, reference)
                    log.write(json.dumps({"shape": name, "m": m, "label": label, "kernel": kernel, "config": config,
                                          "us": us}) + "\n")
                    if us is not None:
                        timings.append((us, label, kernel, config))
                cublas = graph_time_us(lambda w: torch.nn.functional.linear(x, w), weights)
                current = next(t for t in timings if t[1] == "shipped")
                spread = min((t for t in timings if t[1] == "spread"), key=lambda t: t[0])
                best = min(current, spread, key=lambda t: t[0])
                entries.append({"n": n, "k": k, "gated": gated, "m": m, "kernel": best[2], "config": best[3],
                                "us": best[0], "vendor_us": cublas,
                                "weight_gb_per_s": n * k * 2 / (best[0] * 1e-6) / 1e9})
                kilobytes = n * k * 2 / 1e3                    # / us: GB/s
                rows.append((name, m, current, spread, cublas, kilobytes))
                c = spread[3]
                print(f"{name:8} M={m:2d} shipped {current[2]} {current[0]:6.2f} us "
                      f"({100 * kilobytes / current[0] / copy:5.1f}%)  spread {c['spread']}/{c['block_n']}/"
                      f"{c['block_k']}/{c['num_stages']} {spread[0]:6.2f} us "
                      f"({100 * kilobytes / spread[0] / copy:5.1f}%)"
                      f"  shipped/spread {current[0] / spread[0]:.3f}  cuBLAS {cublas:6.2f}", flush=True)
            del weights
            torch.cuda.empty_cache()
    (args.out / "entries.json").write_text(json.dumps(entries, indent=1))
    print("\n| shape | M | shipped us (% copy) | best spread us (% copy) | config spread/block_n/block_k/stages "
          "| shipped / spread | cuBLAS us |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, m, current, spread, cublas, kilobytes in rows:
        c = spread[3]
        print(f"| {name} | {m} | {current[0]:.2f} ({100 * kilobytes / current[0] / copy:.1f}%) | {spread[0]:.2f} "
              f"({100 * kilobytes / spread[0] / copy:.1f}%) | {c['spread']}/{c['block_n']}/{c['block_k']}/"
              f"{c['num_stages']} | {current[0] / spread[0]:.3f} | {cublas:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
