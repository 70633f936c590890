"""Trace a Hugging Face causal LM with torch.export and import the ATen graph into ir.Graph.

The model is traced without a KV cache, batch and sequence length dynamic, and returns logits
[batch, seq, vocab]. Every ATen op maps through one table (`_ATEN`) to an IR op; an op missing from the
table stops the import with its name and the model source line. Symbolic sizes become the envelope's
symbols "batch" and "seq".
"""

from __future__ import annotations

import operator
import re
from typing import Any, Callable

import sympy
import torch

from fdpp.compiler.errors import CompileError, UnsupportedOpError
from fdpp.compiler.ir import Dim, Graph, Node, Op, OverlayWeightStore, TensorType

aten = torch.ops.aten


class _CausalLMLogits(torch.nn.Module):
    """input_ids [B, S] -> logits [B, S, V], no cache: the function fdpp compiles."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, use_cache=False).logits


def export_model(model: torch.nn.Module, max_batch: int, max_seq_len: int) -> torch.export.ExportedProgram:
    """torch.export the model's logits function with dynamic batch and sequence length."""
    device = next(model.parameters()).device
    example = torch.zeros((2, 8), dtype=torch.long, device=device) + 1
    # DYNAMIC lets export derive each size's range from the model itself (versions of torch and
    # transformers disagree on what ranges their own guards imply); the importer checks that batch and
    # seq stayed symbolic.
    dynamic = torch.export.Dim.DYNAMIC
    try:
        program = torch.export.export(_CausalLMLogits(model), (example,),
                                      dynamic_shapes={"input_ids": {0: dynamic, 1: dynamic}}, strict=False)
    except Exception as e:  # torch raises many types here; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"torch.export could not trace the model: {first}") from e
    return program.run_decompositions({})


def import_program(program: torch.export.ExportedProgram, weights: Any, config: dict) -> Graph:
    """ExportedProgram -> ir.Graph. `weights` is the WeightStore for the model's state-dict names."""
    return _Importer(program, weights, config).run()


def trace(model: torch.nn.Module, weights: Any, config: dict, max_batch: int, max_seq_len: int) -> Graph:
    return import_program(export_model(model, max_batch, max_seq_len), weights, config)


# --- the importer -------------------------------------------------------------------------------


def _source_of(fx_node: torch.fx.Node) -> str:
    trace_text = fx_node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in \w+\n\s*(.*)', trace_text)
    if not frames:
        return ""
    path, line, code = frames[-1]
    return f"{path.split('/')[-1]}:{line}: {code.strip()}"


