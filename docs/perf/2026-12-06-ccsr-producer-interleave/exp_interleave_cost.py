"""GPU experiment: how much of the chunked-CSR linear's time at M = 2, 4, 8 is the separate launch that
interleaves x's rows (codegen/kernels/chunked_csr_linear.py interleave_rows) before the kernel. Times, as
scripts/bench_sparse.py does (rotating weight copies, GPU sleep, events, median), at 70%: the linear with its
interleave launch, the kernel alone on x interleaved beforehand (`x_interleaved`, as bundles now have x's producer
write it: passes/interleave_sparse_inputs.py), the interleave alone, cuBLAS on the dense weight; and the RMSNorm
over [M, 4096] writing row-major against writing interleaved (what the producer pays for it).

    python3 docs/perf/2026-12-06-ccsr-producer-interleave/exp_interleave_cost.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear, default_chunked_csr_config, interleave_rows
from fdpp.codegen.kernels.rms_norm import rms_norm
from fdpp.runtime.sparse_formats import encode_chunked_csr

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import bench_sparse as BENCH  # noqa: E402

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}


def main() -> int:
    print("| shape | M | cuBLAS us | with interleave launch us (x cuBLAS) | x interleaved by its producer us "
          "(x cuBLAS) | interleave alone us |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (n, k) in SHAPES.items():
        weight = BENCH.pruned_weight(n, k, 0.7, seed=1)
        dense_sets = BENCH.copies({"w": weight}, weight.numel() * 2)
        csr = encode_chunked_csr(weight)
        csr_sets = BENCH.copies(csr.tensors, csr.nbytes)
        for m in (2, 4, 8):
            x = (torch.randn(m, k, device="cuda") * 0.5).half()
            ref = x.double() @ weight.double().T
            rows = default_chunked_csr_config(n, csr.tensors["bases"].shape[1], m)["rows"]
            cublas = BENCH.time_us([lambda s=s: F.linear(x, s["w"]) for s in dense_sets])

            def run(t):
                return chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], (n, k))
            assert BENCH.relative_error(run(csr_sets[0]), ref) < BENCH.MAX_ERROR
            shipped = BENCH.time_us([lambda t=t: run(t) for t in csr_sets])
            ready = interleave_rows(x, rows)

            def fused(t):
                return chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], (n, k), x_interleaved=ready)
            assert BENCH.relative_error(fused(csr_sets[0]), ref) < BENCH.MAX_ERROR
            alone = BENCH.time_us([lambda t=t: fused(t) for t in csr_sets])
            interleave = BENCH.time_us([lambda: interleave_rows(x, rows)] * len(csr_sets))
            print(f"| {name} | {m} | {cublas:.1f} | {shipped:.1f} ({cublas / shipped:.2f}x) | {alone:.1f} "
                  f"({cublas / alone:.2f}x) | {interleave:.1f} |", flush=True)
        del dense_sets, csr_sets
        torch.cuda.empty_cache()
    print()
    print("| RMSNorm [M, 4096] | row-major us | interleaved us |")
    print("| --- | --- | --- |")
    weight = torch.randn(4096, device="cuda").half()
    for m in (2, 4, 8):
        xs = [(torch.randn(m, 4096, device="cuda") * 0.5).half() for _ in range(64)]
        plain = BENCH.time_us([lambda x=x: rms_norm(x, None, weight, 1e-5) for x in xs])
        mixed = BENCH.time_us([lambda x=x: rms_norm(x, None, weight, 1e-5, out_rows_together=m) for x in xs])
        print(f"| M = {m} | {plain:.2f} | {mixed:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
