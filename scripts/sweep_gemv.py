"""GPU sweep: our GEMV at decode batch sizes, several block configs, against cuBLAS (torch), Llama-2-7B shapes.

    python scripts/sweep_gemv.py            # prints a table: shape, M, config, us, GB/s, x cuBLAS
"""

from __future__ import annotations

import itertools

import torch
import triton

from fdpp.codegen.kernels.linear import gemv

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}


def main() -> None:
    torch.manual_seed(0)
    print(f"{'shape':<8} {'M':>3} {'BN':>4} {'BK':>5} {'warps':>5} {'us':>8} {'GB/s':>7} {'x cuBLAS':>8}")
    for name, (n, k) in SHAPES.items():
        weights = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(3)]
        for m in (1, 4, 8):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            state = {"i": 0}

            def rotate():
                state["i"] = (state["i"] + 1) % len(weights)
                return weights[state["i"]]

            ref_us = triton.testing.do_bench(lambda: torch.nn.functional.linear(x, rotate()),
                                             return_mode="median") * 1e3
            best = None
            for bn, bk, warps in itertools.product((4, 8, 16, 32), (128, 256, 512, 1024), (2, 4, 8)):
                if m * bn * bk > 16384 or m * bn * bk < 1024:
                    continue
                try:
                    out = gemv(x, weights[0], block_n=bn, block_k=bk, num_warps=warps)
                except Exception:
                    continue
                err = float((out.float() - torch.nn.functional.linear(x, weights[0]).float()).norm()
                            / torch.nn.functional.linear(x, weights[0]).float().norm())
                if err > 1e-2:
                    continue
                us = triton.testing.do_bench(lambda: gemv(x, rotate(), block_n=bn, block_k=bk, num_warps=warps),
                                             return_mode="median") * 1e3
                if best is None or us < best[0]:
                    best = (us, bn, bk, warps)
            us, bn, bk, warps = best
            gbs = n * k * 2 / (us * 1e-6) / 1e9
            print(f"{name:<8} {m:>3} {bn:>4} {bk:>5} {warps:>5} {us:>8.1f} {gbs:>7.0f} {ref_us / us:>8.2f}"
                  f"   (cuBLAS {ref_us:.1f} us)")


if __name__ == "__main__":
    main()