class _Importer:
    def __init__(self, program: torch.export.ExportedProgram, weights: Any, config: dict):
        self.program = program
        self.weights = weights
        self.config = config
        self.nodes: list[Node] = []
        self.value_of: dict[torch.fx.Node, str] = {}
        self.symbols: dict[sympy.Symbol, str] = {}
        self.constant_count = 0
        self.extra_weights: dict[str, torch.Tensor] = {}

    # sizes ---------------------------------------------------------------------------------
    def dim(self, value: Any) -> Dim:
        if isinstance(value, int):
            return value
        if isinstance(value, torch.fx.Node):
            value = value.meta.get("val")
        if isinstance(value, torch.SymInt):
            expr = value.node.expr
            if expr.is_Integer:
                return int(expr)
            factors = []
            for f in sympy.Mul.make_args(expr):
                if f.is_Integer:
                    factors.append(str(int(f)))
                elif f in self.symbols:
                    factors.append(self.symbols[f])
                else:
                    raise CompileError(f"torch frontend: size expression '{expr}' is not a product of "
                                       f"batch and seq; fdpp compiles only those dynamic sizes")
            return "*".join(sorted(factors, key=lambda s: (s.isdigit(), s)))
        if isinstance(value, int):
            return value
        raise CompileError(f"torch frontend: cannot read a size from {value!r}")

    def type_of(self, fx_node: torch.fx.Node) -> TensorType:
        val = fx_node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise CompileError(f"torch frontend: node {fx_node.name} has no tensor value")
        return TensorType(tuple(self.dim(d) for d in val.shape), str(val.dtype).removeprefix("torch."))

    # values --------------------------------------------------------------------------------
    def constant(self, value: Any) -> str:
        self.constant_count += 1
        name = f"const_{self.constant_count}"
        dtype = "bool" if isinstance(value, bool) else "int64" if isinstance(value, int) else "float32"
        self.nodes.append(Node(name, Op.CONSTANT, (), TensorType((), dtype), {"value": value}))
        return name

    def value(self, arg: Any) -> str:
        if isinstance(arg, torch.fx.Node):
            return self.value_of[arg]
        if isinstance(arg, (bool, int, float)):
            return self.constant(arg)
        raise CompileError(f"torch frontend: unexpected argument {arg!r}")

    def emit(self, fx_node: torch.fx.Node, op: Op, inputs: list[Any], attrs: dict | None = None) -> None:
        name = fx_node.name
        self.nodes.append(Node(name, op, tuple(self.value(a) for a in inputs), self.type_of(fx_node),
                               attrs or {}, _source_of(fx_node)))
        self.value_of[fx_node] = name

    def alias(self, fx_node: torch.fx.Node, arg: torch.fx.Node) -> None:
        self.value_of[fx_node] = self.value_of[arg]

    # the walk ------------------------------------------------------------------------------
    def run(self) -> Graph:
        sig = self.program.graph_signature
        param_names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                       **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
        user_inputs = [n for n in self.program.graph.nodes if n.op == "placeholder" and n.name not in param_names]
        if len(user_inputs) != 1:
            raise CompileError(f"torch frontend: expected one input (token ids), found {len(user_inputs)}")
        ids_val = user_inputs[0].meta["val"]
        for sym_size, symbol in zip(ids_val.shape, ("batch", "seq")):
            if not isinstance(sym_size, torch.SymInt) or not sym_size.node.expr.is_Symbol:
                raise CompileError(f"torch.export specialised the token ids' {symbol} size to {sym_size}; "
                                   f"fdpp needs it dynamic (the model's code fixes it somewhere)")
            self.symbols[sym_size.node.expr] = symbol

        for fx_node in self.program.graph.nodes:
            if fx_node.op == "placeholder":
                if fx_node in user_inputs:
                    self.nodes.append(Node("tokens", Op.INPUT, (), self.type_of(fx_node)))
                    self.value_of[fx_node] = "tokens"
                else:
                    key = param_names[fx_node.name].removeprefix("m.")
                    if key not in self.weights.names():
                        tensor = self.program.constants.get(param_names[fx_node.name])
                        if tensor is None:
                            raise CompileError(f"torch frontend: weight '{key}' is not in the model's weights")
                        self.extra_weights[key] = tensor
                    self.emit(fx_node, Op.PARAM, [], {"key": key})
            elif fx_node.op == "call_function":
                self.call(fx_node)
            elif fx_node.op == "output":
                outs = fx_node.args[0]
                if len(outs) != 1:
                    raise CompileError(f"torch frontend: expected the logits as the only output, got {len(outs)}")
                outputs = (self.value_of[outs[0]],)
        weights = self.weights
        if self.extra_weights:
            weights = OverlayWeightStore(weights, self.extra_weights)
        return Graph(tuple(self.nodes), outputs, weights, self.config)

    def call(self, fx_node: torch.fx.Node) -> None:
        target = fx_node.target
        if target in _SKIPPED or target is operator.getitem and not isinstance(fx_node.meta.get("val"), torch.Tensor):
            return
        if not isinstance(fx_node.meta.get("val"), torch.Tensor):
            if target in _SIZE_OPS:
                return  # symbolic sizes are read from each consumer's own meta, not computed in the graph
            raise UnsupportedOpError(str(target), _source_of(fx_node), "produces a non-tensor value")
        handler = _ATEN.get(target)
        if handler is None:
            raise UnsupportedOpError(str(target), _source_of(fx_node))
        handler(self, fx_node, *fx_node.args, **fx_node.kwargs)


_SKIPPED = {
    aten._assert_tensor_metadata.default,
    getattr(aten, "_assert_scalar").default,
    getattr(aten, "sym_constrain_range_for_size").default,
}
_SIZE_OPS = {aten.sym_size.int, operator.mul, operator.add, operator.sub, operator.floordiv} \
    | ({aten.sym_numel.default} if hasattr(aten, "sym_numel") else set())


def _unary(op: Op) -> Callable:
    return lambda imp, n, x, *a, **k: imp.emit(n, op, [x])


