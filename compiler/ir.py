"""fdpp's typed graph IR: frozen nodes in topological order, an Op enum, symbolic shapes, a printer.

A Graph is immutable. Passes build a new one through `GraphEditor`, which keeps the order topological,
rewires uses and drops dead nodes. Weights are not nodes' attributes: a PARAM node names a tensor that a
`WeightStore` provides, so a 7B model's IR is small and can be traced on the meta device.

Shapes are tuples of `Dim`: an int, or a symbol of the shape envelope ("batch", "seq") or a product of
them ("batch*seq"). Those are the only dynamic sizes fdpp compiles for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch

from fdpp.runtime.dims import evaluate_dim, evaluate_shape

Dim = int | str
SYMBOLS = ("batch", "seq")


class Op(enum.Enum):
    # graph boundary
    INPUT = "input"
    PARAM = "param"            # attrs: key (weight name)
    CONSTANT = "constant"      # attrs: value (python scalar)
    # primitive ops, as imported from ATen or ONNX
    EMBEDDING = "embedding"    # (table, indices)
    LINEAR = "linear"          # (x, weight [N, K], bias?)
    MATMUL = "matmul"
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    NEG = "neg"
    POW = "pow"
    RSQRT = "rsqrt"
    SQRT = "sqrt"
    EXP = "exp"
    COS = "cos"
    SIN = "sin"
    TANH = "tanh"
    ERF = "erf"
    MEAN = "mean"              # attrs: dims, keepdim
    SUM = "sum"
    CUMSUM = "cumsum"          # attrs: dim
    DIFF = "diff"              # attrs: dim ; inputs (x, prepend?)
    SILU = "silu"
    RELU = "relu"
    GELU = "gelu"              # attrs: approximate ("none" | "tanh")
    SOFTMAX = "softmax"        # attrs: dim
    CAT = "cat"                # attrs: dim
    SLICE = "slice"            # attrs: dim, start, end, step
    RESHAPE = "reshape"        # attrs: shape
    TRANSPOSE = "transpose"    # attrs: dim0, dim1
    PERMUTE = "permute"        # attrs: dims
    UNSQUEEZE = "unsqueeze"    # attrs: dim
    SQUEEZE = "squeeze"        # attrs: dims
    EXPAND = "expand"          # attrs: shape
    CAST = "cast"              # attrs: dtype
    ARANGE = "arange"          # attrs: start, end, step (Dims)
    FULL = "full"              # attrs: shape, value
    INDEX = "index"            # inputs (x, idx0, idx1, ...) ; attrs: none_dims (positions of None indices)
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    AND = "and"
    OR = "or"
    NOT = "not"
    WHERE = "where"
    LAYER_NORM = "layer_norm"  # (x, weight, bias?) ; attrs: eps  (also a fused op: it is already one)
    SDPA = "sdpa"              # (q, k, v, mask?) ; attrs: scale, is_causal, enable_gqa
    # fused ops, produced by passes; their meaning is runtime.reference_ops
    RMS_NORM = "rms_norm"      # (x, weight) ; attrs: eps
    ROTARY = "rotary"          # (x, cos, sin) ; attrs: head_dim, layout ("heads" [B,H,S,D] | "flat" [B,S,H*D])
    ATTENTION = "attention"    # (q, k, v [, positions [, cos, sin]]) flat layout; attrs: n_heads, n_kv_heads,
    #                            head_dim, scale, layer, rotary (cos/sin given: q and k are rotated first)
    GATED_ACT = "gated_act"    # (gate, up) ; attrs: activation ("silu" | "gelu" | "gelu_tanh")
    POSITION_LOOKUP = "position_lookup"  # (table, positions) ; attrs: seq_axis


# Ops whose output is a view-free rearrangement or cast of one input, kept out of kernel selection.
LAYOUT_OPS = frozenset({Op.RESHAPE, Op.TRANSPOSE, Op.PERMUTE, Op.UNSQUEEZE, Op.SQUEEZE, Op.EXPAND})


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str                 # torch dtype name: "float32", "float16", "int64", "bool", ...

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Node:
    name: str
    op: Op
    inputs: tuple[str, ...]
    type: TensorType
    attrs: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""           # "file.py:123: code" of the model line this came from, for errors

    def __post_init__(self):
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def with_(self, **changes) -> "Node":
        return replace(self, **changes)


class WeightStore(Protocol):
    """Gives the tensors that PARAM nodes name. Real models hold them; random ones make them on demand."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> torch.Tensor: ...


