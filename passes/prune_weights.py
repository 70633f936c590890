"""PruneWeights: unstructured pruning of linear weights to `--sparsity s` (Flash-LLM §6 of DESIGN.md).

Methods, both comparing weights within each output row (so each row keeps the same count):
- magnitude: score |W[n, k]|;
- wanda: score |W[n, k]| * ||X[:, k]||_2, the norm of input channel k over the calibration tokens (Sun et
  al., 2023). The norms come from one run of the dense graph over the calibration text (the compiler's CPU
  interpreter, one layer's weights at a time); every layer is pruned against the dense model's activations.

Per row, the round(s * K) lowest scores are set to zero (ties at the threshold are pruned too, so a row can
lose a few more). The pass does not hold pruned weights: it computes each weight's per-row score threshold
once and swaps the graph's weight store for one that applies it when a weight is read. Thresholds are computed
for up to weight_jobs.WORKERS weights at a time, scores a block of rows at a time, so pruning a 7B model needs
the model's memory plus a few weights' worth (less than a layer's).

Which linears: every LINEAR whose weight name matches an `--prune-include` pattern (default all) and no
`--prune-exclude` pattern (default `*lm_head*`), except weights an EMBEDDING also reads (tied embeddings).
Each pruned LINEAR gets a `pruned` attr: method, target sparsity, measured density, weight name.

Needs: fused graph (LINEARs read PARAM weights). Guarantees: the graph's weights store returns pruned
tensors for the pruned weights; everything else is unchanged.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict

import torch

from fdpp.compiler.errors import CompileError
from fdpp.compiler.interpreter import evaluate
from fdpp.compiler.ir import Graph, GraphEditor, Node, Op
from fdpp.compiler.progress import Counter
from fdpp.passes.pass_manager import PassContext, PassResult
from fdpp.passes.weight_jobs import map_weights

from fdpp.compiler.options import PRUNE_METHODS as METHODS


class PrunedWeightStore:
    """A WeightStore that zeroes, in the weights it names, every score at or below its row's threshold."""

    def __init__(self, base, rules: dict[str, tuple[torch.Tensor | None, torch.Tensor]]):
        self.base = base
        self.rules = rules            # weight -> (input-channel norms [K] or None, per-row threshold [N])

    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def get(self, name: str) -> torch.Tensor:
        weight = self.base.get(name)
        if name not in self.rules:
            return weight
        norms, threshold = self.rules[name]
        out = torch.empty_like(weight)
        for rows in _row_blocks(weight):
            out[rows] = weight[rows].masked_fill(scores(weight[rows], norms) <= threshold[rows, None], 0)
        return out


ROW_BLOCK_ELEMENTS = 1 << 22    # scores are made for this many weights at a time: small, reused temporaries


