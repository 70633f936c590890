"""GPU: the decode-linear kernel table of the flat-GEMM issue, from an `fdcc tune` profile.

For Llama-2-7B's four decode shapes (QKV [12288, 4096], O [4096, 4096], gate+up [22016, 4096] with the fused
SiLU-gated epilogue, down [4096, 11008]) and every M the profile measured: the kernel the dataflow picks,
its time, weight bandwidth as % of a copy measured now, and the ratio to cuBLAS (torch.nn.functional.linear on
the same rotating weights, timed in the same tune run). Summary lines: % of copy and geometric-mean ratio at
M <= 16, and the lowest ratio at any M. Writes decode_linear.json and decode_linear.png under --out.

    python3 -m fdpp.compiler.cli tune -t h200 --model llama2-7b -o h200.json
    python3 scripts/bench_decode_linear.py --profile h200.json --out bench-out
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SHAPES = {"qkv": (12288, 4096, False), "o": (4096, 4096, False), "gate_up": (22016, 4096, True),
          "down": (4096, 11008, False)}


def table(profile: dict, copy_gbs: float) -> tuple[list[dict], list[str]]:
    rows, lines = [], []
    lines.append(f"copy bandwidth (read + write), measured now: {copy_gbs:.0f} GB/s; profile from {profile['gpu']}")
    lines.append(f"{'shape':<8} {'M':>4} {'kernel':<10} {'us':>7} {'cuBLAS us':>9} {'GB/s':>6} {'%copy':>6} "
                 f"{'x cuBLAS':>8}")
    for name, (n, k, gated) in SHAPES.items():
        for e in sorted((e for e in profile["entries"] if (e["n"], e["k"], e.get("gated", False)) == (n, k, gated)),
                        key=lambda e: e["m"]):
            gbs = n * k * 2 / (e["us"] * 1e-6) / 1e9
            row = {"shape": name, "n": n, "k": k, "gated": gated, "m": e["m"], "kernel": e["kernel"],
                   "config": e["config"], "us": e["us"], "cublas_us": e["vendor_us"], "gb_per_s": gbs,
                   "pct_copy": 100 * gbs / copy_gbs, "x_cublas": e["vendor_us"] / e["us"]}
            rows.append(row)
            lines.append(f"{name:<8} {e['m']:>4} {e['kernel']:<10} {e['us']:>7.1f} {e['vendor_us']:>9.1f} "
                         f"{gbs:>6.0f} {row['pct_copy']:>6.1f} {row['x_cublas']:>8.2f}")
    small = [r for r in rows if r["m"] <= 16]
    if small:
        geomean = math.exp(sum(math.log(r["x_cublas"]) for r in small) / len(small))
        lines.append(f"M <= 16: {min(r['pct_copy'] for r in small):.1f}-{max(r['pct_copy'] for r in small):.1f}% "
                     f"of copy, geomean {geomean:.3f}x cuBLAS; lowest ratio at any M: "
                     f"{min(r['x_cublas'] for r in rows):.3f}x")
    return rows, lines


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in SHAPES:
        mine = [r for r in rows if r["shape"] == name]
        ax.plot([r["m"] for r in mine], [r["pct_copy"] for r in mine], marker="o", label=f"fdpp {name}")
        ax.plot([r["m"] for r in mine], [r["pct_copy"] * r["x_cublas"] ** -1 for r in mine], ls="--", alpha=0.5,
                label=f"cuBLAS {name}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (rows)")
    ax.set_ylabel("% of copy bandwidth")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, type=Path, help="profile JSON written by fdcc tune")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--copy-gbs", type=float, default=None, help="copy bandwidth (default: measure it here)")
    args = parser.parse_args()
    profile = json.loads(args.profile.read_text())
    if args.copy_gbs is None:
        from fdpp.compiler.bench import copy_bandwidth_gbs
        args.copy_gbs = copy_bandwidth_gbs("cuda")
    rows, lines = table(profile, args.copy_gbs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_linear.json").write_text(json.dumps({"copy_gbs": args.copy_gbs, "rows": rows}, indent=1))
    plot(rows, args.out / "decode_linear.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
