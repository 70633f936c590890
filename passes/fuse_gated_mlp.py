"""FuseGatedMLP: act(gate) * up -> GATED_ACT(gate, up), the middle of SwiGLU / GeGLU MLPs.

Needs: canonicalized graph. Guarantees: gate and up have the output's shape (no broadcasting), the
activation is SiLU or GELU (exact or tanh), and the act node has no other reader.
"""

from __future__ import annotations

from fdpp.compiler.ir import Graph, GraphEditor, Node, Op
from fdpp.passes.pass_manager import PassContext, PassResult


def _activation(node: Node) -> str | None:
    if node.op is Op.SILU:
        return "silu"
    if node.op is Op.GELU:
        return "gelu_tanh" if node.attr("approximate") == "tanh" else "gelu"
    return None


def fuse_gated_mlp(graph: Graph, ctx: PassContext) -> PassResult:
    edit = GraphEditor(graph)
    users = graph.users()
    count = 0
    for n in graph.nodes:
        if n.op is not Op.MUL:
            continue
        for act_name, up in (n.inputs, n.inputs[::-1]):
            act = graph.node(act_name)
            kind = _activation(act)
            if kind is None or len(users[act_name]) != 1:
                continue
            gate = act.inputs[0]
            if graph.node(gate).type != n.type or graph.node(up).type != n.type:
                continue
            fused = Node(n.name + "_gated", Op.GATED_ACT, (gate, up), n.type, {"activation": kind}, n.source)
            edit.replace_uses(n.name, edit.add(fused, before=n.name))
            count += 1
            break
    return PassResult(edit.commit(), {"gated_act": count})
