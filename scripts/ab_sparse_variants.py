"""GPU only: A/B of versions of the sparse-linear kernel module (codegen/kernels/sparse_linear.py) in one
run: bitmap kernels of each version against cuBLAS on Llama-2-7B's o, down and gate+up shapes.

Each VERSION is a copy of the module file (e.g. an older commit's, from `git show COMMIT:path`), loaded
under its own name so its kernels compile separately. Per shape, sparsity, M, bitmap tile (16x256, 32x256,
8x256) and version: CUDA-core (M <= 8) and tensor-core (M >= 4) kernels, 4 or 8 warps, split-K at the
wrappers' default, half and double; each checked against a float64 product (relative error < 2e-3), then
timed as scripts/bench_sparse.py times (rotating weight copies, GPU sleep, events, median). Prints the best
config per version and writes every row to ab.jsonl.

    git show 5432576:codegen/kernels/sparse_linear.py > /tmp/old.py
    python3 scripts/ab_sparse_variants.py --out $OUT/ab old=/tmp/old.py new=codegen/kernels/sparse_linear.py
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fdpp.runtime.sparse_formats import SparseWeight, encode_bitmap

ROOT = Path(__file__).resolve().parent
SHAPES = {"o": (4096, 4096), "down": (4096, 11008), "gate_up": (22016, 4096)}
TILES = ((16, 256), (32, 256), (8, 256))


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = load_module("bench_sparse", ROOT / "bench_sparse.py")     # timing, weights and error helpers


def configs(module, m: int, n: int, k: int, tile: tuple[int, int]) -> list[dict]:
    kernels = ([{"tensor_cores": False, "block_m": min(m, 4)}] if m <= 8 else []) + \
              ([{"tensor_cores": True, "block_m": 16}] if m >= 4 and tile[0] >= 16 else [])
    out = []
    for kernel in kernels:
        for warps in (4, 8) if tile[0] * tile[1] >= 8192 else (4,):
            base = module.default_split_k(-(-n // tile[0]), -(-k // tile[1]), warps)
            out += [dict(kernel, num_warps=warps, split_k=s) for s in sorted({max(1, base // 2), base, base * 2})]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("versions", nargs="+", help="NAME=PATH of a sparse_linear.py copy")
    args = parser.parse_args()
    versions = {}
    for item in args.versions:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"version {item!r}: expected NAME=PATH")
        versions[name] = load_module(f"sparse_linear_{name}", Path(path))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.out / "ab.jsonl", "w") as log:
        for (shape, (n, k)), sparsity in itertools.product(SHAPES.items(), (0.7, 0.5, 0.9)):
            weight = BENCH.pruned_weight(n, k, sparsity, seed=1)
            dense_sets = BENCH.copies({"w": weight}, weight.numel() * 2)
            for tile in TILES:
                enc = encode_bitmap(weight.cpu(), tile)
                on_device = {part: t.cuda() for part, t in enc.tensors.items()}
                weights = [SparseWeight(enc.format, enc.shape, enc.padded_shape, enc.tile, enc.nnz, enc.dtype, t)
                           for t in BENCH.copies(on_device, enc.nbytes)]
                for m in (1, 2, 4, 8, 16) if sparsity == 0.7 else (1,):
                    x = (torch.randn(m, k, device="cuda") * 0.5).half()
                    ref = x.double() @ weight.double().T
                    cublas = BENCH.time_us([lambda s=s: F.linear(x, s["w"]) for s in dense_sets])
                    for name, module in versions.items():
                        for cfg in configs(module, m, n, k, tile):
                            error = BENCH.relative_error(module.sparse_linear(x, weights[0], **cfg), ref)
                            assert error < BENCH.MAX_ERROR, (name, shape, m, tile, cfg, error)
                            us = BENCH.time_us([lambda w=w, cfg=cfg: module.sparse_linear(x, w, **cfg) for w in weights])
                            row = {"variant": name, "shape": shape, "n": n, "k": k, "m": m, "sparsity": sparsity,
                                   "tile": tile, "cfg": cfg, "us": us, "cublas_us": cublas, "x": cublas / us,
                                   "err": error, "bytes": enc.nbytes}
                            log.write(json.dumps(row) + "\n")
                            log.flush()
                            rows.append(row)
                del weights, on_device
            del dense_sets
            torch.cuda.empty_cache()
    best = {}
    for row in rows:
        key = (row["shape"], row["m"], row["sparsity"], row["variant"])
        if key not in best or row["us"] < best[key]["us"]:
            best[key] = row
    print(f"{'shape':8} {'M':>3} {'s':>4} {'cuBLAS':>7} " + " ".join(f"{v:>28}" for v in versions))
    for shape, m, s in sorted({key[:3] for key in best}, key=lambda t: (t[0], t[2], t[1])):
        cells = [f"{r['us']:6.1f}us x{r['x']:.2f} {r['tile'][0]}x{r['tile'][1]} w{r['cfg']['num_warps']} "
                 f"s{r['cfg']['split_k']}{'T' if r['cfg']['tensor_cores'] else 'C'}"
                 for r in (best[(shape, m, s, v)] for v in versions)]
        cublas = best[(shape, m, s, next(iter(versions)))]["cublas_us"]
        print(f"{shape:8} {m:>3} {s:>4} {cublas:7.1f} " + " ".join(f"{c:>28}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
