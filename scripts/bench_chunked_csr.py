"""GPU only: the chunked-CSR sparse kernel (codegen/kernels/chunked_csr_linear.py) against cuBLAS on the dense
weight and the bitmap kernel at its wrapper defaults, in one run, over Llama-2-7B's four shapes, M 1..8 and
sparsity 50-90%. Each config is checked against a float64 product (relative error < 2e-3), then timed as
scripts/bench_sparse.py times (rotating weight copies, GPU sleep, events, median). Prints the best config
per point and writes every row to ccsr.jsonl. With --x-interleaved, x arrives with each column's rows side by
side, as x's producer writes it in bundles (passes/interleave_sparse_inputs.py), so the interleave launch the
wrapper otherwise runs first is not timed.

    python3 scripts/bench_chunked_csr.py --out $OUT/ccsr [--default-only] [--x-interleaved]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear, default_chunked_csr_config, interleave_rows
from fdpp.codegen.kernels.sparse_linear import sparse_linear
from fdpp.runtime.sparse_formats import SparseWeight, encode_bitmap

ROOT = Path(__file__).resolve().parent
SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}


sys.path.insert(0, str(ROOT))
import bench_sparse as BENCH  # noqa: E402  (timing, weights and error helpers; scripts/ is no package)


def configs(m: int, sweep: dict) -> list[dict]:
    together = sorted({min(1 << (m - 1).bit_length(), 8), min(1 << (m - 1).bit_length(), 4)})
    return [{"rows": r, "block_n": bn, "chunks": ch, "split_k": sk, "vector": v, "num_warps": w, "prefetch": p}
            for r, bn, ch, sk, v, w, p in itertools.product(
                together, sweep["block_n"], sweep["chunks"], sweep["split_k"], sweep["vector"], sweep["num_warps"],
                sweep["prefetch"])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ms", default="1,2,4,8")
    parser.add_argument("--sparsities", default="0.5,0.7,0.8,0.9")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    # values to sweep, comma-separated
    parser.add_argument("--block-n", default="4,8,16", help="weight rows per program")
    parser.add_argument("--chunks", default="4,8", help="chunks of each row per step")
    parser.add_argument("--split-k", default="1,2,4", help="programs sharing a row block's chunks")
    parser.add_argument("--vectors", default="4,8", help="entries a thread loads at once")
    parser.add_argument("--num-warps", default="4")
    parser.add_argument("--prefetch", default="1", help="0, 1 or 0,1: software pipelining off / on")
    parser.add_argument("--default-only", action="store_true",
                        help="time only the config the wrapper and the dataflow use (no sweep)")
    parser.add_argument("--x-interleaved", action="store_true",
                        help="x already interleaved, as bundles' producers write it (no interleave launch)")
    args = parser.parse_args()
    sweep = {name: [int(v) for v in getattr(args, name.replace("vector", "vectors")).split(",")]
             for name in ("block_n", "chunks", "split_k", "vector", "num_warps")}
    sweep["prefetch"] = [bool(int(p)) for p in args.prefetch.split(",")]
    ms = [int(v) for v in args.ms.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    best = []
    with open(args.out / "ccsr.jsonl", "w") as log:
        sparsities = [float(s) for s in args.sparsities.split(",")]
        shapes = {name: SHAPES[name] for name in args.shapes.split(",")}
        for (shape, (n, k)), sparsity in itertools.product(shapes.items(), sparsities):
            weight, dense_sets, csr, csr_sets = BENCH.dense_and_chunked_csr(n, k, sparsity)
            chunks = csr.tensors["bases"].shape[1]                         # chunks per weight row
            bitmap = encode_bitmap(weight.cpu(), (16, 256))
            on_device = {part: t.cuda() for part, t in bitmap.tensors.items()}
            bitmaps = [SparseWeight(bitmap.format, bitmap.shape, bitmap.padded_shape, bitmap.tile, bitmap.nnz,
                                    bitmap.dtype, t) for t in BENCH.copies(on_device, bitmap.nbytes)]
            for m in ms:
                x = (torch.randn(m, k, device="cuda") * 0.5).half()
                ref = x.double() @ weight.double().T
                cublas = BENCH.time_us([lambda s=s: F.linear(x, s["w"]) for s in dense_sets])
                assert BENCH.relative_error(sparse_linear(x, bitmaps[0]), ref) < BENCH.MAX_ERROR
                bitmap_us = BENCH.time_us([lambda w=w: sparse_linear(x, w) for w in bitmaps])
                rows = []
                for cfg in [default_chunked_csr_config(n, chunks, m)] if args.default_only else configs(m, sweep):
                    t = csr_sets[0]
                    ready = interleave_rows(x, cfg["rows"]) if args.x_interleaved and cfg["rows"] > 1 else None
                    error = BENCH.relative_error(chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], (n, k),
                                                                    x_interleaved=ready, **cfg), ref)
                    assert error < BENCH.MAX_ERROR, (shape, m, sparsity, cfg, error)
                    us = BENCH.time_us([lambda t=t, cfg=cfg, ready=ready: chunked_csr_linear(
                        x, t["values"], t["offsets"], t["bases"], (n, k), x_interleaved=ready, **cfg)
                        for t in csr_sets])
                    row = {"shape": shape, "n": n, "k": k, "m": m, "sparsity": sparsity, "cfg": cfg, "us": us,
                           "cublas_us": cublas, "bitmap_us": bitmap_us, "x_cublas": cublas / us,
                           "x_bitmap": bitmap_us / us, "err": error, "csr_bytes": csr.nbytes,
                           "bitmap_bytes": bitmap.nbytes, "dense_bytes": weight.numel() * 2,
                           "x_interleaved": ready is not None}
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    rows.append(row)
                best.append(min(rows, key=lambda r: r["us"]))
            del dense_sets, csr_sets, bitmaps, on_device
            torch.cuda.empty_cache()
    print(f"{'shape':8} {'s':>4} {'M':>2} {'cuBLAS':>7} {'bitmap':>14} {'chunked CSR':>14} {'bytes':>6}  config")
    for r in best:
        c = r["cfg"]
        print(f"{r['shape']:8} {r['sparsity']:4.2f} {r['m']:2d} {r['cublas_us']:7.1f} "
              f"{r['bitmap_us']:7.1f} x{r['cublas_us'] / r['bitmap_us']:.2f} {r['us']:7.1f} x{r['x_cublas']:.2f} "
              f"{r['csr_bytes'] / r['dense_bytes']:6.3f}  r{c['rows']} n{c['block_n']} ch{c['chunks']} "
              f"s{c['split_k']} v{c['vector']} w{c['num_warps']} p{int(c['prefetch'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
