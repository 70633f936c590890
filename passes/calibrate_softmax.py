"""CalibrateSoftmax: FlashDecoding++'s unified max value φ per attention layer (§3), from calibration text.

The pass runs the graph on the calibration tokens (the compiler's CPU interpreter, one layer's weights at
a time) and, at every ATTENTION, computes the scaled, causally masked scores of every (sequence, head,
query) row. What decides exactness is each row's largest score m (runtime/unified_max.py): the unified
kernels are exact iff m lies in [φ + low, φ + high], the safe offsets of the bundle dtype. Per layer the
pass centres that window on the central 99.99% of the calibration rows' maxima, and measures the
coverage (the fraction of rows inside it). A layer whose coverage is below MIN_COVERAGE (its scores
spread wider than the window, as OPT-6.7B's do) keeps the synchronized kernels.

Options: softmax "auto" (as above), "unified" (every layer unified, whatever the coverage: the fallback
keeps it exact), "synchronized" (no calibration). Each ATTENTION gets a `softmax` attr: the scheme, φ,
the safe range, the coverage and score ranges seen — copied into the plan, the manifest and
`fdcc inspect`.

Needs: attention fused, KV cache inserted (inputs q, k, v, positions; `layer` attr). Guarantees: every
ATTENTION has a `softmax` attr.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from fdpp.compiler.errors import CompileError
from fdpp.compiler.interpreter import evaluate
from fdpp.compiler.ir import Graph, GraphEditor, Node, Op
from fdpp.passes.pass_manager import PassContext, PassResult
from fdpp.runtime.reference_ops import causal_scores
from fdpp.runtime.unified_max import safe_offsets

MIN_COVERAGE = 0.999       # of calibration rows inside the safe range, for a layer to use the unified max
CENTRAL = 1e-4             # the window is centred on the row maxima between these quantiles (0.01%, 99.99%)


def _row_maxima_and_scores(node: Node, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
    """Scaled causal scores of one attention call -> (row maxima [B*Hq*S], visible scores, flattened)."""
    b, s, _ = q.shape
    heads, kv_heads, head_dim = node.attr("n_heads"), node.attr("n_kv_heads"), node.attr("head_dim")
    qh = q.view(b, s, heads, head_dim).transpose(1, 2)                                # [B, Hq, S, D]
    kh = k.view(b, s, kv_heads, head_dim).transpose(1, 2)                             # [B, Hkv, S, D]
    scores, visible = causal_scores(qh, kh, positions, positions, node.attr("scale"))  # [B, Hq, S, S]
    return scores.amax(dim=-1).flatten(), scores.masked_select(visible.expand_as(scores))


def measure_row_maxima(graph: Graph, tokens: torch.Tensor) -> dict[int, dict]:
    """Per layer: {"row_max": sorted row maxima (float64), "score_low"/"score_high": the 0.01% / 99.99%
    quantiles of the visible scores (from a sample of up to 2^20 per sequence), "score_min"/"score_max"}."""
    positions = torch.arange(tokens.shape[1])[None, :].expand_as(tokens)
    row_maxima: dict[int, list[torch.Tensor]] = defaultdict(list)
    samples: dict[int, list[torch.Tensor]] = defaultdict(list)
    extremes: dict[int, tuple[float, float]] = {}
    pick = torch.Generator().manual_seed(0)

    def observe(node: Node, args: list[torch.Tensor]) -> None:
        if node.op is not Op.ATTENTION:
            return
        layer = node.attr("layer")
        row_max, scores = _row_maxima_and_scores(node, args[0], args[1], args[3])
        row_maxima[layer].append(row_max.double())
        samples[layer].append(scores[torch.randperm(scores.numel(), generator=pick)[:1 << 20]].double())
        low, high = extremes.get(layer, (float("inf"), float("-inf")))
        extremes[layer] = (min(low, float(scores.min())), max(high, float(scores.max())))

    with torch.no_grad():
        for row in range(tokens.shape[0]):        # one sequence at a time: scores stay [1, Hq, S, S]
            evaluate(graph, {"tokens": tokens[row:row + 1], "positions": positions[row:row + 1]},
                     {"batch": 1, "seq": tokens.shape[1]}, observe=observe, float_weights=torch.float32)
    quantiles = torch.tensor([CENTRAL, 1 - CENTRAL], dtype=torch.float64)
    found = {}
    for layer, maxima in row_maxima.items():
        score_low, score_high = torch.quantile(torch.cat(samples[layer]), quantiles)
        found[layer] = {"row_max": torch.cat(maxima).sort().values, "score_low": float(score_low),
                        "score_high": float(score_high), "score_min": extremes[layer][0],
                        "score_max": extremes[layer][1]}
    return found


def choose_unified_max(row_max: torch.Tensor, offsets: tuple[float, float]) -> dict:
    """φ for sorted row maxima and the dtype's (low, high) offsets: the window [φ + low, φ + high] centred on
    the central quantiles of the maxima. Returns φ, the absolute safe range and the coverage."""
    low, high = offsets
    quantiles = torch.tensor([CENTRAL, 1 - CENTRAL], dtype=torch.float64)
    q_low, q_high = (float(x) for x in torch.quantile(row_max.double(), quantiles))
    phi = (q_low + q_high) / 2 - (low + high) / 2
    safe = (phi + low, phi + high)
    inside = int(((row_max >= safe[0]) & (row_max <= safe[1])).sum())
    return {"phi": round(phi, 4), "safe_range": [round(safe[0], 4), round(safe[1], 4)],
            "coverage": inside / max(1, row_max.numel()), "central_row_max": [round(q_low, 4), round(q_high, 4)]}


def calibrate_softmax(graph: Graph, ctx: PassContext) -> PassResult:
    mode = ctx.options.softmax
    attentions = [n for n in graph.nodes if n.op is Op.ATTENTION]
    edit = GraphEditor(graph)
    if mode == "synchronized":
        for n in attentions:
            edit.update(n.with_(attrs={**n.attrs, "softmax": {"scheme": "synchronized",
                                                               "reason": "--softmax synchronized"}}))
        return PassResult(edit.commit(), {"synchronized": len(attentions)})
    calibration = ctx.calibration
    if calibration is None:
        raise CompileError("the unified max needs calibration text (--softmax auto|unified); "
                           "or compile with --softmax synchronized")
    key = ("row_maxima", tuple(n.name for n in attentions))
    if key not in calibration.cache:
        calibration.cache[key] = measure_row_maxima(graph, calibration.tokens)
    measured = calibration.cache[key]
    offsets = safe_offsets(ctx.options.dtype)
    counts = {"unified": 0, "synchronized": 0}
    for n in attentions:
        m = measured[n.attr("layer")]
        choice = choose_unified_max(m["row_max"], offsets)
        unified = mode == "unified" or choice["coverage"] >= MIN_COVERAGE
        scheme = "unified" if unified else "synchronized"
        reason = ("--softmax unified" if mode == "unified" else
                  f"coverage {choice['coverage']:.4%} {'>=' if unified else '<'} {MIN_COVERAGE:.1%}")
        counts[scheme] += 1
        edit.update(n.with_(attrs={**n.attrs, "softmax": {
            "scheme": scheme, **choice, "reason": reason, "rows": int(m["row_max"].numel()),
            "row_max_range": [round(float(m["row_max"][0]), 4), round(float(m["row_max"][-1]), 4)],
            "score_range": [round(m["score_low"], 4), round(m["score_high"], 4)],
            "score_extremes": [round(m["score_min"], 4), round(m["score_max"], 4)],
            "calibration": calibration.description}}))
    return PassResult(edit.commit(), counts)
