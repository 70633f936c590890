"""Small helpers that every pattern-matching pass shares. A match is validated in full: shapes,
constant values and dims are checked, never treated as wildcards."""

from __future__ import annotations

from typing import Callable

from fdpp.compiler.ir import Graph, GraphEditor, Node, Op


def producer(graph: Graph, name: str) -> Node:
    return graph.node(name)


def constant_value(graph: Graph, name: str):
    """The python value of a CONSTANT node, or None if `name` is not one."""
    n = graph.node(name)
    return n.attr("value") if n.op is Op.CONSTANT else None


def is_constant(graph: Graph, name: str, value: float) -> bool:
    v = constant_value(graph, name)
    return v is not None and not isinstance(v, bool) and float(v) == float(value)


def strip_casts(graph: Graph, name: str) -> str:
    """Follow CAST nodes back to what they cast."""
    n = graph.node(name)
    while n.op is Op.CAST:
        n = graph.node(n.inputs[0])
    return n.name


def split_operands(graph: Graph, node: Node, want) -> tuple[str, str] | None:
    """For a commutative binary node: (operand matching `want`, the other), trying both orders."""
    a, b = node.inputs
    if want(graph.node(a)):
        return a, b
    if want(graph.node(b)):
        return b, a
    return None


def is_last_dim(node: Node, dims) -> bool:
    rank = node.type.rank
    return dims is not None and len(dims) == 1 and dims[0] % max(rank, 1) == rank - 1


def token_dependent(graph: Graph) -> set[str]:
    """Names of nodes whose value depends on a graph INPUT's values (tokens), not only on shapes."""
    out: set[str] = set()
    for n in graph.nodes:
        if n.op is Op.INPUT or any(i in out for i in n.inputs):
            out.add(n.name)
    return out


def replace_matches(graph: Graph, fuse: Callable[[Graph, Node], Node | None]) -> tuple[Graph, int]:
    """Every node for which `fuse` returns a replacement is replaced by it (inserted just before, all
    readers rewired); returns the new graph and how many nodes were replaced."""
    edit = GraphEditor(graph)
    count = 0
    for n in graph.nodes:
        fused = fuse(graph, n)
        if fused is not None:
            edit.replace_uses(n.name, edit.add(fused, before=n.name))
            count += 1
    return edit.commit(), count
