"""CPU only: what the dataflow decides for Llama-2-7B's four pruned linear shapes, without building a bundle.

For each density and --max-batch, prints per shape the stored format (dense or chunked_csr...), the expected
one-row speedup `fdcc compile` would print, and the summed decode cost of the chosen sparse format against dense
(microseconds over the decode buckets), from the target's cost model and the shipped (or given) profile — the same
call select_kernels makes for a pruned linear (passes/select_kernels.py pruned_linear_decision).

    python3 scripts/sparse_decisions.py -t h100 --density 0.5 --density 0.3
    python3 scripts/sparse_decisions.py -t h200 --profile none          # the cost model alone
"""

from __future__ import annotations

import argparse

from fdpp.compiler.errors import CompileError
from fdpp.compiler.targets import get_target
from fdpp.compiler.tune import load_profile, shipped_profile
from fdpp.passes.select_kernels import pruned_linear_decision, row_buckets

# (N, K, gated, residual epilogue) as the fused Llama-2-7B graph has them: q/k/v stacked, gate/up stacked
SHAPES = {"qkv": (12288, 4096, False, False), "o": (4096, 4096, False, True),
          "gate_up": (22016, 4096, True, False), "down": (4096, 11008, False, True)}


def decision(name: str, density: float, max_batch: int, target, profile: dict | None, kernels: bool = False) -> str:
    n, k, gated, residual = SHAPES[name]
    buckets = row_buckets(max_batch)
    chosen = pruned_linear_decision(n, k, density, gated, residual, target, profile, "float16", "auto", buckets,
                                    tuple(buckets))
    sparse = min((us for fmt, us in chosen["costs"].items() if fmt != "dense"), default=float("nan"))
    line = (f"{name} {chosen['format']} {chosen['expected_speedup']:.2f}x "
            f"({sparse:.0f}/{chosen['costs']['dense']:.0f} us)")
    if kernels:        # each row bucket's kernel and the costs it was chosen from
        line += "".join(f"\n    up to {c.max_rows} rows: {c.kernel} ({c.reason.split(': ', 1)[-1]})"
                        for c in chosen["choices"])
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-t", "--target", default="h100")
    parser.add_argument("--profile", default="shipped", help="a profile JSON, 'shipped' (default) or 'none'")
    parser.add_argument("--density", type=float, action="append", help="fraction of weights kept (default 0.3)")
    parser.add_argument("--max-batch", type=int, action="append", help="default 1 2 4 8 16")
    parser.add_argument("--kernels", action="store_true", help="also each row bucket's kernel and its costs")
    args = parser.parse_args()
    try:
        target = get_target(args.target)
        profile = {"shipped": lambda: shipped_profile(target.name), "none": lambda: None}.get(
            args.profile, lambda: load_profile(args.profile, target.name))()
    except CompileError as e:
        parser.error(str(e))
    print(f"target {target.name}, profile: {(profile or {}).get('gpu', 'none (cost model)')}")
    for density in args.density or [0.3]:
        for max_batch in args.max_batch or [1, 2, 4, 8, 16]:
            print(f"density {density:.2f} --max-batch {max_batch:>2}: "
                  + "  ".join(decision(name, density, max_batch, target, profile, args.kernels) for name in SHAPES))


if __name__ == "__main__":
    main()