def _binary(op: Op) -> Callable:
    def handle(imp, n, a, b, *rest, alpha=1, **kw):
        if alpha != 1:
            raise UnsupportedOpError(str(n.target), _source_of(n), "alpha != 1")
        imp.emit(n, op, [a, b])
    return handle


def _dims(x: Any) -> list[int]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _h_view(imp, n, x, shape, *rest, **kw):
    imp.emit(n, Op.RESHAPE, [x], {"shape": tuple(imp.dim(d) for d in n.meta["val"].shape)})


def _h_expand(imp, n, x, shape, *rest, **kw):
    imp.emit(n, Op.EXPAND, [x], {"shape": tuple(imp.dim(d) for d in n.meta["val"].shape)})


def _h_slice(imp, n, x, dim=0, start=None, end=None, step=1):
    size = n.args[0].meta["val"].shape[dim]
    start = 0 if start is None else start
    end = size if end is None or (isinstance(end, int) and end >= 2**62) else end
    imp.emit(n, Op.SLICE, [x], {"dim": dim, "start": imp.dim(start), "end": imp.dim(end), "step": step})


def _h_to_copy(imp, n, x, **kw):
    imp.emit(n, Op.CAST, [x], {"dtype": str(n.meta["val"].dtype).removeprefix("torch.")})


def _h_arange(imp, n, *args, **kw):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args + (1,))[:3]
    imp.emit(n, Op.ARANGE, [], {"start": imp.dim(start), "end": imp.dim(end), "step": step,
                               "dtype": str(n.meta["val"].dtype).removeprefix("torch.")})


def _h_full(value_of: Callable) -> Callable:
    def handle(imp, n, *args, **kw):
        imp.emit(n, Op.FULL, [], {"shape": tuple(imp.dim(d) for d in n.meta["val"].shape),
                                  "value": value_of(args), "dtype": str(n.meta["val"].dtype).removeprefix("torch.")})
    return handle


def _h_index(imp, n, x, indices):
    none_dims = tuple(i for i, ix in enumerate(indices) if ix is None)
    imp.emit(n, Op.INDEX, [x] + [ix for ix in indices if ix is not None], {"none_dims": none_dims,
                                                                           "count": len(indices)})


def _h_sdpa(imp, n, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if dropout_p:
        raise UnsupportedOpError("scaled_dot_product_attention with dropout", _source_of(n))
    d = n.args[0].meta["val"].shape[-1]
    scale = float(scale) if scale is not None else float(d) ** -0.5
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None else [])
    imp.emit(n, Op.SDPA, inputs, {"scale": scale, "is_causal": bool(is_causal), "enable_gqa": bool(enable_gqa)})


def _h_linear(imp, n, x, w, b=None):
    imp.emit(n, Op.LINEAR, [x, w] + ([b] if b is not None else []))


def _h_embedding(imp, n, table, ids, *rest, **kw):
    imp.emit(n, Op.EMBEDDING, [table, ids])


def _h_layer_norm(imp, n, x, shape, w=None, b=None, eps=1e-5, *rest):
    if w is None or len(_dims(shape)) != 1:
        raise UnsupportedOpError("layer_norm without weight or over several dims", _source_of(n))
    imp.emit(n, Op.LAYER_NORM, [x, w] + ([b] if b is not None else []), {"eps": float(eps)})


def _h_mean(op: Op) -> Callable:
    def handle(imp, n, x, dims=None, keepdim=False, **kw):
        imp.emit(n, op, [x], {"dims": tuple(_dims(dims)) if dims is not None else None, "keepdim": bool(keepdim)})
    return handle


