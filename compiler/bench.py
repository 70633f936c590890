"""`fdcc bench`: a bundle's prefill latency and decode speed on the local GPU, next to Hugging Face.

Measured in one run: for each batch size and context length, fdpp's prefill time and decode tokens/s
(CUDA graphs), then Hugging Face `generate` on a model of the same architecture and dtype (eager, and
with the static cache), the ratios, and a per-op table of one decode step: each op kind's steps (all layers)
replayed in a CUDA graph, with the bytes they must move and the bandwidth against a measured copy.
Weights of the Hugging Face model are random (same shapes); speed does not depend on their values.
Writes a table to stdout, and JSON plus a PNG plot to --out.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import fdpp
from fdpp.runtime.dims import evaluate_shape


def copy_bandwidth_gbs(device: str, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (bytes read plus written, median of 20 after 5 warm-ups), the
    yardstick of the GPU benchmarks' "% of copy bandwidth". On a CPU dry run: a nominal 10 GB/s."""
    if device == "cpu":
        return 10.0
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return 2 * nbytes / statistics.median(times[5:]) / 1e9


def graph_replay_ms(calls: list[Callable[[], object]], replays: int = 15, warm_replays: int = 1) -> float:
    """Median GPU time of running `calls` in order, captured once in a CUDA graph and replayed (no Python, no
    launch gaps); each call runs once outside the graph first (compile, allocate). Divide by len(calls) for
    the time of one call."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    times = []
    for i in range(warm_replays + replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        if i >= warm_replays:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def _hf_model(manifest, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = dict(manifest.model)
    kind = cfg.pop("model_type")
    for key in ("kv_layers", "kv_heads", "head_dim"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(kind, **cfg)
    dtype = getattr(torch, manifest.dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    return model


def _hf_decode(model, batch: int, context: int, new: int, static: bool) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of HF generate: prefill timed as a 1-token generate."""
    ids = torch.randint(10, 1000, (batch, context), device=model.device)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if static:
        kwargs["cache_implementation"] = "static"

    def run(n: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    run(new)                                   # warm-up (and, with the static cache, compilation)
    one = statistics.median(run(1) for _ in range(3))
    full = statistics.median(run(new) for _ in range(3))
    return one, batch * (new - 1) / max(full - one, 1e-9)


def _fdpp_decode(model, batch: int, context: int, new: int) -> tuple[float, float]:
    prompts = torch.randint(10, 1000, (batch, context)).tolist()
    model.generate(prompts, max_new_tokens=new)                       # warm-up, captures the graph
    runs = [model.generate(prompts, max_new_tokens=new) for _ in range(3)]
    prefill = statistics.median(r.prefill_seconds for r in runs)
    decode = statistics.median(r.decode_tokens_per_second for r in runs)
    return prefill, decode


def step_bytes(model, step, batch: int, context: int, shapes: dict[str, tuple]) -> int:
    """Bytes one decode step of `step` must move at this batch and context: the weights it reads (sparse
    encodings as stored), its input and output activations, and for attention the KV cache it reads."""
    env = {"batch": batch, "seq": 1, "rows": batch}
    itemsize = torch.tensor([], dtype=model.dtype).element_size()
    total = 0
    gather = step.op.value in ("embedding", "position_lookup")     # reads only the rows it gathers
    for name in step.inputs:
        if name.startswith("@"):
            w = model.bundle.weights[name[1:]]
            total += (math.prod(evaluate_shape(step.out_shape, env)) * w.element_size() if gather
                      else w.numel() * w.element_size())
        elif name in shapes:
            width = 8 if name in ("tokens", "positions") else itemsize            # int64 ids and positions
            total += math.prod(evaluate_shape(shapes[name], env)) * width
    total += math.prod(evaluate_shape(step.out_shape, env)) * itemsize
    if step.op.value == "attention":
        a = step.attrs
        total += 2 * batch * a["n_kv_heads"] * context * a["head_dim"] * itemsize
    return total


def _linear_shape(model, step) -> str:
    """'N x K' of a LINEAR's weight as the graph sees it (sparse: the encoded matrix's logical shape), so the
    per-op table shows each projection's share of the step."""
    if "sparse" in step.attrs:
        n, k = step.attrs["sparse"]["shape"]
    else:
        n, k = model.bundle.weights[step.inputs[1][1:]].shape
    return f"{n}x{k}"


def _op_breakdown(model, batch: int, context: int, copy_gbs: float) -> list[dict]:
    """Per op kind, kernel and (for linears) weight shape, the GPU time of one decode step at this batch and context, the bytes it must
    move, and the bandwidth that gives against the measured copy bandwidth.

    Every step's inputs come from one decode step whose buffers are all kept; then, per kind, all steps of
    that kind (every layer's, in plan order, so no weight is read twice and L2 holds nothing for them) are
    captured in one CUDA graph and replayed: the time is GPU time, without Python or launch gaps. With
    programmatic dependent launch each kernel then follows a kernel of its own kind, not the one it follows in
    the model, so where a kernel lets the next start is judged by whole-step tokens/s, not by this table
    (docs/architecture.md note 23)."""
    executor = model.executor
    cache = model._cache(batch, context + 1)
    tokens = torch.randint(10, 1000, (batch, 1), device=model.device)
    positions = torch.full((batch, 1), context, device=model.device)
    env = executor.launch_env(batch, 1, cache)
    buffers = {"tokens": tokens, "positions": positions}
    groups: dict[tuple[str, str, str], list] = {}
    for step in model.plan.steps:
        buffers[step.output] = executor.run_step(step, buffers, cache, env, "decode")
        choice = step.kernel_for(batch, "decode")
        if step.op.value not in ("reshape", "slice"):
            shape = _linear_shape(model, step) if step.op.value == "linear" else ""
            groups.setdefault((step.op.value, choice.kernel if choice else "torch", shape), []).append(step)
    shapes = {"tokens": ("batch", "seq"), "positions": ("batch", "seq"),
              **{s.output: tuple(s.out_shape) for s in model.plan.steps}}
    rows = []
    for (op, kernel, shape), steps in groups.items():
        ms = graph_replay_ms([lambda step=step: executor.run_step(step, buffers, cache, env, "decode")
                              for step in steps], replays=10, warm_replays=3)
        moved = sum(step_bytes(model, step, batch, context, shapes) for step in steps)
        gbs = moved / (ms * 1e6) if ms > 0 else 0.0
        rows.append({"op": op, "kernel": kernel, "shape": shape, "steps": len(steps), "ms": ms, "bytes": moved, "gbs": gbs,
                     "fraction_of_copy": gbs / copy_gbs if copy_gbs else None})
    return sorted(rows, key=lambda r: -r["ms"])


def run_bench(bundle: str, batches: list[int], contexts: list[int], new_tokens: int, out_dir: Path,
              with_hf: bool, say: Callable[[str], None]) -> dict:
    if not torch.cuda.is_available():
        raise fdpp.FdppError("fdcc bench needs a GPU; none is visible to torch here")
    device = torch.device("cuda", torch.cuda.current_device())
    model = fdpp.load(bundle, device="cuda")
    torch.cuda.synchronize(device)
    weights_gpu_bytes = torch.cuda.memory_allocated(device)            # the loaded bundle, before any cache
    hf = _hf_model(model.manifest, device) if with_hf else None
    rows = []
    for batch in batches:
        for context in contexts:
            if batch > model.envelope.max_batch or context + new_tokens > model.envelope.max_seq_len:
                say(f"skip batch {batch} context {context}: outside the bundle's envelope")
                continue
            row = {"batch": batch, "context": context}
            row["fdpp_prefill_ms"], row["fdpp_decode_tok_s"] = (
                v * f for v, f in zip(_fdpp_decode(model, batch, context, new_tokens), (1e3, 1)))
            if hf is not None:
                for name, static in (("hf_eager", False), ("hf_static", True)):
                    try:
                        p, d = _hf_decode(hf, batch, context, new_tokens, static)
                        row[f"{name}_prefill_ms"], row[f"{name}_decode_tok_s"] = p * 1e3, d
                        row[f"ratio_vs_{name}"] = row["fdpp_decode_tok_s"] / d
                    except Exception as e:  # report, keep measuring the rest
                        row[f"{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            say(json.dumps(row))
            rows.append(row)
    copy_gbs = copy_bandwidth_gbs(str(device), 1 << 30)
    breakdown = _op_breakdown(model, batches[0], contexts[0], copy_gbs)
    result = {
        "bundle": bundle, "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "new_tokens": new_tokens,
        "model": model.manifest.source, "dtype": model.manifest.dtype, "rows": rows,
        "bundle_bytes": Path(bundle).stat().st_size, "gpu_bytes_after_load": weights_gpu_bytes,
        "gpu_peak_bytes": torch.cuda.max_memory_allocated(device),
        "sparsity": {k: v for k, v in model.manifest.sparsity.items() if k != "weights"},
        "copy_gbs": copy_gbs,
        "decode_step_breakdown": {"batch": batches[0], "context": contexts[0], "ops": breakdown},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1))
    _plot(result, out_dir / "bench.png")
    return result


def format_table(result: dict) -> str:
    lines = [f"{result['model']} ({result['dtype']}) on {result['gpu']}, torch {result['torch']}, "
             f"{result['new_tokens']} new tokens; bundle {result['bundle_bytes'] / 1e9:.2f} GB, "
             f"GPU memory after load {result['gpu_bytes_after_load'] / 1e9:.2f} GB, peak "
             f"{result['gpu_peak_bytes'] / 1e9:.2f} GB",
             f"{'batch':>5} {'ctx':>6} {'prefill ms':>10} {'fdpp tok/s':>10} {'HF eager':>9} {'HF static':>9} "
             f"{'x eager':>8} {'x static':>8}"]
    for r in result["rows"]:
        lines.append(f"{r['batch']:>5} {r['context']:>6} {r['fdpp_prefill_ms']:>10.1f} {r['fdpp_decode_tok_s']:>10.1f} "
                     f"{r.get('hf_eager_decode_tok_s', float('nan')):>9.1f} "
                     f"{r.get('hf_static_decode_tok_s', float('nan')):>9.1f} "
                     f"{r.get('ratio_vs_hf_eager', float('nan')):>8.2f} {r.get('ratio_vs_hf_static', float('nan')):>8.2f}")
    b = result["decode_step_breakdown"]
    total = sum(o["ms"] for o in b["ops"])
    moved = sum(o.get("bytes", 0) for o in b["ops"])
    lines.append(f"one decode step by op kind (each kind's steps replayed back to back in a CUDA graph), "
                 f"batch {b['batch']}, context {b['context']}: {total:.3f} ms summed, {moved / 1e6:.1f} MB moved, "
                 f"{moved / (total * 1e6):.0f} GB/s; copy bandwidth {result.get('copy_gbs', float('nan')):.0f} GB/s")
    lines.append(f"  {'op':<16} {'kernel':<28} {'shape':<11} {'steps':>5} {'ms':>8} {'share':>6} {'MB':>9} {'GB/s':>7} {'%copy':>6}")
    for o in b["ops"][:16]:
        lines.append(f"  {o['op']:<16} {o['kernel']:<28} {o.get('shape', ''):<11} {o.get('steps', 0):>5} {o['ms']:8.3f} {100 * o['ms'] / total:5.1f}% "
                     f"{o.get('bytes', 0) / 1e6:9.2f} {o.get('gbs', 0):7.0f} {100 * (o.get('fraction_of_copy') or 0):5.1f}%")
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"b{r['batch']}/c{r['context']}" for r in result["rows"]]
    x = range(len(labels))
    for i, (key, name) in enumerate((("fdpp_decode_tok_s", "fdpp"), ("hf_eager_decode_tok_s", "HF eager"),
                                     ("hf_static_decode_tok_s", "HF static cache"))):
        ax.bar([j + 0.27 * (i - 1) for j in x], [r.get(key, 0) for r in result["rows"]], width=0.27, label=name)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"{result['model']} on {result['gpu']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
