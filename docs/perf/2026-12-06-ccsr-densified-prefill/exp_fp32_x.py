"""GPU experiment: the chunked-CSR kernel at M = 2, 4 and 8 (70%, Llama-2-7B's four shapes) reading x interleaved
as float16 (as bundles run it now) or as float32 (the producer would store its float32 result; the kernel then
gathers 2x the bytes but converts nothing), against cuBLAS; at M = 8 also a few configs around the default.
With --before FILE (a copy of codegen/kernels/chunked_csr_linear.py from before the gather took a pointer per
chunk), that kernel is timed with float16 x too. Timed as scripts/bench_sparse.py does (rotating weight copies,
events, median), each checked against float64.

    python3 docs/perf/2026-12-06-ccsr-densified-prefill/exp_fp32_x.py [--before FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear, default_chunked_csr_config, interleave_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import bench_sparse as BENCH  # noqa: E402

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}
M8_VARIANTS = {"prefetch": {"prefetch": True}, "warps8": {"num_warps": 8}, "n4": {"block_n": 4},
               "n16": {"block_n": 16}, "rows4": {"rows": 4, "block_n": 4, "chunks": 8, "prefetch": True}}


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("chunked_csr_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the kernel module before the change, timed with float16 x")
    args = parser.parse_args()
    kernels = {"float16": (chunked_csr_linear, torch.float16), "float32": (chunked_csr_linear, torch.float32)}
    if args.before:
        kernels = {"before, float16": (load_module(args.before).chunked_csr_linear, torch.float16), **kernels}
    print("| shape | M | variant | cuBLAS us | " + " | ".join(f"{label} us (x cuBLAS)" for label in kernels) + " |")
    print("| --- " * (4 + len(kernels)) + "|")
    for name, (n, k) in SHAPES.items():
        weight, dense_sets, csr, csr_sets = BENCH.dense_and_chunked_csr(n, k, 0.7)
        chunks = csr.tensors["bases"].shape[1]
        for m in (2, 4, 8):
            x = (torch.randn(m, k, device="cuda") * 0.5).half()
            ref = x.double() @ weight.double().T
            cublas = BENCH.time_us([lambda s=s: F.linear(x, s["w"]) for s in dense_sets])
            variants = {"default": {}, **(M8_VARIANTS if m == 8 else {})}
            for label, change in variants.items():
                cfg = {**default_chunked_csr_config(n, chunks, m), **change}
                row = [f"| {name} | {m} | {label} | {cublas:.1f}"]
                for kernel_label, (kernel, dtype) in kernels.items():
                    xs = x.to(dtype)
                    ready = interleave_rows(xs, cfg["rows"])

                    def run(t, xs=xs, ready=ready, cfg=cfg, kernel=kernel):
                        return kernel(xs, t["values"], t["offsets"], t["bases"], (n, k), x_interleaved=ready, **cfg)
                    us = BENCH.checked_time_us(run, csr_sets, ref, (name, m, label, kernel_label))
                    row.append(f"{us:.1f} ({cublas / us:.2f}x)")
                print(" | ".join(row) + " |", flush=True)
        del dense_sets, csr_sets
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
