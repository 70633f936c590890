"""FoldPositionTables: subgraphs that depend only on token positions become per-position tables.

Rotary cos/sin (any RoPE scaling) and learned position embeddings are functions of a token's position
alone. Traced without a cache, they are computed from `arange(seq)` or `cumsum(ones)`; with a cache the
position is not the index in the current chunk. This pass evaluates each such subgraph once for every
position up to the envelope's max sequence length, stores the result as a table, and replaces the
subgraph by POSITION_LOOKUP(table, positions), where `positions` [batch, seq] becomes a graph input.

Needs: attention fused (causal masks gone). Guarantees: each folded value was checked, at two batch
and sequence sizes, to equal its table rows at positions 0..seq-1; anything that is not a function of
the position alone stops the compile.
"""

from __future__ import annotations

import torch

from fdpp.compiler.errors import CompileError
from fdpp.compiler.interpreter import evaluate
from fdpp.compiler.ir import Graph, GraphEditor, Node, Op, OverlayWeightStore, TensorType
from fdpp.passes.matching import token_dependent
from fdpp.passes.pass_manager import PassContext, PassResult

TABLE_PREFIX = "fdpp.position_table."
_CHECK_SIZES = ((2, 3), (3, 11))


def _shape_sources(graph: Graph) -> set[str]:
    """Nodes whose value depends on symbolic sizes (ARANGE, FULL, or anything computed from them)."""
    out: set[str] = set()
    for n in graph.nodes:
        if n.op in (Op.ARANGE, Op.FULL) or any(i in out for i in n.inputs):
            out.add(n.name)
    return out


def _table(graph: Graph, node: Node, max_seq: int) -> tuple[torch.Tensor, int]:
    """Evaluate `node` for positions 0..max_seq-1: -> (table [max_seq, *rest], seq axis of the node)."""
    shape = node.type.shape
    if shape.count("seq") != 1 or shape.index("seq") == 0 or shape[0] not in (1, "batch") \
            or any(isinstance(d, str) for i, d in enumerate(shape) if i not in (0, shape.index("seq"))):
        raise CompileError(f"position-dependent value %{node.name} has shape {node.type} that fdpp cannot "
                           f"tabulate by position ({node.source})")
    seq_axis = shape.index("seq")
    value = evaluate(graph, {}, {"batch": 1, "seq": max_seq}, [node.name])[node.name]
    table = value[0].movedim(seq_axis - 1, 0).contiguous()                  # [max_seq, *rest]
    for batch, seq in _CHECK_SIZES:
        got = evaluate(graph, {}, {"batch": batch, "seq": seq}, [node.name])[node.name]
        rows = table[:seq].movedim(0, seq_axis - 1).unsqueeze(0)
        if not torch.equal(got, rows.expand_as(got)):
            raise CompileError(f"value %{node.name} ({node.source}) depends on more than the token position; "
                               f"fdpp cannot serve it from a KV cache")
    return table, seq_axis


def fold_position_tables(graph: Graph, ctx: PassContext) -> PassResult:
    dependent = token_dependent(graph)
    sources = _shape_sources(graph)
    users = graph.users()
    frontier = [n for n in graph.nodes
                if n.name in sources and n.name not in dependent
                and any(u.name in dependent for u in users[n.name])]
    if not frontier:
        return PassResult(graph, {"tables": 0})
    max_seq = ctx.options.max_seq_len
    edit = GraphEditor(graph)
    tokens = graph.node("tokens")
    positions = edit.add(Node("positions", Op.INPUT, (), TensorType(tokens.type.shape, "int64")),
                         before=graph.nodes[0].name)
    tables: dict[str, torch.Tensor] = {}
    for n in frontier:
        table, seq_axis = _table(graph, n, max_seq)
        key = TABLE_PREFIX + n.name
        tables[key] = table
        param = edit.add(Node(key.replace(".", "_"), Op.PARAM, (), TensorType(tuple(table.shape),
                              str(table.dtype).removeprefix("torch.")), {"key": key}), before=n.name)
        shape = ("batch",) + n.type.shape[1:]
        lookup = Node(n.name + "_lookup", Op.POSITION_LOOKUP, (param, positions), TensorType(shape, n.type.dtype),
                      {"seq_axis": seq_axis}, n.source)
        edit.replace_uses(n.name, edit.add(lookup, before=n.name))
    folded = edit.commit()
    return PassResult(folded.with_(weights=OverlayWeightStore(graph.weights, tables)), {"tables": len(tables)})
