"""InsertKVCache: each ATTENTION reads the token positions and owns one slot of the KV cache.

Needs: attention fused, position tables folded (so `positions` is a graph input if anything used it).
Guarantees: every ATTENTION has inputs (q, k, v, positions) and a distinct `layer` (cache slot) in
graph order; all layers agree on KV heads and head dim, which size the cache.
"""

from __future__ import annotations

from fdpp.compiler.errors import CompileError
from fdpp.compiler.ir import Graph, GraphEditor, Node, Op, TensorType
from fdpp.passes.pass_manager import PassContext, PassResult


def insert_kv_cache(graph: Graph, ctx: PassContext) -> PassResult:
    attentions = [n for n in graph.nodes if n.op is Op.ATTENTION]
    if not attentions:
        raise CompileError("no causal attention was recognised in the model; fdpp compiles decoder-only "
                           "causal LMs (use --dump-ir DIR to see the graph)")
    shapes = {(n.attr("n_kv_heads"), n.attr("head_dim")) for n in attentions}
    if len(shapes) != 1:
        raise CompileError(f"attention layers differ in KV heads / head dim {sorted(shapes)}; one cache shape is needed")
    edit = GraphEditor(graph)
    positions = "positions"
    if not graph.has(positions):
        tokens = graph.node("tokens")
        edit.add(Node(positions, Op.INPUT, (), TensorType(tokens.type.shape, "int64")), before=graph.nodes[0].name)
    for layer, n in enumerate(attentions):
        edit.update(n.with_(inputs=n.inputs[:3] + (positions,), attrs={**n.attrs, "layer": layer}))
    kv_heads, head_dim = shapes.pop()
    config = {**graph.config, "kv_layers": len(attentions), "kv_heads": kv_heads, "head_dim": head_dim}
    return PassResult(edit.commit().with_(config=config), {"kv_cached_layers": len(attentions)})
