"""GPU only: the decode attention step as a llama2-7b bundle runs it at short contexts, over its config space.

The bundle's decode step launches the split-KV kernel with the step's key and value written by the kernel
(WRITE_KV) and, since the rotary fusion, q and that key rotated on load (ROTARY). Bench's per-op table shows
that step at ~10 us a layer at contexts 128-384, well above the kernel's standalone time; this script times
it the way the bundle runs it (32 layers' caches of the bundle's capacity, one CUDA graph, batch 1) for
min_split_keys, block_n, num_warps and num_stages, with and without the fused write and rotation, so the
compiled defaults can be chosen from measurements.

    python3 scripts/bench_attention_step.py --out $OUT/attention-step
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from fdpp.codegen.kernels.attention_decode import allocate_decode_workspace, attention_decode
from fdpp.codegen.kernels.rotary import rotary
from fdpp.compiler.bench import graph_replay_ms
from fdpp.runtime.reference_ops import attention as attention_reference

HEADS, KV_HEADS, HEAD_DIM, LAYERS, CAPACITY = 32, 32, 128, 32, 4096 + 512


def layer_inputs(batch: int, length: int, device: str) -> dict:
    """One layer's step: a stacked q/k/v output read through views, this step's cos/sin rows, full caches."""
    qkv = torch.randn(batch, 1, 3 * HEADS * HEAD_DIM, device=device).half()
    angles = torch.rand(batch, 1, HEAD_DIM, device=device) * 6.3
    return {"q": qkv[..., :HEADS * HEAD_DIM], "k": qkv[..., HEADS * HEAD_DIM:2 * HEADS * HEAD_DIM],
            "v": qkv[..., 2 * HEADS * HEAD_DIM:], "cos": angles.cos().half(), "sin": angles.sin().half(),
            "positions": torch.full((batch, 1), length - 1, device=device, dtype=torch.long),
            "k_cache": torch.randn(batch, KV_HEADS, CAPACITY, HEAD_DIM, device=device).half(),
            "v_cache": torch.randn(batch, KV_HEADS, CAPACITY, HEAD_DIM, device=device).half()}


def step_call(s: dict, fused: bool, splits: int, min_keys: int, block_n: int, warps: int, stages: int):
    workspace = allocate_decode_workspace(s["q"].shape[0], HEADS, KV_HEADS, HEAD_DIM, splits, s["q"].device)
    extra = {"new_kv": (s["k"], s["v"]), "rotary": (s["cos"], s["sin"])} if fused else {}
    return lambda: attention_decode(s["q"], s["k_cache"], s["v_cache"], s["positions"], n_heads=HEADS,
                                    n_kv_heads=KV_HEADS, head_dim=HEAD_DIM, scale=HEAD_DIM ** -0.5,
                                    num_splits=splits, min_split_keys=min_keys, block_n=block_n, num_warps=warps,
                                    num_stages=stages, workspace=workspace, **extra)


def check(s: dict) -> float:
    """Relative error of the fused step (rotary + write + attention) against the float32 reference."""
    k_ref, v_ref = s["k_cache"].clone(), s["v_cache"].clone()
    want = attention_reference(s["q"], s["k"], s["v"], s["positions"], k_ref, v_ref, n_heads=HEADS,
                               n_kv_heads=KV_HEADS, head_dim=HEAD_DIM, scale=HEAD_DIM ** -0.5,
                               rotary_tables=(s["cos"], s["sin"])).float()
    k_cache, v_cache = s["k_cache"].clone(), s["v_cache"].clone()
    got = step_call(dict(s, k_cache=k_cache, v_cache=v_cache), True, 4, 128, 64, 4, 3)()
    new_key = rotary(s["k"], s["cos"], s["sin"], HEAD_DIM).view(KV_HEADS, HEAD_DIM)      # the rotary kernel's key
    slot = int(s["positions"][0, 0])
    assert (k_cache[0, :, slot] - new_key).abs().max() <= 1e-3, "the kernel's rotated key differs from rotary's"
    return float((got.float() - want).norm() / want.norm())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 384, 512, 1024])
    parser.add_argument("--min-keys", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--block-n", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--splits", type=int, default=4, help="grid slices (the bundle's for batch 1 on 132 SMs)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "attention-step.jsonl", "w") as log:
        for length in args.lengths:
            layers = [layer_inputs(1, length, "cuda") for _ in range(LAYERS)]
            error = check(layers[0])
            assert error < 2e-3, f"fused attention step at length {length}: relative error {error:.2e}"
            for fused, min_keys, block_n, warps, stages in itertools.product(
                    (False, True), args.min_keys, args.block_n, args.warps, args.stages):
                if min_keys % block_n:
                    continue
                calls = [step_call(s, fused, args.splits, min_keys, block_n, warps, stages) for s in layers]
                us = graph_replay_ms(calls) * 1e3 / len(calls)
                row = {"length": length, "fused": fused, "min_split_keys": min_keys, "block_n": block_n,
                       "warps": warps, "stages": stages, "splits": args.splits, "us": round(us, 2),
                       "rel_error": error}
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
    print(f"{'length':>6} {'fused':>5} {'default us':>10} {'best us':>8}  best config (min_keys, block_n, warps, stages)")
    for length, fused in itertools.product(args.lengths, (False, True)):
        group = [r for r in rows if r["length"] == length and r["fused"] == fused]
        default = [r for r in group if (r["min_split_keys"], r["block_n"], r["warps"], r["stages"]) == (128, 64, 4, 3)]
        best = min(group, key=lambda r: r["us"])
        print(f"{length:>6} {str(fused):>5} {default[0]['us'] if default else float('nan'):>10} {best['us']:>8}  "
              f"{best['min_split_keys']}, {best['block_n']}, {best['warps']}, {best['stages']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