class DictWeightStore:
    """A WeightStore over an in-memory dict (real weights, or test graphs)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = dict(tensors)

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def with_tensors(self, extra: Mapping[str, torch.Tensor]) -> "DictWeightStore":
        return DictWeightStore({**self._tensors, **extra})


def _names_then_added(base: WeightStore, added: Iterable[str]) -> list[str]:
    """The base store's names, then the added names it does not already have (a store layered on another)."""
    names = base.names()
    known = set(names)
    return names + [n for n in added if n not in known]


class OverlayWeightStore:
    """A WeightStore that adds tensors made by the compiler (position tables, lifted buffers) to a base."""

    def __init__(self, base: WeightStore, extra: Mapping[str, torch.Tensor]):
        self.base, self.extra = base, dict(extra)

    def names(self) -> list[str]:
        return _names_then_added(self.base, self.extra)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.extra[name].shape) if name in self.extra else self.base.shape(name)

    def get(self, name: str) -> torch.Tensor:
        return self.extra[name] if name in self.extra else self.base.get(name)


class StackedWeightStore:
    """A WeightStore that adds weights made by stacking others along dim 0 (fused QKV or gate/up
    projections), built when read so that the base's laziness (random or pruned weights) is kept."""

    def __init__(self, base: WeightStore, stacks: Mapping[str, tuple[str, ...]]):
        self.base, self.stacks = base, dict(stacks)

    def names(self) -> list[str]:
        return _names_then_added(self.base, self.stacks)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.stacks:
            return self.base.shape(name)
        shapes = [self.base.shape(part) for part in self.stacks[name]]
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def get(self, name: str) -> torch.Tensor:
        if name not in self.stacks:
            return self.base.get(name)
        return torch.cat([self.base.get(part) for part in self.stacks[name]], dim=0)


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    weights: Any                                  # WeightStore
    config: Mapping[str, Any] = field(default_factory=dict)  # model facts (arch, sizes), for the manifest

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})

    def node(self, name: str) -> Node:
        return self._by_name[name]  # type: ignore[attr-defined]

    def has(self, name: str) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    def users(self) -> dict[str, list[Node]]:
        """name -> the nodes that read it, in graph order."""
        out: dict[str, list[Node]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n)
        return out

    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op is Op.INPUT]

    def count(self, op: Op) -> int:
        return sum(1 for n in self.nodes if n.op is op)

    def param_tensor(self, node: Node) -> torch.Tensor:
        assert node.op is Op.PARAM
        return self.weights.get(node.attr("key"))

    def with_(self, **changes) -> "Graph":
        return replace(self, **changes)

    def __str__(self) -> str:
        return format_graph(self)


def format_graph(graph: Graph) -> str:
    """Readable text form: one line a node, `%name = op(inputs) {attrs} : type  # source`."""
    lines = []
    for n in graph.nodes:
        attrs = ", ".join(f"{k}={v!r}" for k, v in n.attrs.items())
        attrs = f" {{{attrs}}}" if attrs else ""
        args = ", ".join(f"%{i}" for i in n.inputs)
        src = f"  # {n.source}" if n.source else ""
        lines.append(f"%{n.name} = {n.op.value}({args}){attrs} : {n.type}{src}")
    lines.append(f"return {', '.join('%' + o for o in graph.outputs)}")
    return "\n".join(lines)


