"""The walk over the ONNX graph, and the state it builds the IR graph in (values, nodes, weights)."""

from __future__ import annotations

import re

import numpy as np
import sympy
import torch
from onnx import numpy_helper

from fdpp.compiler.errors import CompileError, UnsupportedOpError
from fdpp.compiler.ir import (DictWeightStore, Graph, Node, Op, TensorType, eliminate_dead_nodes, unique_name,
                              verify)
from fdpp.compiler.onnx.names import _LINEAR_CALL, _hugging_face_model, _meta, _signature, _source, _where
from fdpp.compiler.onnx.op_table import _OPS
from fdpp.compiler.onnx.sizes import BATCH, SEQ, _dim, _expressible
from fdpp.compiler.onnx.values import _ONNX_DTYPES, _python_scalar, _Runtime, _Static, _to_torch


class _Importer:
    def __init__(self, graph):
        self.graph = graph
        self.values: dict[str, _Static | _Runtime] = {}
        self.producer = {out: n for n in graph.node for out in n.output}
        self.uses: dict[str, int] = {}
        for n in graph.node:
            for name in n.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}
        self.taken: set[str] = set()
        self.tensors: dict[str, torch.Tensor] = {}
        self.params: dict[str, str] = {}               # weight key -> its PARAM node
        self.constants: dict[tuple, str] = {}
        self.emitted: dict[tuple, _Runtime] = {}       # (op, inputs, type, attrs) -> the node computing it
        self.signature = _signature(graph)
        self.prefix, self.architecture = _hugging_face_model(graph)
        self.current = None                             # the ONNX node being imported

    # names and nodes -----------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        return unique_name(re.sub(r"\W", "_", base), self.taken)

    def add(self, node: Node) -> None:
        self.nodes.append(node)
        self.by_name[node.name] = node

    def emit(self, op: Op, inputs: list[str], shape: tuple, dtype: str, attrs: dict | None = None,
             out: str | None = None) -> _Runtime:
        """Add an IR node; `out` is the ONNX value it computes (None for a step inside a decomposition).
        A node equal to one already made is that node."""
        shape = tuple(sympy.sympify(d) for d in shape)
        node_type, attrs = TensorType(tuple(_dim(d) for d in shape), dtype), attrs or {}
        key = (op, tuple(inputs), node_type, repr(sorted(attrs.items())))
        if key not in self.emitted:
            name = self.fresh(out if out is not None else f"{self.current.output[0]}_{op.value}")
            self.add(Node(name, op, tuple(inputs), node_type, attrs, _source(self.current)))
            self.emitted[key] = _Runtime(name, shape, dtype)
        value = self.emitted[key]
        if out is not None:
            self.values[out] = value
        return value

    def constant(self, array: np.ndarray) -> str:
        value, dtype = _python_scalar(array), str(array.dtype)
        key = (repr(value), dtype)
        if key not in self.constants:
            name = self.fresh(f"const_{len(self.constants) + 1}")
            self.add(Node(name, Op.CONSTANT, (), TensorType((), dtype), {"value": value}))
            self.constants[key] = name
        return self.constants[key]

    def param(self, key: str, tensor: torch.Tensor) -> str:
        known = self.tensors.get(key)
        if known is not None and not (known.shape == tensor.shape and torch.equal(known, tensor)):
            raise CompileError(f"ONNX import: two different tensors claim the weight name '{key}' "
                               f"({_where(self.current)})")
        if key not in self.params:
            self.tensors[key] = tensor
            name = self.fresh(key)
            self.add(Node(name, Op.PARAM, (), TensorType(tuple(tensor.shape), str(tensor.dtype).removeprefix(
                "torch.")), {"key": key}))
            self.params[key] = name
        return self.params[key]

    def weight_key(self, initializer: str) -> str:
        return initializer.removeprefix(self.prefix)

    def linear_weight_key(self, node) -> str | None:
        """The state-dict name of the weight of the aten.linear this node came from, per its metadata."""
        call = _LINEAR_CALL.search(_meta(node).get("pkg.torch.onnx.fx_node", ""))
        args = re.findall(r"%(\w+)", call.group(1)) if call else []
        if len(args) < 2 or args[1] not in self.signature:
            return None
        return self.weight_key(self.signature[args[1]])

    # reading values ------------------------------------------------------------------------
    def shape(self, name: str) -> tuple:
        v = self.values[name]
        return v.shape if isinstance(v, _Runtime) else tuple(sympy.Integer(d) for d in v.array.shape)

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def dtype(self, name: str) -> str:
        v = self.values[name]
        return v.dtype if isinstance(v, _Runtime) else ("int64" if v.array.dtype == object else str(v.array.dtype))

    def static(self, name: str) -> np.ndarray | None:
        v = self.values.get(name)
        return v.array if isinstance(v, _Static) else None

    def sizes(self, name: str) -> list:
        """A static int vector (or scalar) as sympy sizes."""
        array = self.static(name)
        if array is None:
            raise UnsupportedOpError(self.current.op_type, _where(self.current),
                                     "a shape, axis or bound computed from tensor data")
        return [sympy.sympify(int(x) if isinstance(x, (int, np.integer)) else x) for x in array.reshape(-1)]

    def ints(self, name: str) -> list[int]:
        out = self.sizes(name)
        if not all(s.is_Integer for s in out):
            raise UnsupportedOpError(self.current.op_type, _where(self.current), "symbolic axes or steps")
        return [int(s) for s in out]

    def scalar(self, name: str) -> float | None:
        """The value of a one-element static float, else None."""
        array = self.static(name)
        if array is None or array.size != 1 or array.dtype.kind != "f":
            return None
        return float(array.reshape(()).item())

    def producer_of(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    # IR operands ---------------------------------------------------------------------------
    def operand(self, name: str, other_rank: int | None = None) -> str:
        """The IR node for an ONNX value. A one-element static becomes a CONSTANT where that cannot change
        the broadcast result (rank 0, or no higher than the other operand's); other statics are weights."""
        v = self.values[name]
        if isinstance(v, _Runtime):
            return v.name
        array = v.array
        if array.dtype == object:
            raise UnsupportedOpError(self.current.op_type, _where(self.current), "a symbolic size used as data")
        if array.size == 1 and (array.ndim == 0 or (other_rank is not None and array.ndim <= other_rank)):
            return self.constant(array)
        return self.weight(name)

    def weight(self, name: str) -> str:
        v = self.values[name]
        assert isinstance(v, _Static)
        return self.param(self.weight_key(v.initializer or name), _to_torch(v.array))

    # the walk ------------------------------------------------------------------------------
    def run(self) -> Graph:
        initializers = {t.name for t in self.graph.initializer}
        for t in self.graph.initializer:
            self.values[t.name] = _Static(numpy_helper.to_array(t), t.name)
        self.import_input([i for i in self.graph.input if i.name not in initializers])
        for node in self.graph.node:
            self.current = node
            handler = _OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if handler is None:
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
                raise UnsupportedOpError(op, _where(node))
            handler(self, node)
        if len(self.graph.output) != 1:
            raise CompileError(f"ONNX import: expected the logits as the only output, got {len(self.graph.output)}")
        logits = self.values.get(self.graph.output[0].name)
        if not isinstance(logits, _Runtime):
            raise CompileError("ONNX import: the output does not depend on the input tokens")
        config = {"source_format": "onnx"}
        if self.architecture:
            config["architecture"] = self.architecture
        if logits.shape[-1].is_Integer:
            config["vocab_size"] = int(logits.shape[-1])
        graph = eliminate_dead_nodes(Graph(tuple(self.nodes), (logits.name,), DictWeightStore(self.tensors), config))
        _check_sizes(graph)
        verify(graph)
        return graph

    def import_input(self, inputs: list) -> None:
        if len(inputs) != 1:
            raise CompileError(f"ONNX import: expected one input (token ids), found {[i.name for i in inputs]}")
        tensor_type = inputs[0].type.tensor_type
        dims = tensor_type.shape.dim
        if _ONNX_DTYPES.get(tensor_type.elem_type) != "int64" or len(dims) != 2 \
                or not all(d.dim_param for d in dims):
            raise CompileError(f"ONNX import: the input '{inputs[0].name}' must be int64 [batch, seq] with both "
                               f"axes dynamic; export with dynamic_shapes for batch and sequence length")
        self.taken.add("tokens")
        self.add(Node("tokens", Op.INPUT, (), TensorType(("batch", "seq"), "int64")))
        self.values[inputs[0].name] = _Runtime("tokens", (BATCH, SEQ), "int64")


def _check_sizes(graph: Graph) -> None:
    """Every size that survived the import is one the IR can state (a product of batch, seq and ints)."""
    for n in graph.nodes:
        dims = list(n.type.shape)
        for key in ("shape", "start", "end"):
            value = n.attrs.get(key)
            dims += list(value) if isinstance(value, tuple) else [value] if value is not None else []
        bad = [d for d in dims if not _expressible(d)]
        if bad:
            raise CompileError(f"ONNX import: %{n.name} ({n.op.value}) needs the size '{bad[0]}', which is not "
                               f"batch, seq, an int or their product; fdpp compiles only those ({n.source})")
