"""SelectKernels: the heuristic dataflow (FlashDecoding++ §5) — bind every op to a kernel per row bucket.

For each linear [N, K] and each bucket of M (rows = tokens in the launch), a roofline cost model of the
target estimates three implementations — CUDA-core GEMV, flat GEMM (M padded to 16, tensor cores), and
the vendor tensor-core GEMM — and keeps the cheapest; the inflection points M1 and M2 follow. With a
profile from `fdcc tune`, measured times replace the cost model for every shape the profile covers.
Attention gets a decode kernel per batch bucket (split count per bucket) and a prefill kernel, unified-max
or synchronized as calibrate_softmax decided. The choices are data in the node's `kernels` attr, copied into the
plan and printed by `fdcc inspect`.

Needs: fused graph with KV cache inserted. Guarantees: every op that becomes a plan step has at least
one KernelChoice covering every row count.
"""

from __future__ import annotations

import math
from dataclasses import asdict

from fdpp.compiler.ir import Graph, GraphEditor, Node, Op
from fdpp.passes.pass_manager import PassContext, PassResult
from fdpp.passes.sparse_choice import choose_sparse_linear, measured_sparse_config
from fdpp.runtime.schema import KernelChoice

LAUNCH_US = 3.0
# Fraction of datasheet peak each implementation reaches, and the largest M it is offered for. Measured with
# CUDA-graph replays over rotating weights (docs/perf/2026-11-22-h200-fused-linears.md, Llama-2-7B's decode
# shapes): on an H200 the flat GEMM streams weights at 58-84% of the 4.8 TB/s datasheet figure at M <= 16
# (~0.77 weighted by bytes), cuBLAS at 0.50-0.80; on an H100 the GEMV and the flat GEMM are within 2% at
# M = 1 (0.83 / 0.81 on QKV). Until `fdcc tune` measures a target, these fractions stand for every target.
_EFFICIENCY = {
    "gemv": {"bandwidth": 0.72, "compute": 0.60, "pad": 1, "max_rows": 4},
    "flat_gemm": {"bandwidth": 0.75, "compute": 0.50, "pad": 16, "max_rows": 64},
    "tc_gemm": {"bandwidth": 0.70, "compute": 0.75, "pad": 128, "max_rows": 1 << 30},
}
LINEAR_KERNELS = tuple(_EFFICIENCY)      # the dense linear kernels a choice (or a tune profile entry) may name


def flat_gemm_config(n: int, k: int) -> dict[str, int]:
    """Tile configuration of the flat GEMM for a weight [N, K], from the H200 sweep: narrow N tiles and long
    K chunks for small N (so the grid still fills the GPU), wider N tiles and shallower pipelines for wide N."""
    if n <= 4096:
        return {"block_n": 32, "block_k": 256, "num_stages": 5, "num_warps": 4}
    if n <= 12288:
        return {"block_n": 32, "block_k": 128, "num_stages": 4, "num_warps": 4}
    return {"block_n": 64, "block_k": 128, "num_stages": 3, "num_warps": 4}


_SIMPLE = {Op.EMBEDDING: "embedding", Op.POSITION_LOOKUP: "position_lookup", Op.RMS_NORM: "rms_norm",
           Op.LAYER_NORM: "layer_norm", Op.ROTARY: "rotary", Op.GATED_ACT: "gated_act", Op.RELU: "activation",
           Op.GELU: "activation", Op.SILU: "activation", Op.ADD: "elementwise", Op.MUL: "elementwise"}


def row_buckets(max_rows: int) -> list[int]:
    """1, 2, 4, ... up to and including max_rows."""
    buckets, m = [], 1
    while m < max_rows:
        buckets.append(m)
        m *= 2
    return buckets + [max_rows]


def linear_cost_us(kernel: str, m: int, n: int, k: int, target, bytes_per_weight: float = 2.0) -> float:
    eff = _EFFICIENCY[kernel]
    padded = math.ceil(m / eff["pad"]) * eff["pad"]
    moved = n * k * bytes_per_weight + 2 * (m * k + m * n)
    peak = target.vector_tflops_fp32 if kernel == "gemv" else target.tensor_tflops_fp16
    memory_us = moved / (target.memory_bandwidth_gbs * 1e3 * eff["bandwidth"])
    compute_us = 2 * padded * n * k / (peak * 1e6 * eff["compute"])
    return max(memory_us, compute_us) + LAUNCH_US


