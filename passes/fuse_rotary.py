"""FuseRotary: x * unsqueeze(cos, 1) + cat(-x[..., D/2:], x[..., :D/2]) * unsqueeze(sin, 1) -> ROTARY.

Needs: canonicalized graph. Guarantees: the match is the rotate-half convention on x [B, H, S, D] with
cos/sin [B|1, S, D] and both slices splitting the last dim exactly in half; the ROTARY node (layout
"heads") computes runtime.reference_ops.rotary.
"""

from __future__ import annotations

from fdpp.compiler.ir import Graph, Node, Op
from fdpp.passes.matching import replace_matches
from fdpp.passes.pass_manager import PassContext, PassResult


def _unsqueezed_table(graph: Graph, name: str) -> str | None:
    n = graph.node(name)
    if n.op is Op.UNSQUEEZE and n.attr("dim") == 1 and graph.node(n.inputs[0]).type.rank == 3:
        return n.inputs[0]
    return None


def _is_half(graph: Graph, name: str, x: str, first: bool) -> bool:
    n = graph.node(name)
    if n.op is not Op.SLICE or n.inputs[0] != x or n.attr("step") != 1:
        return False
    d = graph.node(x).type.shape[-1]
    if n.attr("dim") % 4 != 3 or not isinstance(d, int) or d % 2:
        return False
    return (n.attr("start"), n.attr("end")) == ((0, d // 2) if first else (d // 2, d))


def _match(graph: Graph, node: Node) -> tuple[str, str, str] | None:
    """node = ADD(x*cos, rotate_half(x)*sin) -> (x, cos, sin)."""
    if node.op is not Op.ADD or node.type.rank != 4:
        return None
    for plain_name, rotated_name in (node.inputs, node.inputs[::-1]):
        plain, rotated = graph.node(plain_name), graph.node(rotated_name)
        if plain.op is not Op.MUL or rotated.op is not Op.MUL:
            continue
        for x, cos_u in (plain.inputs, plain.inputs[::-1]):
            cos = _unsqueezed_table(graph, cos_u)
            if cos is None or graph.node(x).type != node.type:
                continue
            for cat_name, sin_u in (rotated.inputs, rotated.inputs[::-1]):
                sin, cat = _unsqueezed_table(graph, sin_u), graph.node(cat_name)
                if sin is None or cat.op is not Op.CAT or cat.attr("dim") % 4 != 3 or len(cat.inputs) != 2:
                    continue
                neg = graph.node(cat.inputs[0])
                if neg.op is Op.NEG and _is_half(graph, neg.inputs[0], x, first=False) \
                        and _is_half(graph, cat.inputs[1], x, first=True):
                    return x, cos, sin
    return None


def _fused(graph: Graph, n: Node) -> Node | None:
    m = _match(graph, n)
    if m is None:
        return None
    x, cos, sin = m
    head_dim = graph.node(x).type.shape[-1]
    return Node(n.name + "_rotary", Op.ROTARY, (x, cos, sin), n.type, {"head_dim": head_dim, "layout": "heads"},
                n.source)


def fuse_rotary(graph: Graph, ctx: PassContext) -> PassResult:
    fused, count = replace_matches(graph, _fused)
    return PassResult(fused, {"rotary": count})
