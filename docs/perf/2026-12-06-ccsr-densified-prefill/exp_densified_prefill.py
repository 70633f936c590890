"""GPU experiment: chunked CSR at prefill row counts, 70%, Llama-2-7B's four shapes. Times, as scripts/bench_sparse.py
does (rotating weight copies, GPU sleep, events, median): cuBLAS on the dense weight, the CUDA-core kernel over the
encoding (chunked_csr_gemv), and chunked_csr_gemm as bundles launch it (densify_kernel into a fresh buffer, then
gemm_kernel with 64 x 64 x 64 tiles, 3 stages: codegen/launch_specs._densified_gemm), each checked against float64.

    python3 docs/perf/2026-12-06-ccsr-densified-prefill/exp_densified_prefill.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear, densify
from fdpp.codegen.kernels.linear import gemm

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import bench_sparse as BENCH  # noqa: E402

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}


def main() -> int:
    print("| shape | M | cuBLAS us | chunked_csr_gemv us (x cuBLAS) | chunked_csr_gemm us (x cuBLAS) |")
    print("| --- | --- | --- | --- | --- |")
    for name, (n, k) in SHAPES.items():
        weight, dense_sets, _, csr_sets = BENCH.dense_and_chunked_csr(n, k, 0.7)
        for m in (16, 32, 128, 512):
            x = (torch.randn(m, k, device="cuda") * 0.5).half()
            ref = x.double() @ weight.double().T
            cublas = BENCH.time_us([lambda s=s: F.linear(x, s["w"]) for s in dense_sets])

            def gemv(t):
                return chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], (n, k))

            def densified(t):
                dense = densify(t["values"], t["offsets"], t["bases"], (n, k))
                return gemm(x, dense, block_m=64, block_n=64, block_k=64, num_stages=3)
            row = [f"| {name} | {m} | {cublas:.1f}"]
            for run in (gemv, densified):
                us = BENCH.checked_time_us(run, csr_sets, ref, (name, m, run.__name__))
                row.append(f"{us:.1f} ({cublas / us:.2f}x)")
            print(" | ".join(row) + " |", flush=True)
        del dense_sets, csr_sets
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
