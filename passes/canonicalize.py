"""Canonicalize: drop no-op casts, reshapes, expands, full slices and identity arithmetic.

Needs: an imported graph. Guarantees: every removed node computed exactly its input (same shape and
dtype), so later patterns see one spelling of each computation.
"""

from __future__ import annotations

from fdpp.compiler.ir import Graph, GraphEditor, Op
from fdpp.passes.matching import is_constant
from fdpp.passes.pass_manager import PassContext, PassResult


def canonicalize(graph: Graph, ctx: PassContext) -> PassResult:
    edit = GraphEditor(graph)
    changes = {"cast": 0, "reshape": 0, "slice": 0, "identity_arith": 0}
    for n in graph.nodes:
        if not n.inputs:
            continue
        src = graph.node(n.inputs[0])
        same_type = src.type == n.type
        if n.op is Op.CAST and same_type:
            kind = "cast"
        elif n.op in (Op.RESHAPE, Op.EXPAND) and same_type:
            kind = "reshape"
        elif n.op is Op.SLICE and same_type and n.attr("start") == 0 and n.attr("step") == 1:
            kind = "slice"
        elif n.op in (Op.MUL, Op.DIV) and same_type and is_constant(graph, n.inputs[1], 1.0):
            kind = "identity_arith"
        elif n.op in (Op.ADD, Op.SUB) and same_type and is_constant(graph, n.inputs[1], 0):
            kind = "identity_arith"
        else:
            continue
        edit.replace_uses(n.name, n.inputs[0])
        changes[kind] += 1
    return PassResult(edit.commit(), changes)
