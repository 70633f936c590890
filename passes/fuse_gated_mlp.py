"""FuseGatedMLP: act(gate) * up -> GATED_ACT(gate, up), the middle of SwiGLU / GeGLU MLPs.

Needs: canonicalized graph. Guarantees: gate and up have the output's shape (no broadcasting), the
activation is SiLU or GELU (exact or tanh), and the act node has no other reader.
"""

from __future__ import annotations

from fdpp.compiler.ir import Graph, Node, Op
from fdpp.passes.matching import replace_matches
from fdpp.passes.pass_manager import PassContext, PassResult


def _activation(node: Node) -> str | None:
    if node.op is Op.SILU:
        return "silu"
    if node.op is Op.GELU:
        return "gelu_tanh" if node.attr("approximate") == "tanh" else "gelu"
    return None


def fuse_gated_mlp(graph: Graph, ctx: PassContext) -> PassResult:
    users = graph.users()

    def fused(graph: Graph, n: Node) -> Node | None:
        if n.op is not Op.MUL:
            return None
        for act_name, up in (n.inputs, n.inputs[::-1]):
            act = graph.node(act_name)
            kind = _activation(act)
            if kind is None or len(users[act_name]) != 1:
                continue
            gate = act.inputs[0]
            if graph.node(gate).type == n.type and graph.node(up).type == n.type:
                return Node(n.name + "_gated", Op.GATED_ACT, (gate, up), n.type, {"activation": kind}, n.source)
        return None

    result, count = replace_matches(graph, fused)
    return PassResult(result, {"gated_act": count})