_ATEN: dict[Any, Callable] = {
    aten.embedding.default: _h_embedding,
    aten.linear.default: _h_linear,
    aten.matmul.default: _binary(Op.MATMUL),
    aten.mm.default: _binary(Op.MATMUL),
    aten.bmm.default: _binary(Op.MATMUL),
    aten.add.Tensor: _binary(Op.ADD),
    aten.sub.Tensor: _binary(Op.SUB),
    aten.mul.Tensor: _binary(Op.MUL),
    aten.div.Tensor: _binary(Op.DIV),
    aten.pow.Tensor_Scalar: _binary(Op.POW),
    aten.neg.default: _unary(Op.NEG),
    aten.rsqrt.default: _unary(Op.RSQRT),
    aten.sqrt.default: _unary(Op.SQRT),
    aten.exp.default: _unary(Op.EXP),
    aten.cos.default: _unary(Op.COS),
    aten.sin.default: _unary(Op.SIN),
    aten.tanh.default: _unary(Op.TANH),
    aten.erf.default: _unary(Op.ERF),
    aten.silu.default: _unary(Op.SILU),
    aten.relu.default: _unary(Op.RELU),
    aten.gelu.default: lambda imp, n, x, approximate="none": imp.emit(n, Op.GELU, [x], {"approximate": approximate}),
    aten.mean.dim: _h_mean(Op.MEAN),
    aten.sum.dim_IntList: _h_mean(Op.SUM),
    aten.cumsum.default: lambda imp, n, x, dim, **kw: imp.emit(n, Op.CUMSUM, [x], {"dim": dim}),
    aten.diff.default: lambda imp, n, x, num=1, dim=-1, prepend=None, append=None: imp.emit(
        n, Op.DIFF, [x] + ([prepend] if prepend is not None else []), {"dim": dim, "n": num}),
    aten._softmax.default: lambda imp, n, x, dim, half=False: imp.emit(n, Op.SOFTMAX, [x], {"dim": dim}),
    aten.cat.default: lambda imp, n, xs, dim=0: imp.emit(n, Op.CAT, list(xs), {"dim": dim}),
    aten.slice.Tensor: _h_slice,
    aten.view.default: _h_view,
    aten.reshape.default: _h_view,
    aten._unsafe_view.default: _h_view,
    aten.transpose.int: lambda imp, n, x, d0, d1: imp.emit(n, Op.TRANSPOSE, [x], {"dim0": d0, "dim1": d1}),
    aten.permute.default: lambda imp, n, x, dims: imp.emit(n, Op.PERMUTE, [x], {"dims": tuple(dims)}),
    aten.unsqueeze.default: lambda imp, n, x, dim: imp.emit(n, Op.UNSQUEEZE, [x], {"dim": dim}),
    aten.squeeze.dim: lambda imp, n, x, dim: imp.emit(n, Op.SQUEEZE, [x], {"dims": (dim,)}),
    aten.expand.default: _h_expand,
    aten.clone.default: lambda imp, n, x, **kw: imp.alias(n, x),
    aten.alias.default: lambda imp, n, x, **kw: imp.alias(n, x),
    aten.contiguous.default: lambda imp, n, x, **kw: imp.alias(n, x),
    aten.dropout.default: lambda imp, n, x, *a, **kw: imp.alias(n, x),
    aten._to_copy.default: _h_to_copy,
    aten.arange.default: _h_arange,
    aten.arange.start: _h_arange,
    aten.arange.start_step: _h_arange,
    aten.ones.default: _h_full(lambda a: 1),
    aten.zeros.default: _h_full(lambda a: 0),
    aten.full.default: _h_full(lambda a: a[1]),
    aten.new_ones.default: _h_full(lambda a: 1),
    aten.new_zeros.default: _h_full(lambda a: 0),
    aten.index.Tensor: _h_index,
    aten.eq.Tensor: _binary(Op.EQ), aten.eq.Scalar: _binary(Op.EQ),
    aten.ne.Tensor: _binary(Op.NE), aten.ne.Scalar: _binary(Op.NE),
    aten.lt.Tensor: _binary(Op.LT), aten.lt.Scalar: _binary(Op.LT),
    aten.le.Tensor: _binary(Op.LE), aten.le.Scalar: _binary(Op.LE),
    aten.gt.Tensor: _binary(Op.GT), aten.gt.Scalar: _binary(Op.GT),
    aten.ge.Tensor: _binary(Op.GE), aten.ge.Scalar: _binary(Op.GE),
    aten.__and__.Tensor: _binary(Op.AND), aten.bitwise_and.Tensor: _binary(Op.AND),
    aten.__or__.Tensor: _binary(Op.OR), aten.bitwise_or.Tensor: _binary(Op.OR),
    aten.bitwise_not.default: _unary(Op.NOT), aten.logical_not.default: _unary(Op.NOT),
    aten.where.self: lambda imp, n, c, a, b: imp.emit(n, Op.WHERE, [c, a, b]),
    aten.layer_norm.default: _h_layer_norm,
    aten.scaled_dot_product_attention.default: _h_sdpa,
}