def _row_blocks(weight: torch.Tensor) -> list[slice]:
    """Slices of about ROW_BLOCK_ELEMENTS weights covering the rows of weight [N, K]."""
    n, k = weight.shape
    step = max(1, ROW_BLOCK_ELEMENTS // max(k, 1))
    return [slice(r, r + step) for r in range(0, n, step)]


def scores(weight: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
    """[N, K] pruning scores in float32: |W|, times the input-channel norms for Wanda."""
    s = weight.float().abs()
    return s * norms.float()[None, :] if norms is not None else s


def row_thresholds(weight: torch.Tensor, norms: torch.Tensor | None, sparsity: float) -> torch.Tensor:
    """[N] per-row threshold: the round(sparsity * K)-th lowest score (-inf where nothing is pruned)."""
    return _pruning_rule(weight, norms, sparsity)[0]


def _pruning_rule(weight: torch.Tensor, norms: torch.Tensor | None, sparsity: float) -> tuple[torch.Tensor, int]:
    """(row_thresholds, the count of nonzero weights that survive them), scoring a block of rows at a time."""
    thresholds, kept = [], 0
    for rows in _row_blocks(weight):
        score = scores(weight[rows], norms)
        threshold = _thresholds(score, sparsity)
        thresholds.append(threshold)
        kept += int((score > threshold[:, None]).logical_and(weight[rows] != 0).sum())
    return torch.cat(thresholds), kept


def _thresholds(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    n, k = score.shape
    prune = round(sparsity * k)
    if prune == 0:
        return torch.full((n,), float("-inf"))
    return score.kthvalue(prune, dim=1).values


def _selected(graph: Graph, options) -> list[tuple[Node, str]]:
    """(LINEAR node, weight name) of every linear to prune."""
    tied = {graph.node(n.inputs[0]).attr("key") for n in graph.nodes
            if n.op is Op.EMBEDDING and graph.node(n.inputs[0]).op is Op.PARAM}
    chosen = []
    for n in graph.nodes:
        if n.op is not Op.LINEAR or graph.node(n.inputs[1]).op is not Op.PARAM:
            continue
        key = graph.node(n.inputs[1]).attr("key")
        if key in tied or not any(fnmatch.fnmatchcase(key, p) for p in options.prune_include):
            continue
        if any(fnmatch.fnmatchcase(key, p) for p in options.prune_exclude):
            continue
        chosen.append((n, key))
    return chosen


def _same_norms(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is None and b is None or a is not None and b is not None and torch.equal(a, b)


def measure_input_norms(graph: Graph, tokens: torch.Tensor, linears: list[Node],
                        report: Counter | None = None) -> dict[str, torch.Tensor]:
    """Per LINEAR node: ||X[:, k]||_2 of its input over all calibration tokens, float32 [K]; report(done, total)
    after each calibration sequence."""
    names = {n.name for n in linears}
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
    positions = torch.arange(tokens.shape[1])[None, :].expand_as(tokens)

    def observe(node: Node, args: list[torch.Tensor]) -> None:
        if node.name in names:
            x = args[0].double().reshape(-1, args[0].shape[-1])                      # [tokens, K]
            sums[node.name] = sums[node.name] + x.pow(2).sum(0)

    with torch.no_grad():
        for row in range(tokens.shape[0]):
            evaluate(graph, {"tokens": tokens[row:row + 1], "positions": positions[row:row + 1]},
                     {"batch": 1, "seq": tokens.shape[1]}, observe=observe, float_weights=torch.float32)
            if report:
                report(row + 1, tokens.shape[0])
    return {name: s.sqrt().float() for name, s in sums.items()}


def prune_weights(graph: Graph, ctx: PassContext) -> PassResult:
    opts = ctx.options
    if opts.sparsity <= 0:
        return PassResult(graph, {})
    if opts.prune not in METHODS:
        raise CompileError(f"unknown pruning method {opts.prune!r}; valid: {', '.join(METHODS)}")
    selected = _selected(graph, opts)
    if not selected:
        raise CompileError(f"--sparsity {opts.sparsity}: no linear weight matches --prune-include "
                           f"{list(opts.prune_include)} outside --prune-exclude {list(opts.prune_exclude)}")
    norms: dict[str, torch.Tensor] = {}
    if opts.prune == "wanda":
        if ctx.calibration is None:
            raise CompileError("Wanda pruning needs calibration text; give --calibration or use --prune magnitude")
        key = ("linear_input_norms", tuple(n.name for n, _ in selected))
        if key not in ctx.calibration.cache:
            ctx.calibration.cache[key] = measure_input_norms(graph, ctx.calibration.tokens, [n for n, _ in selected],
                                                             ctx.counter("Wanda input norms: calibration sequences"))
        norms = ctx.calibration.cache[key]
    first_node: dict[str, Node] = {}               # weight -> the first linear reading it
    for node, key in selected:
        earlier = first_node.setdefault(key, node)
        if earlier is not node and not _same_norms(norms.get(earlier.name), norms.get(node.name)):
            raise CompileError(f"weight {key} feeds two linears with different inputs; Wanda cannot prune it "
                               f"for both; exclude it with --prune-exclude")

    def prune_one(key: str) -> tuple[torch.Tensor | None, torch.Tensor, float]:
        """(channel norms, per-row threshold [N], density kept) of one weight."""
        weight = graph.weights.get(key)
        channel_norms = norms.get(first_node[key].name)
        threshold, kept = _pruning_rule(weight, channel_norms, opts.sparsity)
        return channel_norms, threshold, kept / weight.numel()

    keys = list(first_node)
    rules: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    density: dict[str, float] = {}
    for key, (channel_norms, threshold, kept_fraction) in zip(keys, map_weights(prune_one, keys,
                                                                                 ctx.counter("pruned weights"))):
        rules[key], density[key] = (channel_norms, threshold), kept_fraction
    edit = GraphEditor(graph)
    for node, key in selected:
        edit.update(node.with_(attrs={**node.attrs, "pruned": {
            "method": opts.prune, "sparsity": opts.sparsity, "density": density[key], "weight": key}}))
    pruned = edit.commit().with_(weights=PrunedWeightStore(graph.weights, rules))
    return PassResult(pruned, {f"pruned ({opts.prune})": len(rules)})