def _measured(profile: dict, n: int, k: int, gated: bool) -> list[dict]:
    """The profile's entries for weight [N, K] (gated: a stacked gate/up weight with its fused epilogue), by M."""
    return sorted((e for e in profile["entries"] if (e["n"], e["k"], e.get("gated", False)) == (n, k, gated)),
                  key=lambda e: e["m"])


def dense_linear_cost_us(m: int, n: int, k: int, target, profile: dict | None, gated: bool = False) -> float:
    """The best dense kernel's time at m rows: measured where the profile has [N, K] at or above m, else the
    cost model."""
    if profile:
        measured = [e for e in _measured(profile, n, k, gated) if e["m"] >= m]
        if measured:
            return min(measured[0]["us"], measured[0]["vendor_us"])
    return min(linear_cost_us(name, m, n, k, target) for name, eff in _EFFICIENCY.items() if m <= eff["max_rows"])


def choose_linear(n: int, k: int, max_rows: int, target) -> tuple[KernelChoice, ...]:
    choices: list[KernelChoice] = []
    for m in row_buckets(max_rows):
        costs = {name: linear_cost_us(name, m, n, k, target) for name, eff in _EFFICIENCY.items()
                 if m <= eff["max_rows"]}
        best = min(costs, key=costs.get)
        reason = "cost model: " + ", ".join(f"{name} {us:.1f}us" for name, us in costs.items())
        config = flat_gemm_config(n, k) if best == "flat_gemm" else {}
        if choices and choices[-1].kernel == best:
            choices[-1] = KernelChoice(m, best, config, choices[-1].reason)   # widen the bucket
        else:
            choices.append(KernelChoice(m, best, config, reason))
    return tuple(choices)


def choose_linear_from_profile(n: int, k: int, max_rows: int, profile: dict,
                               gated: bool = False) -> tuple[KernelChoice, ...] | None:
    """Per row bucket, the candidate `fdcc tune` measured fastest at the nearest measured M at or above it;
    the vendor GEMM past the largest measured M. None if the profile has no entry for [N, K] (and gated)."""
    measured = _measured(profile, n, k, gated)
    if not measured:
        return None
    choices: list[KernelChoice] = []
    for m in row_buckets(max_rows):
        entry = next((e for e in measured if e["m"] >= m), None)
        if entry is None:
            kernel, config = "tc_gemm", {}
            reason = f"profile ({profile['gpu']}): past the largest measured M={measured[-1]['m']}"
        else:
            kernel, config = entry["kernel"], dict(entry["config"])
            reason = (f"profile ({profile['gpu']}): {entry['us']:.1f}us at M={entry['m']}, "
                      f"vendor GEMM {entry['vendor_us']:.1f}us")
        if choices and choices[-1].kernel == kernel and choices[-1].config == config:
            choices[-1] = KernelChoice(m, kernel, config, choices[-1].reason)
        else:
            choices.append(KernelChoice(m, kernel, config, reason))
    return tuple(choices)


# Decode attention config, from the H200 sweep (docs/perf/2026-11-22-h200-unified-max.md): 64-key tiles,
# 3 pipeline stages, and about one program per SM — at batch 1 the best split counts were 4 for 32 KV heads
# and 16 for 8 KV heads, one wave; two waves lost 5-15%.
DECODE_BLOCK_N = 64          # keys per inner step of the decode kernels
DECODE_NUM_STAGES = 3
MIN_SPLIT_KEYS = 128         # no decode slice is cut shorter (short contexts use fewer splits)


