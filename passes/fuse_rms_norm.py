"""FuseRMSNorm: weight * cast(x * rsqrt(mean(x^2, -1) + eps)) -> RMS_NORM(x, weight).

Needs: canonicalized graph. Guarantees: each match computes Hugging Face's LlamaRMSNorm exactly as
runtime.reference_ops.rms_norm defines it: power 2, mean over the last dim with keepdim, eps a constant,
weight a 1-D parameter of the hidden size.
"""

from __future__ import annotations

from fdpp.compiler.ir import Graph, Node, Op
from fdpp.passes.matching import (constant_value, is_constant, is_last_dim, replace_matches, split_operands,
                                  strip_casts)
from fdpp.passes.pass_manager import PassContext, PassResult


def _match(graph: Graph, node: Node) -> tuple[str, str, float] | None:
    """node = MUL(weight, normed) -> (x, weight, eps)."""
    if node.op is not Op.MUL:
        return None
    hidden = node.type.shape[-1] if node.type.rank else None
    is_weight = lambda n: n.op is Op.PARAM and n.type.shape == (hidden,)
    pair = split_operands(graph, node, is_weight)
    if pair is None:
        return None
    weight, normed = pair
    cast_back = graph.node(normed)
    scaled = graph.node(strip_casts(graph, normed))                    # x * rsqrt(var + eps)
    if scaled.op is not Op.MUL:
        return None
    pair = split_operands(graph, scaled, lambda n: n.op is Op.RSQRT)
    if pair is None:
        return None
    rsqrt, x = pair
    add = graph.node(graph.node(rsqrt).inputs[0])
    if add.op is not Op.ADD or constant_value(graph, add.inputs[1]) is None:
        return None
    eps = float(constant_value(graph, add.inputs[1]))
    mean = graph.node(add.inputs[0])
    if mean.op is not Op.MEAN or not mean.attr("keepdim") or not is_last_dim(mean, mean.attr("dims")):
        return None
    power = graph.node(mean.inputs[0])
    if power.op is not Op.POW or not is_constant(graph, power.inputs[1], 2) or power.inputs[0] != x:
        return None
    original = strip_casts(graph, x)
    if graph.node(original).type.shape != node.type.shape:
        return None
    # HF casts the normalised value back to x's dtype; any other cast changes the numbers
    if cast_back.op is Op.CAST and cast_back.attr("dtype") != graph.node(original).type.dtype:
        return None
    if graph.node(x).op is Op.CAST and not graph.node(x).type.dtype.startswith("float"):
        return None
    return original, weight, eps


def _fused(graph: Graph, n: Node) -> Node | None:
    m = _match(graph, n)
    if m is None:
        return None
    x, weight, eps = m
    return Node(n.name + "_rmsnorm", Op.RMS_NORM, (x, weight), n.type, {"eps": eps}, n.source)


def fuse_rms_norm(graph: Graph, ctx: PassContext) -> PassResult:
    fused, count = replace_matches(graph, _fused)
    return PassResult(fused, {"rms_norm": count})
