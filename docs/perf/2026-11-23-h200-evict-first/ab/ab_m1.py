"""Scratch A/B (GPU): chunked-CSR and flat-GEMM variants at M = 1, 2 on Llama-2-7B shapes at 70%."""
import importlib.util, itertools, json, sys, statistics
from pathlib import Path
import torch, torch.nn.functional as F
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "scripts"))
import bench_sparse as BENCH
from fdpp.runtime.sparse_formats import encode_chunked_csr

def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m); return m

CCSR = {"base": load("c_base", ROOT.parent / "codegen/kernels/chunked_csr_linear.py")}
for v in ("cg", "ef", "pf2"):
    CCSR[v] = load(f"c_{v}", ROOT / f"ccsr_{v}.py")
LIN = {"base": load("l_base", ROOT.parent / "codegen/kernels/linear.py"),
       "ef": load("l_ef", ROOT / "lin_ef.py"), "cg": load("l_cg", ROOT / "lin_cg.py")}
SHAPES = {"qkv": (12288, 4096, None), "o": (4096, 4096, None), "gate_up": (22016, 4096, "silu"), "down": (4096, 11008, None)}
DENSE_CFG = {"qkv": dict(block_n=32, block_k=128, num_stages=4), "o": dict(block_n=32, block_k=256, num_stages=5),
             "gate_up": dict(block_n=32, block_k=128, num_stages=3), "down": dict(block_n=32, block_k=256, num_stages=5)}
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rows = []
log = open(out / "ab_m1.jsonl", "w")
for shape, (n, k, gated) in SHAPES.items():
    weight = BENCH.pruned_weight(n, k, 0.7, seed=1)
    dense_sets = BENCH.copies({"w": weight}, weight.numel() * 2)
    enc = encode_chunked_csr(weight.cpu())
    dev = {p: t.cuda() for p, t in enc.tensors.items()}
    sets = BENCH.copies(dev, sum(t.numel() * t.element_size() for t in dev.values()))
    for m in (1, 2):
        x = (torch.randn(m, k, device="cuda") * 0.5).half()
        ref = (x.double() @ weight.double().T)
        if gated:
            g, u = ref.chunk(2, dim=-1); ref = F.silu(g) * u
        res = {"m": m, "shape": shape}
        res["cublas"] = BENCH.time_us([lambda s=s: F.linear(x, s["w"]) for s in dense_sets])
        for name, mod in LIN.items():
            y = mod.gemm(x, weight, gated=gated, block_m=16, **DENSE_CFG[shape])
            assert BENCH.relative_error(y, ref) < 2e-3, (name, shape)
            res[f"dense_{name}"] = BENCH.time_us([lambda s=s, mod=mod: mod.gemm(x, s["w"], gated=gated, block_m=16, **DENSE_CFG[shape]) for s in dense_sets])
        for name, mod in CCSR.items():
            for alt in ({}, {"chunks": 16}, {"block_n": 8 if n > 8192 else 4}):
                y = mod.chunked_csr_linear(x, dev["values"], dev["offsets"], dev["bases"], enc.shape, gated=gated, **alt)
                err = BENCH.relative_error(y, ref)
                assert err < 2e-3, (name, shape, alt, err)
                key = f"ccsr_{name}" + "".join(f"_{a}{b}" for a, b in alt.items())
                res[key] = BENCH.time_us([lambda s=s, mod=mod, alt=alt: mod.chunked_csr_linear(x, s["values"], s["offsets"], s["bases"], enc.shape, gated=gated, **alt) for s in sets])
        log.write(json.dumps(res) + "\n"); log.flush(); rows.append(res)
        print(shape, m, " ".join(f"{k2}={v:.1f}" for k2, v in res.items() if isinstance(v, float)), flush=True)
    del dense_sets, sets, dev; torch.cuda.empty_cache()
keys = [k2 for k2 in rows[0] if k2 not in ("m", "shape")]
for m in (1, 2):
    sel = [r for r in rows if r["m"] == m]
    print(f"M={m} geomean us ratio vs base:")
    for key in keys:
        basek = "dense_base" if key.startswith("dense") or key == "cublas" else "ccsr_base"
        gm = statistics.geometric_mean([r[basek] / r[key] for r in sel])
        print(f"  {key:28} speedup x{gm:.3f}  " + " ".join(f"{r['shape']}:{r[key]:.1f}" for r in sel))