def choose_splits(batch: int, n_kv_heads: int, multiprocessors: int, max_len: int,
                  min_split_keys: int = MIN_SPLIT_KEYS, max_splits: int = 64) -> int:
    """Decode slices per (sequence, KV head) for a batch bucket: about one program per SM (a power of two),
    never more than max_len cut into slices of min_split_keys allows."""
    want = max(1, multiprocessors // max(1, batch * n_kv_heads))
    limit = min(want, max_splits, max(1, -(-max_len // min_split_keys)))
    splits = 1
    while splits * 2 <= limit:
        splits *= 2
    return splits


def choose_attention(node: Node, target, max_rows: int, batch_buckets: tuple[int, ...],
                     max_len: int) -> tuple[KernelChoice, ...]:
    """Decode: one split-KV kernel per batch bucket (the split count fills the GPU for that batch), with the
    unified max where calibration chose it; prefill: one causal kernel."""
    softmax = node.attr("softmax", {"scheme": "synchronized"})
    unified = softmax["scheme"] == "unified"
    decode_kernel = "decode_attention_unified" if unified else "decode_attention_split_kv"
    why = (f"unified max phi={softmax['phi']} ({softmax['reason']})" if unified
           else f"synchronized softmax ({softmax.get('reason', 'not calibrated')})")
    choices = []
    for bucket in batch_buckets:
        splits = choose_splits(bucket, node.attr("n_kv_heads"), target.multiprocessors, max_len)
        config = {"splits": splits, "min_split_keys": MIN_SPLIT_KEYS, "block_n": DECODE_BLOCK_N,
                  "num_stages": DECODE_NUM_STAGES}
        reason = f"{why}; {splits} splits x {bucket} x {node.attr('n_kv_heads')} KV heads on {target.multiprocessors} SMs"
        choices.append(KernelChoice(bucket, decode_kernel, config, reason, "decode"))
    prefill_kernel = "prefill_attention_unified" if unified else "prefill_attention"
    choices.append(KernelChoice(max_rows, prefill_kernel, {}, f"causal prefill over the cache; {why}", "prefill"))
    return tuple(choices)


def _choices(node: Node, graph: Graph, target, max_rows: int, profile: dict | None,
             batch_buckets: tuple[int, ...], max_len: int) -> tuple[KernelChoice, ...] | None:
    if node.op is Op.LINEAR:
        n, k = graph.node(node.inputs[1]).type.shape
        gated = bool(node.attr("gated"))
        measured = choose_linear_from_profile(n, k, max_rows, profile, gated) if profile else None
        return measured or choose_linear(n, k, max_rows, target)
    if node.op is Op.ATTENTION:
        return choose_attention(node, target, max_rows, batch_buckets, max_len)
    if node.op in _SIMPLE:
        return (KernelChoice(max_rows, _SIMPLE[node.op]),)
    return None


def select_kernels(graph: Graph, ctx: PassContext) -> PassResult:
    opts = ctx.options
    max_rows = max(opts.max_batch * opts.prefill_chunk, opts.max_batch)
    edit = GraphEditor(graph)
    count = 0
    sparse = 0
    for n in graph.nodes:
        choices = _choices(n, graph, ctx.target, max_rows, opts.profile, opts.batch_buckets(),
                           opts.max_seq_len + opts.prefill_chunk)
        if choices is None:
            continue
        attrs = {**n.attrs}
        if "pruned" in n.attrs:
            decision = _sparse_decision(n, graph, ctx, max_rows)
            attrs["sparse_format"] = {k: v for k, v in decision.items() if k != "choices"}
            if decision["format"] != "dense":
                choices = decision["choices"]
                sparse += 1
        edit.update(n.with_(attrs={**attrs, "kernels": tuple(asdict(c) for c in choices)}))
        count += 1
    return PassResult(edit.commit(), {"bound": count, **({"sparse": sparse} if sparse else {})})


def _sparse_decision(node: Node, graph: Graph, ctx: PassContext, max_rows: int) -> dict:
    """Dense or a sparse encoding for a pruned linear, and its sparse kernels (passes/sparse_choice.py)."""
    opts = ctx.options
    n, k = graph.node(node.inputs[1]).type.shape
    return pruned_linear_decision(n, k, node.attr("pruned")["density"], bool(node.attrs.get("gated")),
                                  bool(node.attrs.get("residual")), ctx.target, opts.profile, opts.dtype,
                                  opts.sparse_format, row_buckets(max_rows), opts.batch_buckets())


def pruned_linear_decision(n: int, k: int, density: float, gated: bool, residual: bool, target,
                           profile: dict | None, dtype: str, sparse_format: str, buckets: list[int],
                           decode_buckets: tuple[int, ...]) -> dict:
    """choose_sparse_linear for a pruned weight [N, K] (gated: stacked gate/up with its activation; residual: a
    residual-add epilogue), its dense cost and measured sparse entries taken from the profile (or the cost model)."""
    return choose_sparse_linear(n, k, density, dtype, sparse_format, buckets, decode_buckets, target,
                                lambda m: dense_linear_cost_us(m, n, k, target, profile, gated),
                                epilogue=gated or residual,
                                measured=lambda fmt, m: measured_sparse_config(profile, fmt, n, k, gated, density, m),
                                gpu=(profile or {}).get("gpu", ""))
