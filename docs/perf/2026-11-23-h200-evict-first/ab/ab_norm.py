"""Scratch A/B (GPU): cost of an in-kernel RMS post-pass (sum of x^2 after the K loop) at M = 1."""
import importlib.util, json, sys, statistics
from pathlib import Path
import torch, torch.nn.functional as F
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "scripts"))
import bench_sparse as BENCH
from fdpp.runtime.sparse_formats import encode_chunked_csr
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m); return m
base = load("c_base", ROOT.parent / "codegen/kernels/chunked_csr_linear.py")
norm = load("c_norm", ROOT / "ccsr_norm.py")
lin = load("l_norm", ROOT / "lin_norm.py")
SHAPES = {"qkv": (12288, 4096, None), "o": (4096, 4096, None), "gate_up": (22016, 4096, "silu"), "down": (4096, 11008, None)}
DENSE_CFG = {"qkv": dict(block_n=32, block_k=128, num_stages=4), "o": dict(block_n=32, block_k=256, num_stages=5),
             "gate_up": dict(block_n=32, block_k=128, num_stages=3), "down": dict(block_n=32, block_k=256, num_stages=5)}
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
log = open(out / "ab_norm.jsonl", "w")
for shape, (n, k, gated) in SHAPES.items():
    weight = BENCH.pruned_weight(n, k, 0.7, seed=1)
    dense_sets = BENCH.copies({"w": weight}, weight.numel() * 2)
    enc = encode_chunked_csr(weight.cpu())
    dev = {p: t.cuda() for p, t in enc.tensors.items()}
    sets = BENCH.copies(dev, sum(t.numel() * t.element_size() for t in dev.values()))
    x = (torch.randn(1, k, device="cuda") * 0.5).half()
    rs = torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5)
    res = {"shape": shape}
    for label, mod, cfg in (("base", base, {}), ("ef", norm, {}), ("ef_bn8", norm, {"block_n": 8}),
                            ("ef_norm_post", norm, {"norm": 1}), ("ef_norm_pre", norm, {"norm": 2}),
                            ("ef_bn8_norm_post", norm, {"norm": 1, "block_n": 8})):
        ref = x.double() @ weight.double().T
        if cfg.get("norm"):
            ref = ref * rs
        if gated:
            g, u = ref.chunk(2, dim=-1); ref = F.silu(g) * u
        y = mod.chunked_csr_linear(x, dev["values"], dev["offsets"], dev["bases"], enc.shape, gated=gated, **cfg)
        err = BENCH.relative_error(y, ref); assert err < 2e-3, (label, shape, err)
        res[f"ccsr_{label}"] = BENCH.time_us([lambda s=s, mod=mod, cfg=cfg: mod.chunked_csr_linear(x, s["values"], s["offsets"], s["bases"], enc.shape, gated=gated, **cfg) for s in sets])
    for nm in (0, 1):
        ref = x.double() @ weight.double().T * (rs if nm else 1)
        if gated:
            g, u = ref.chunk(2, dim=-1); ref = F.silu(g) * u
        y = lin.gemm(x, weight, gated=gated, block_m=16, norm=nm, **DENSE_CFG[shape])
        err = BENCH.relative_error(y, ref); assert err < 2e-3, ("dense", nm, shape, err)
        res[f"dense_norm{nm}"] = BENCH.time_us([lambda s=s, nm=nm: lin.gemm(x, s["w"], gated=gated, block_m=16, norm=nm, **DENSE_CFG[shape]) for s in dense_sets])
    log.write(json.dumps(res) + "\n"); log.flush()
    print(shape, " ".join(f"{a}={b:.2f}" for a, b in res.items() if isinstance(b, float)), flush=True)
    del dense_sets, sets, dev; torch.cuda.empty_cache()
