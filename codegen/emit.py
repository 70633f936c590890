"""Emit: the fused, kernel-bound ir.Graph -> runtime ExecutionPlan (steps, buffers, weights used).

Every node must be a graph input, a weight, or an op the plan can run; anything else is an op that no
pass or kernel covers, and stops the compile naming the op and its model source line.
"""

from __future__ import annotations

import dataclasses

from fdpp.compiler.errors import CompileError, UnsupportedOpError
from fdpp.compiler.ir import Graph, Node, Op
from fdpp.runtime.schema import WEIGHT_PREFIX, KernelChoice, OpKind, Plan, Step

_PLAN_OP = {
    Op.EMBEDDING: OpKind.EMBEDDING, Op.POSITION_LOOKUP: OpKind.POSITION_LOOKUP, Op.RMS_NORM: OpKind.RMS_NORM,
    Op.LAYER_NORM: OpKind.LAYER_NORM, Op.LINEAR: OpKind.LINEAR, Op.ROTARY: OpKind.ROTARY,
    Op.ATTENTION: OpKind.ATTENTION, Op.GATED_ACT: OpKind.GATED_ACT, Op.RELU: OpKind.ACTIVATION,
    Op.GELU: OpKind.ACTIVATION, Op.SILU: OpKind.ACTIVATION, Op.ADD: OpKind.ADD, Op.MUL: OpKind.MUL,
    Op.RESHAPE: OpKind.RESHAPE, Op.SLICE: OpKind.SLICE,
}
_ATTRS = {
    Op.RELU: lambda n: {"kind": "relu"},
    Op.SILU: lambda n: {"kind": "silu"},
    Op.GELU: lambda n: {"kind": "gelu_tanh" if n.attr("approximate") == "tanh" else "gelu"},
    Op.RESHAPE: lambda n: {"shape": list(n.attr("shape"))},
    Op.SLICE: lambda n: {"start": n.attr("start"), "end": n.attr("end")},
}


def _step(graph: Graph, node: Node) -> Step:
    kind = _PLAN_OP.get(node.op)
    last_dim_view = node.op is not Op.SLICE or (
        node.attr("dim") % node.type.rank == node.type.rank - 1 and node.attr("step") == 1
        and all(isinstance(node.attr(a), int) for a in ("start", "end")))
    if kind is None or (node.op is Op.ROTARY and node.attr("layout") != "flat") or not last_dim_view:
        raise UnsupportedOpError(node.op.value, node.source, f"node %{node.name}, {node.type}")
    inputs = []
    for name in node.inputs:
        src = graph.node(name)
        if src.op is Op.PARAM:
            inputs.append(WEIGHT_PREFIX + src.attr("key"))
        elif src.op is Op.CONSTANT:
            raise UnsupportedOpError(f"{node.op.value} with a constant operand", node.source, f"node %{node.name}")
        else:
            inputs.append(name)
    attrs = _ATTRS[node.op](node) if node.op in _ATTRS else {
        k: v for k, v in node.attrs.items() if k != "kernels"}
    kernels = tuple(KernelChoice(**k) for k in node.attr("kernels", ()))
    return Step(kind, tuple(inputs), node.name, dict(attrs), kernels, node.source, (),
                tuple(node.type.shape), node.type.dtype.startswith(("float", "bfloat")))


def _with_frees(steps: list[Step], keep: set[str]) -> list[Step]:
    """Memory plan: each buffer is dropped after the last step that reads it."""
    last_use: dict[str, int] = {}
    for i, s in enumerate(steps):
        for name in s.inputs:
            if not name.startswith(WEIGHT_PREFIX):
                last_use[name] = i
    frees: dict[int, list[str]] = {}
    for name, i in last_use.items():
        if name not in keep:
            frees.setdefault(i, []).append(name)
    return [dataclasses.replace(s, frees=tuple(frees.get(i, ()))) for i, s in enumerate(steps)]


def emit_plan(graph: Graph) -> Plan:
    steps = [_step(graph, n) for n in graph.nodes if n.op not in (Op.INPUT, Op.PARAM, Op.CONSTANT)]
    inputs = tuple(n.name for n in graph.inputs())
    if set(inputs) != {"tokens", "positions"}:
        raise CompileError(f"emit: the plan's inputs must be tokens and positions, found {inputs}")
    (output,) = graph.outputs
    cfg = graph.config
    return Plan(tuple(_with_frees(steps, {output})), ("tokens", "positions"), output,
                int(cfg["kv_layers"]), int(cfg["kv_heads"]), int(cfg["head_dim"]))


def weights_used(plan: Plan) -> list[str]:
    seen: dict[str, None] = {}
    for s in plan.steps:
        for name in s.inputs:
            if name.startswith(WEIGHT_PREFIX):
                seen.setdefault(name[len(WEIGHT_PREFIX):])
    return list(seen)