def verify(graph: Graph) -> None:
    """Structural check between stages: unique names, inputs defined before use, outputs exist."""
    seen: set[str] = set()
    for n in graph.nodes:
        if n.name in seen:
            raise ValueError(f"IR verify: node name %{n.name} defined twice")
        for i in n.inputs:
            if i not in seen:
                raise ValueError(f"IR verify: %{n.name} ({n.op.value}) reads %{i} before it is defined")
        seen.add(n.name)
    for o in graph.outputs:
        if o not in seen:
            raise ValueError(f"IR verify: output %{o} is not defined")


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_2`, `base_3`, ... : the first not in `taken`, which it is then added to."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


class GraphEditor:
    """Collects edits to a Graph and commits them as a new Graph.

    - `add(node, before=anchor)` inserts a node just before `anchor` (or at the end).
    - `replace_uses(old, new)` makes every reader of `old` (and the graph outputs) read `new`.
    Nodes no output depends on are dropped at commit.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self._inserted: dict[str, list[Node]] = {}
        self._appended: list[Node] = []
        self._replaced: dict[str, str] = {}
        self._updated: dict[str, Node] = {}
        self._taken = {n.name for n in graph.nodes}

    def fresh_name(self, base: str) -> str:
        return unique_name(base, self._taken)

    def add(self, node: Node, before: str | None = None) -> str:
        if node.name in self._taken:
            node = node.with_(name=self.fresh_name(node.name))
        self._taken.add(node.name)
        if before is None:
            self._appended.append(node)
        else:
            self._inserted.setdefault(before, []).append(node)
        return node.name

    def replace_uses(self, old: str, new: str) -> None:
        self._replaced[old] = new

    def update(self, node: Node) -> None:
        """Replace a node in place (same name), e.g. to change its attrs."""
        self._updated[node.name] = node

    def _resolve(self, name: str) -> str:
        seen = set()
        while name in self._replaced:
            if name in seen:
                raise ValueError(f"GraphEditor: replacement cycle through %{name}")
            seen.add(name)
            name = self._replaced[name]
        return name

    def commit(self, outputs: Iterable[str] | None = None) -> Graph:
        ordered: list[Node] = []
        for n in self.graph.nodes:
            ordered.extend(self._inserted.get(n.name, ()))
            ordered.append(self._updated.get(n.name, n))
        ordered.extend(self._appended)
        rewired = [n.with_(inputs=tuple(self._resolve(i) for i in n.inputs)) for n in ordered]
        outs = tuple(self._resolve(o) for o in (outputs if outputs is not None else self.graph.outputs))
        graph = Graph(tuple(_topological(rewired)), outs, self.graph.weights, self.graph.config)
        return eliminate_dead_nodes(graph)


def _topological(nodes: list[Node]) -> list[Node]:
    """Stable topological order: keeps the given order wherever it is already valid."""
    by_name = {n.name: n for n in nodes}
    done: set[str] = set()
    out: list[Node] = []

    def visit(n: Node, stack: set[str]):
        if n.name in done:
            return
        if n.name in stack:
            raise ValueError(f"IR: cycle through %{n.name}")
        stack.add(n.name)
        for i in n.inputs:
            if i in by_name:
                visit(by_name[i], stack)
        stack.discard(n.name)
        done.add(n.name)
        out.append(n)

    for n in nodes:
        visit(n, set())
    return out


def eliminate_dead_nodes(graph: Graph) -> Graph:
    """Drop nodes that no graph output depends on (graph inputs stay)."""
    live: set[str] = set(graph.outputs)
    for n in reversed(graph.nodes):
        if n.name in live:
            live.update(n.inputs)
    kept = tuple(n for n in graph.nodes if n.name in live or n.op is Op.INPUT)
    if len(kept) == len(graph.nodes):
        return graph
    return graph.with_(nodes=kept)


def producers_closure(graph: Graph, name: str, stop: Callable[[Node], bool] = lambda n: False) -> list[Node]:
    """The nodes `name` depends on (itself included), in graph order, not walking past `stop` nodes."""
    need = {name}
    for n in reversed(graph.nodes):
        if n.name in need and not (stop(n) and n.name != name):
            need.update(n.inputs)
    return [n for n in graph.nodes if n.name in need]


def resolve_dim(dim: Dim, env: Mapping[str, int]) -> int:
    """Evaluate a Dim ("batch*seq", 64, "seq") with concrete symbol values."""
    return evaluate_dim(dim, env)


def resolve_shape(shape: Iterable[Dim], env: Mapping[str, int]) -> tuple[int, ...]:
    return evaluate_shape(tuple(shape), env)
