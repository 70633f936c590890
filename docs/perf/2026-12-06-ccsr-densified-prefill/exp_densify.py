"""GPU experiment: writing a chunked-CSR weight out dense (chunked_csr_gemm's first half), 70%, Llama-2-7B's four
shapes. Times: a plain fill of the dense buffer (torch.zero_, the floor for writing it); densify_kernel as shipped
(one program per row: zero, barrier, scatter); the same with more chunks a step and 8 warps; and a scatter-only
kernel over a buffer zeroed first by torch (ROWS rows a program, every chunk of a row in one step), checked exact.

    python3 docs/perf/2026-12-06-ccsr-densified-prefill/exp_densify.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels.chunked_csr_linear import densify_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import bench_sparse as BENCH  # noqa: E402

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}


@triton.jit
def scatter_kernel(values_ptr, offsets_ptr, bases_ptr, out_ptr, N, K, chunks_per_row,
                   CHUNK: tl.constexpr, CHUNKS: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None, None]                       # [ROWS, 1, 1]
    chunk = tl.arange(0, CHUNKS)[None, :, None]
    entry = tl.arange(0, CHUNK)[None, None, :]
    ok = (rows < N) & (chunk < chunks_per_row)
    entries = rows.to(tl.int64) * chunks_per_row * CHUNK + chunk * CHUNK + entry
    value = tl.load(values_ptr + entries, mask=ok, other=0.0)
    offset = tl.load(offsets_ptr + entries, mask=ok, other=0).to(tl.int32)
    base = tl.load(bases_ptr + rows.to(tl.int64) * chunks_per_row + chunk, mask=ok, other=0)
    tl.store(out_ptr + rows.to(tl.int64) * K + base + offset, value, mask=ok & (value != 0))


def main() -> int:
    print("| shape | dense MB | zero_ us | densify_kernel us | densify 32 chunks, 8 warps us | zero_ + scatter R=1 us | R=2 us | R=4 us |")
    print("| --- " * 8 + "|")
    for name, (n, k) in SHAPES.items():
        weight, dense_sets, _, csr_sets = BENCH.dense_and_chunked_csr(n, k, 0.7)
        del dense_sets
        outs = [torch.empty((n, k), dtype=torch.float16, device="cuda") for _ in csr_sets]
        chunks_per_row = csr_sets[0]["bases"].shape[1]
        chunk = csr_sets[0]["values"].shape[1] // chunks_per_row

        def shipped(t, o, chunks=8, warps=4):
            densify_kernel[(n,)](t["values"], t["offsets"], t["bases"], o, k, chunks_per_row, CHUNK=chunk,
                                 CHUNKS=chunks, BLOCK_K=1024, num_warps=warps)

        def scatter(t, o, rows):
            o.zero_()
            scatter_kernel[(triton.cdiv(n, rows),)](t["values"], t["offsets"], t["bases"], o, n, k, chunks_per_row,
                                                    CHUNK=chunk, CHUNKS=triton.next_power_of_2(chunks_per_row),
                                                    ROWS=rows, num_warps=8)
        runs = {"zero": lambda t, o: o.zero_(), "shipped": shipped,
                "wide": lambda t, o: shipped(t, o, 32, 8), **{f"r{r}": (lambda t, o, r=r: scatter(t, o, r))
                                                               for r in (1, 2, 4)}}
        row = [f"| {name} | {n * k * 2 / 1e6:.0f}"]
        for label, run in runs.items():
            if label != "zero":
                outs[0].fill_(1.0)
                run(csr_sets[0], outs[0])
                assert torch.equal(outs[0].cpu(), weight.cpu()), (name, label)
            us = BENCH.time_us([lambda t=t, o=o, run=run: run(t, o) for t, o in zip(csr_sets, outs)])
            row.append(f"{us:.1f}")
        print(" | ".join(row) + " |", flush=True)
        del csr_sets, outs
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
