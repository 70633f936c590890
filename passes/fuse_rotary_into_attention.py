"""FuseRotaryIntoAttention: ROTARY(q), ROTARY(k) -> ATTENTION(q, k, v, positions) becomes one ATTENTION that
rotates q and k itself.

At decode the two rotaries were two launches of ~1.5 us each per layer (64 of a llama2-7b step's ~260),
while the decode attention kernel already loads every query row and writes the step's key: it rotates both
on the way (codegen/kernels/attention_decode.py, ROTARY). Prefill still runs the rotary kernel, into
workspaces of the attention step (codegen/launch_specs.py).

Needs: KV cache inserted (ATTENTION inputs are (q, k, v, positions)); runs after the linear epilogue fusion,
so q and k may be views into a stacked QKV output. Guarantees: an ATTENTION whose q and k were both rotated
with the same cos/sin tables ("flat" layout, the attention's head_dim), by rotaries nothing else reads, has
inputs (q, k, v, positions, cos, sin) and attr `rotary: True`; its meaning is
runtime.reference_ops.attention with rotary_tables=(cos, sin). Any other ATTENTION is left as it was.
"""

from __future__ import annotations

from fdpp.compiler.ir import Graph, GraphEditor, Node, Op
from fdpp.passes.pass_manager import PassContext, PassResult


def _fusable_rotaries(graph: Graph, attention: Node, users: dict[str, list[Node]]) -> tuple[Node, Node] | None:
    """(rotary of q, rotary of k) when both can move into `attention`, else None."""
    q_rot, k_rot = (graph.node(name) for name in attention.inputs[:2])
    if q_rot.op is not Op.ROTARY or k_rot.op is not Op.ROTARY or len(attention.inputs) != 4:
        return None
    if q_rot.inputs[1:] != k_rot.inputs[1:]:                      # the same cos and sin tables
        return None
    for rot in (q_rot, k_rot):
        only_attention = [u.name for u in users[rot.name]] == [attention.name]
        if (not only_attention or rot.name in graph.outputs or rot.attr("layout") != "flat"
                or rot.attr("head_dim") != attention.attr("head_dim")):
            return None
    return q_rot, k_rot


def fuse_rotary_into_attention(graph: Graph, ctx: PassContext) -> PassResult:
    users = graph.users()
    edit = GraphEditor(graph)
    fused = 0
    for n in graph.nodes:
        if n.op is not Op.ATTENTION:
            continue
        rotaries = _fusable_rotaries(graph, n, users)
        if rotaries is None:
            continue
        q_rot, k_rot = rotaries
        cos, sin = q_rot.inputs[1:]
        edit.update(n.with_(inputs=(q_rot.inputs[0], k_rot.inputs[0], n.inputs[2], n.inputs[3], cos, sin),
                            attrs={**n.attrs, "rotary": True}))
        fused += 1
    if not fused:
        return PassResult(graph, {})
    return PassResult(edit.commit(), {"rotary_into_attention": fused})
