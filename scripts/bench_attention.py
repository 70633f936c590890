"""GPU only: decode attention — fdpp's unified-max kernel vs its synchronized split-KV kernel vs torch SDPA.

For each head shape (32 x 128 MHA; 64 query heads over 8 KV heads), batch and KV length: checks both
kernels against an upcast reference on fresh random inputs, then times every candidate with rotating
input sets inside CUDA graphs (median of replays), in one run, against the measured copy bandwidth. A
small sweep (split count, key tile, warps) shows how far the compiled default is from the best config.
Then full-size exactness on adversarial inputs (huge / tiny scores, a dominant key, equal scores, mixed
rows), with the fallback count checked against the float64 row maxima. --dependent-launch (sm_90+) adds the
default unified kernel launched as a programmatic dependent of the call before, as bundles launch it.

    python scripts/bench_attention.py --out $OUT/attention      # prints a table; writes JSON, PNG, markdown
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fdpp.compiler.bench import copy_bandwidth_gbs, graph_replay_ms
from fdpp.codegen.kernels.attention_decode import allocate_decode_workspace, attention_decode
from fdpp.passes.select_kernels import DECODE_BLOCK_N, DECODE_NUM_STAGES, MIN_SPLIT_KEYS, choose_splits
from fdpp.runtime.unified_max import safe_offsets

SHAPES = {"mha-32x128": (32, 32, 128), "gqa-64/8x128": (64, 8, 128)}
PHI = 0.0
LOW, HIGH = (PHI + o for o in safe_offsets("float16"))
SMS = 132
ROTATE_BYTES = 512 << 20          # input sets rotate through at least this much memory (L2 is 50-60 MB)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # cpu: a dry run under TRITON_INTERPRET=1, tiny sizes
DEPENDENT = False                 # --dependent-launch: also time the default unified kernel launched dependent
SWEEP_BLOCK_N = (64, 128)         # --sweep-block-n: key tiles the sweep tries
SWEEP_MIN_KEYS = (MIN_SPLIT_KEYS,)  # --sweep-min-keys: shortest slices the sweep tries (the split count follows)


def graph_time_us(calls: list, moved: int, repeats: int = 15) -> float:
    """Median time of one call: the calls (one per input set, cycled to >= 20, or 4 for calls over 1 GB)
    captured in one CUDA graph."""
    if DEVICE == "cpu":
        t = time.perf_counter()
        calls[0]()
        return (time.perf_counter() - t) * 1e6
    sequence = list(itertools.islice(itertools.cycle(calls), max(4 if moved > 1e9 else 20, len(calls))))
    return graph_replay_ms(sequence, replays=5 if moved > 1e9 else repeats) * 1e3 / len(sequence)


def make_set(batch, heads, kv_heads, head_dim, length):
    q = torch.randn(batch, 1, heads * head_dim, device=DEVICE).half()
    k = torch.randn(batch, kv_heads, length, head_dim, device=DEVICE).half()
    v = torch.randn(batch, kv_heads, length, head_dim, device=DEVICE).half()
    positions = torch.full((batch, 1), length - 1, device=DEVICE, dtype=torch.long)
    return {"q": q, "k": k, "v": v, "positions": positions}


def reference(s, heads, kv_heads, head_dim, rows: int = 2) -> torch.Tensor:
    """float32 SDPA on upcast inputs, for the first `rows` sequences (the rest are timed, not checked)."""
    b = min(rows, s["q"].shape[0])
    qh = s["q"][:b].float().view(b, 1, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, s["k"][:b].float(), s["v"][:b].float(), enable_gqa=heads != kv_heads)
    return out.transpose(1, 2).reshape(b, 1, heads * head_dim)


def ours(s, heads, kv_heads, head_dim, unified, splits, block_n, warps, fallbacks, stages=DECODE_NUM_STAGES,
         dependent=False, min_split_keys=MIN_SPLIT_KEYS):
    b = s["q"].shape[0]
    key = ("ws", splits)
    if key not in s:
        s[key] = allocate_decode_workspace(b, heads, kv_heads, head_dim, splits, DEVICE)
    min_keys = max(min_split_keys // block_n, 1) * block_n
    return lambda: attention_decode(s["q"], s["k"], s["v"], s["positions"], n_heads=heads, n_kv_heads=kv_heads,
                                    head_dim=head_dim, scale=head_dim ** -0.5,
                                    unified=(PHI, LOW, HIGH) if unified else None, fallbacks=fallbacks,
                                    num_splits=splits, min_split_keys=min_keys, block_n=block_n,
                                    num_warps=warps, num_stages=stages, workspace=s[key],
                                    dependent_launch=dependent)


def sdpa(s, heads, kv_heads, head_dim):
    b = s["q"].shape[0]
    qh = s["q"].view(b, 1, heads, head_dim).transpose(1, 2)
    if DEVICE == "cpu":                                   # no half-precision SDPA kernels on the CPU
        return lambda: F.scaled_dot_product_attention(qh.float(), s["k"].float(), s["v"].float(),
                                                      enable_gqa=heads != kv_heads)
    return lambda: F.scaled_dot_product_attention(qh, s["k"], s["v"], enable_gqa=heads != kv_heads)


def rel_error(out, ref) -> float:
    out = out[:ref.shape[0]]
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def bench_shape(name, batch, length, copy_gbs, sms, log, sweep: bool) -> dict:
    heads, kv_heads, head_dim = SHAPES[name]
    kv_bytes = 2 * batch * kv_heads * length * head_dim * 2
    moved = kv_bytes + 2 * batch * heads * head_dim * 2
    n_sets = max(1, min(16, -(-ROTATE_BYTES // kv_bytes)))
    sets = [make_set(batch, heads, kv_heads, head_dim, length) for _ in range(n_sets)]
    fallbacks = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    splits = choose_splits(batch, kv_heads, sms, length)
    row = {"shape": name, "batch": batch, "kv_len": length, "bytes": moved, "splits": splits, "sets": n_sets}
    ref = reference(sets[0], heads, kv_heads, head_dim)
    for scheme in ("unified", "synchronized"):
        out = ours(sets[0], heads, kv_heads, head_dim, scheme == "unified", splits, DECODE_BLOCK_N, 4, fallbacks)()
        row[f"{scheme}_err"] = rel_error(out, ref)
        assert torch.isfinite(out).all() and row[f"{scheme}_err"] < 2e-3, (name, batch, length, scheme, row)
    if DEPENDENT:
        out = ours(sets[0], heads, kv_heads, head_dim, True, splits, DECODE_BLOCK_N, 4, fallbacks, dependent=True)()
        row["unified_dependent_err"] = rel_error(out, ref)
        assert torch.isfinite(out).all() and row["unified_dependent_err"] < 2e-3, (name, batch, length, row)
    sdpa_out = sdpa(sets[0], heads, kv_heads, head_dim)().transpose(1, 2)
    row["sdpa_err"] = rel_error(sdpa_out.reshape(sdpa_out.shape[0], 1, -1), ref)

    def timed(make) -> float:
        return graph_time_us([make(s) for s in sets], moved)

    row["sdpa_us"] = timed(lambda s: sdpa(s, heads, kv_heads, head_dim))
    for scheme in ("unified", "synchronized"):
        row[f"{scheme}_us"] = timed(lambda s: ours(s, heads, kv_heads, head_dim, scheme == "unified", splits,
                                                   DECODE_BLOCK_N, 4, fallbacks))
        best = (row[f"{scheme}_us"], f"S={splits} N={DECODE_BLOCK_N} w=4 st={DECODE_NUM_STAGES}")
        variants = itertools.product((0.5, 1, 2), SWEEP_BLOCK_N, (4, 8), (2, 3), SWEEP_MIN_KEYS) if sweep else ()
        for factor, block_n, warps, stages, min_keys in variants:
            if min_keys % block_n:              # slices are whole key tiles
                continue
            base = choose_splits(batch, kv_heads, sms, length, min_split_keys=min_keys)
            s_try = max(1, min(64, int(base * factor)))
            if ((factor, block_n, warps, stages, min_keys) == (1, DECODE_BLOCK_N, 4, DECODE_NUM_STAGES, MIN_SPLIT_KEYS)
                    or (factor != 1 and s_try == base)):
                continue
            out = ours(sets[0], heads, kv_heads, head_dim, scheme == "unified", s_try, block_n, warps, fallbacks,
                       stages, min_split_keys=min_keys)()
            err = rel_error(out, ref)
            assert torch.isfinite(out).all() and err < 2e-3, (name, batch, length, scheme, s_try, block_n, min_keys,
                                                              err)
            us = timed(lambda s: ours(s, heads, kv_heads, head_dim, scheme == "unified", s_try, block_n, warps,
                                      fallbacks, stages, min_split_keys=min_keys))
            if us < best[0]:
                best = (us, f"S={s_try} N={block_n} w={warps} st={stages} k={min_keys}")
        row[f"{scheme}_best_us"], row[f"{scheme}_best_cfg"] = best
    if DEPENDENT:   # each call a programmatic dependent of the one before, as in a sm_90 bundle's graph
        row["unified_dependent_us"] = timed(lambda s: ours(s, heads, kv_heads, head_dim, True, splits, DECODE_BLOCK_N,
                                                           4, fallbacks, dependent=True))
    row["fallbacks"] = int(fallbacks)
    for key in ("sdpa", "unified", "synchronized", "unified_best", "synchronized_best", "unified_dependent"):
        if f"{key}_us" not in row:
            continue
        row[f"{key}_bw"] = moved / (row[f"{key}_us"] * 1e-6) / 1e9 / copy_gbs
    row["unified_vs_sync"] = row["synchronized_us"] / row["unified_us"]
    row["unified_vs_sync_best"] = row["synchronized_best_us"] / row["unified_best_us"]
    row["unified_vs_sdpa"] = row["sdpa_us"] / row["unified_best_us"]
    log.write(json.dumps(row) + "\n")
    log.flush()
    sets.clear()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return row


def adversarial(kind: str, batch: int, length: int, heads=32, kv_heads=32, head_dim=128) -> dict:
    """Scores steered per row through the first feature (as tests/test_kernels_unified_softmax.py does)."""
    g = torch.Generator(device=DEVICE).manual_seed(length + len(kind))
    scale = head_dim ** -0.5
    k = torch.randn(batch, kv_heads, length, head_dim, device=DEVICE, generator=g) * 0.05
    v = torch.randn(batch, kv_heads, length, head_dim, device=DEVICE, generator=g)
    x = torch.randn(batch, kv_heads, length, device=DEVICE, generator=g) * 0.5
    c = torch.ones(batch, heads, device=DEVICE)
    dominant = torch.randint(0, length, (batch, kv_heads), device=DEVICE, generator=g)
    if kind in ("huge", "dominant", "mixed"):
        x.scatter_(2, dominant[..., None], {"huge": 8.0, "dominant": 8.0, "mixed": 4.0}[kind])
    if kind == "tiny":
        x = -8.0 + 0.1 * torch.randn(batch, kv_heads, length, device=DEVICE, generator=g)
    if kind == "equal":
        x.fill_(2.0)
    c.fill_({"huge": 30.0, "tiny": 30.0, "dominant": 1.2}.get(kind, 1.0))
    if kind == "mixed":
        c = torch.tensor([(0.5, 10.0, -10.0)[h % 3] for h in range(heads)], device=DEVICE).expand(batch, heads)
    k[..., 0] = x
    q = torch.randn(batch, heads, head_dim, device=DEVICE, generator=g) * 0.05
    q[..., 0] = c / scale
    q, k, v = q.half(), k.half(), v.half()
    scores = torch.einsum("bhd,bhtd->bht", q.double(), k.double()) * scale           # MHA: head h reads KV head h
    row_max = scores.amax(-1)
    expected = int(((row_max < LOW) | (row_max > HIGH)).sum())
    ref = torch.einsum("bht,bhtd->bhd", torch.softmax(scores, -1), v.double()).reshape(batch, 1, heads * head_dim)
    positions = torch.full((batch, 1), length - 1, device=DEVICE, dtype=torch.long)
    fallbacks = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    splits = choose_splits(batch, kv_heads, SMS, length)
    out = attention_decode(q.reshape(batch, 1, heads * head_dim), k, v, positions, n_heads=heads, n_kv_heads=kv_heads,
                           head_dim=head_dim, scale=scale, unified=(PHI, LOW, HIGH), fallbacks=fallbacks,
                           num_splits=splits, min_split_keys=MIN_SPLIT_KEYS, block_n=DECODE_BLOCK_N,
                           num_stages=DECODE_NUM_STAGES)
    return {"kind": kind, "batch": batch, "kv_len": length, "err": rel_error(out, ref),
            "finite": bool(torch.isfinite(out).all()), "fallbacks": int(fallbacks), "expected": expected,
            "edge_margin": float(torch.minimum((row_max - LOW).abs(), (row_max - HIGH).abs()).min())}


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(SHAPES), figsize=(12, 4), squeeze=False)
    for ax, name in zip(axes[0], SHAPES):
        for batch, marker in zip((1, 8, 32), "os^"):
            sel = [r for r in rows if r["shape"] == name and r["batch"] == batch]
            xs = [r["kv_len"] for r in sel]
            for key, color in (("unified_best", "C0"), ("synchronized_best", "C1"), ("sdpa", "C2")):
                ax.plot(xs, [100 * r[f"{key}_bw"] for r in sel], marker=marker, color=color,
                        label=f"{key} b{batch}" if batch == 1 else None)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("KV length")
        ax.set_ylabel("% of copy bandwidth")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    global SMS, DEPENDENT, SWEEP_BLOCK_N, SWEEP_MIN_KEYS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--heads", type=int, nargs=3, action="append", metavar=("HQ", "HKV", "D"),
                        help="head shapes instead of the two defaults (dry runs)")
    parser.add_argument("--adversarial", type=str, default="8x1,8x97,8x4097,2x32768",
                        help="BATCHxLENGTH cases of the adversarial checks (empty: none)")
    parser.add_argument("--sweep-block-n", type=int, nargs="+", default=list(SWEEP_BLOCK_N),
                        help="key tiles the config sweep tries (>= 16)")
    parser.add_argument("--sweep-min-keys", type=int, nargs="+", default=list(SWEEP_MIN_KEYS),
                        help="shortest slices the config sweep tries (multiples of a key tile); the split count "
                             "follows each, as the dataflow's choose_splits would give it")
    parser.add_argument("--dependent-launch", action="store_true",
                        help="also time the default unified kernel launched as a programmatic dependent (sm_90+)")
    args = parser.parse_args()
    DEPENDENT = args.dependent_launch
    SWEEP_BLOCK_N, SWEEP_MIN_KEYS = tuple(args.sweep_block_n), tuple(args.sweep_min_keys)
    if min(SWEEP_BLOCK_N) < 16 or not any(k % n == 0 for k in SWEEP_MIN_KEYS for n in SWEEP_BLOCK_N):
        parser.error("--sweep-block-n must be >= 16 and divide at least one of --sweep-min-keys")
    if DEPENDENT and (DEVICE != "cuda" or torch.cuda.get_device_capability()[0] < 9):
        parser.error("--dependent-launch needs an NVIDIA GPU of sm_90 or later")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.heads:
        SHAPES.clear()
        SHAPES.update({f"{hq}/{hkv}x{d}": (hq, hkv, d) for hq, hkv, d in args.heads})
    name = torch.cuda.get_device_properties(0).name if DEVICE == "cuda" else "cpu (dry run)"
    SMS = torch.cuda.get_device_properties(0).multi_processor_count if DEVICE == "cuda" else 4
    props = argparse.Namespace(name=name, multi_processor_count=SMS)
    copy_gbs = copy_bandwidth_gbs(DEVICE, 1 << 29)
    print(f"{props.name}, {props.multi_processor_count} SMs, copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    rows = []
    with open(args.out / "attention.jsonl", "w") as log:
        for name, batch, length in itertools.product(SHAPES, args.batches, args.lengths):
            sweep = batch == 1 or (batch == 8 and length == 4096)
            rows.append(bench_shape(name, batch, length, copy_gbs, props.multi_processor_count, log, sweep))
            r = rows[-1]
            print(f"{name} b{batch} L{length}: unified {r['unified_us']:.1f}us ({100 * r['unified_bw']:.0f}%) "
                  f"sync {r['synchronized_us']:.1f}us sdpa {r['sdpa_us']:.1f}us", flush=True)
    cases = [tuple(int(x) for x in case.split("x")) for case in args.adversarial.split(",") if case]
    hq, hkv, d = next(iter(SHAPES.values())) if args.heads else (32, 32, 128)
    checks = [adversarial(kind, batch, length, hq, hq, d) for kind in ("huge", "tiny", "dominant", "equal", "mixed")
              for batch, length in cases]
    result = {"gpu": props.name, "sms": props.multi_processor_count, "copy_gbs": copy_gbs,
              "torch": torch.__version__, "triton": __import__("triton").__version__, "rows": rows,
              "adversarial": checks}
    (args.out / "attention.json").write_text(json.dumps(result, indent=1))
    plot(rows, args.out / "attention.png")
    lines = [f"{props.name}, copy {copy_gbs:.0f} GB/s, torch {torch.__version__}, triton {result['triton']}",
             "| shape | B | KV | MB | SDPA us (%BW) | sync us | unified us (%BW) | unif/sync | best unified (%BW, cfg) "
             "| best sync | best unif/sync | unified/SDPA | fallbacks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if DEPENDENT:
        lines[1] += " unified dependent us (%BW) |"
        lines[2] += "---|"
    for r in rows:
        lines.append(f"| {r['shape']} | {r['batch']} | {r['kv_len']} | {r['bytes'] / 1e6:.1f} | "
                     f"{r['sdpa_us']:.1f} ({100 * r['sdpa_bw']:.0f}%) | {r['synchronized_us']:.1f} | "
                     f"{r['unified_us']:.1f} ({100 * r['unified_bw']:.0f}%) | {r['unified_vs_sync']:.3f} | "
                     f"{r['unified_best_us']:.1f} ({100 * r['unified_best_bw']:.0f}%, {r['unified_best_cfg']}) | "
                     f"{r['synchronized_best_us']:.1f} | {r['unified_vs_sync_best']:.3f} | "
                     f"{r['unified_vs_sdpa']:.2f} | {r['fallbacks']} |")
        if DEPENDENT:
            lines[-1] += f" {r['unified_dependent_us']:.1f} ({100 * r['unified_dependent_bw']:.0f}%) |"
    lines += ["", "| adversarial | B | KV | rel err | finite | fallbacks | expected | edge margin |",
              "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['kind']} | {c['batch']} | {c['kv_len']} | {c['err']:.2e} | {c['finite']} | "
                     f"{c['fallbacks']} | {c['expected']} | {c['edge_margin']:.2f} |")
    table = "\n".join(lines)
    (args.out / "attention.md").write_text(table + "\n")
    print(table)
    bad = [c for c in checks if not (c["finite"] and c["err"] < 2e-3 and c["fallbacks"] == c["expected"])]
    if bad:
        print(f"ADVERSARIAL FAILURES: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
