"""Handlers: one per ONNX op, each emitting the IR nodes that compute the node's output."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import sympy
from onnx import numpy_helper

from fdpp.compiler.errors import UnsupportedOpError
from fdpp.compiler.ir import Op
from fdpp.compiler.onnx.folding import Handler, _fold_concrete, _folding
from fdpp.compiler.onnx.names import _where
from fdpp.compiler.onnx.raise_patterns import _linear_weight, _raise_diff, _raise_sdpa, _slice_spec
from fdpp.compiler.onnx.sizes import _broadcast, _dim, _normalized, _same
from fdpp.compiler.onnx.values import _ONNX_DTYPES, _attrs, _float32_literal, _python_scalar, _Runtime, _Static

if TYPE_CHECKING:
    from fdpp.compiler.onnx.importer import _Importer


def _math(op: Op, ufunc) -> Handler:
    """A unary op on numbers: computed here on a static input (a scale's square root), else emitted."""
    return _folding(_fold_concrete(lambda attrs, x: ufunc(x)), _unary(op))


def _raw_axes(imp: _Importer, node) -> list[int] | None:
    """Axes given as the second input (opset 13+) or as an attribute, as written; None when absent."""
    if len(node.input) > 1 and node.input[1]:
        return imp.ints(node.input[1])
    axes = _attrs(node).get("axes")
    return list(axes) if axes is not None else None


def _axes(imp: _Importer, node, rank: int) -> list[int] | None:
    raw = _raw_axes(imp, node)
    return [a % rank for a in raw] if raw is not None else None


def _h_constant(imp: _Importer, node) -> None:
    attrs = _attrs(node)
    if "value" in attrs:
        array = numpy_helper.to_array(attrs["value"])
    else:
        key = next(iter(attrs))
        array = np.array(attrs[key], dtype=np.float32 if "float" in key else np.int64)
    imp.values[node.output[0]] = _Static(array)


def _h_shape(imp: _Importer, node) -> None:
    attrs = _attrs(node)
    shape = list(imp.shape(node.input[0]))[slice(attrs.get("start", 0), attrs.get("end"))]
    imp.values[node.output[0]] = _Static(_normalized(np.array(shape, dtype=object)))


def _h_identity(imp: _Importer, node) -> None:
    imp.values[node.output[0]] = imp.values[node.input[0]]


def _unary(op: Op, attrs_of: Callable[[dict], dict] = lambda a: {}) -> Handler:
    def handle(imp: _Importer, node) -> None:
        x = node.input[0]
        imp.emit(op, [imp.operand(x)], imp.shape(x), imp.dtype(x), attrs_of(_attrs(node)), node.output[0])
    return handle


def _binary(op: Op, result_dtype: str | None = None) -> Handler:
    def handle(imp: _Importer, node) -> None:
        a, b = node.input
        dtype = imp.dtype(a if isinstance(imp.values[a], _Runtime) else b)
        imp.emit(op, [imp.operand(a, imp.rank(b)), imp.operand(b, imp.rank(a))],
                 _broadcast(imp.shape(a), imp.shape(b)), result_dtype or dtype, {}, node.output[0])
    return handle


def _h_add(imp: _Importer, node) -> None:
    """A bias added to a MatMul that reads nothing else joins its LINEAR, as aten.linear had it."""
    for product, bias in (node.input, node.input[::-1]):
        value, array = imp.values[product], imp.static(bias)
        linear = imp.by_name.get(value.name) if isinstance(value, _Runtime) else None
        if linear is not None and linear.op is Op.LINEAR and len(linear.inputs) == 2 and imp.uses[product] == 1 \
                and array is not None and array.ndim == 1 and array.dtype.kind == "f" \
                and array.shape[0] == linear.type.shape[-1]:
            imp.emit(Op.LINEAR, [*linear.inputs, imp.weight(bias)], value.shape, value.dtype, {}, node.output[0])
            return
    _binary(Op.ADD)(imp, node)


def _h_mul(imp: _Importer, node) -> None:
    for x, gate in (node.input, node.input[::-1]):
        sigmoid = imp.producer_of(gate, "Sigmoid")
        if sigmoid is not None and sigmoid.input[0] == x:
            imp.emit(Op.SILU, [imp.operand(x)], imp.shape(x), imp.dtype(x), {}, node.output[0])
            return
    _binary(Op.MUL)(imp, node)


def _h_sub(imp: _Importer, node) -> None:
    if not _raise_diff(imp, node):
        _binary(Op.SUB)(imp, node)


def _h_reciprocal(imp: _Importer, node) -> None:
    x = node.input[0]
    sqrt = imp.producer_of(x, "Sqrt")
    if sqrt is not None:
        inner = sqrt.input[0]
        imp.emit(Op.RSQRT, [imp.operand(inner)], imp.shape(inner), imp.dtype(inner), {}, node.output[0])
        return
    one = imp.constant(np.array(1.0, dtype=np.dtype(imp.dtype(x))))
    imp.emit(Op.DIV, [one, imp.operand(x)], imp.shape(x), imp.dtype(x), {}, node.output[0])


def _h_sigmoid(imp: _Importer, node) -> None:
    """1 / (1 + exp(-x)); dead where the sigmoid only gates SiLU."""
    x = node.input[0]
    shape, dtype = imp.shape(x), imp.dtype(x)
    one = imp.constant(np.array(1.0, dtype=np.dtype(dtype)))
    negated = imp.emit(Op.NEG, [imp.operand(x)], shape, dtype)
    exp = imp.emit(Op.EXP, [negated.name], shape, dtype)
    denominator = imp.emit(Op.ADD, [exp.name, one], shape, dtype)
    imp.emit(Op.DIV, [one, denominator.name], shape, dtype, {}, node.output[0])


def _h_min_max(compare: Op) -> Handler:
    def handle(imp: _Importer, node) -> None:
        if len(node.input) != 2:
            raise UnsupportedOpError(node.op_type, _where(node), "more than two inputs")
        a, b = node.input
        shape, dtype = _broadcast(imp.shape(a), imp.shape(b)), imp.dtype(a)
        ia, ib = imp.operand(a, imp.rank(b)), imp.operand(b, imp.rank(a))
        pick = imp.emit(compare, [ia, ib], shape, "bool")
        imp.emit(Op.WHERE, [pick.name, ia, ib], shape, dtype, {}, node.output[0])
    return handle


def _h_isnan(imp: _Importer, node) -> None:
    x = imp.operand(node.input[0])
    imp.emit(Op.NE, [x, x], imp.shape(node.input[0]), "bool", {}, node.output[0])


def _h_where(imp: _Importer, node) -> None:
    ranks = [imp.rank(i) for i in node.input]
    inputs = [imp.operand(i, max(ranks)) for i in node.input]
    data = node.input[1] if isinstance(imp.values[node.input[1]], _Runtime) else node.input[2]
    imp.emit(Op.WHERE, inputs, _broadcast(*(imp.shape(i) for i in node.input)), imp.dtype(data), {},
             node.output[0])


def _h_cast(imp: _Importer, node) -> None:
    """Cast(x, to=T), or CastLike(x, like): to like's dtype (a static x is cast here, like or not)."""
    x = node.input[0]
    dtype = imp.dtype(node.input[1]) if node.op_type == "CastLike" else _ONNX_DTYPES[_attrs(node)["to"]]
    array = imp.static(x)
    if array is not None and array.dtype != object and dtype != "bfloat16":
        imp.values[node.output[0]] = _Static(array.astype(np.dtype(dtype)))
        return
    imp.emit(Op.CAST, [imp.operand(x)], imp.shape(x), dtype, {"dtype": dtype}, node.output[0])


def _h_matmul(imp: _Importer, node) -> None:
    if _raise_sdpa(imp, node):
        return
    x, w = node.input
    weight = _linear_weight(imp, node, w, transposed=False)
    if weight is not None:
        key, tensor = weight
        imp.emit(Op.LINEAR, [imp.operand(x), imp.param(key, tensor)], imp.shape(x)[:-1] + (tensor.shape[0],),
                 imp.dtype(x), {}, node.output[0])
        return
    a, b = imp.shape(x), imp.shape(w)
    if len(a) < 2 or len(b) < 2:
        raise UnsupportedOpError("MatMul", _where(node), "a 1-D operand")
    imp.emit(Op.MATMUL, [imp.operand(x), imp.operand(w)], _broadcast(a[:-2], b[:-2]) + (a[-2], b[-1]),
             imp.dtype(x), {}, node.output[0])


def _h_gemm(imp: _Importer, node) -> None:
    attrs = _attrs(node)
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise UnsupportedOpError("Gemm", _where(node), "transA, alpha or beta set")
    x, w = node.input[:2]
    weight = _linear_weight(imp, node, w, transposed=bool(attrs.get("transB", 0)))
    if weight is None:
        raise UnsupportedOpError("Gemm", _where(node), "B is not a constant weight")
    key, tensor = weight
    inputs = [imp.operand(x), imp.param(key, tensor)]
    if len(node.input) > 2 and node.input[2]:
        bias = imp.static(node.input[2])
        if bias is None or bias.ndim != 1:
            raise UnsupportedOpError("Gemm", _where(node), "C is not a constant vector")
        inputs.append(imp.weight(node.input[2]))
    imp.emit(Op.LINEAR, inputs, imp.shape(x)[:-1] + (tensor.shape[0],), imp.dtype(x), {}, node.output[0])


def _h_reshape(imp: _Importer, node) -> None:
    x, target = node.input[:2]
    source = imp.shape(x)
    keep_zero = _attrs(node).get("allowzero", 0)
    shape = [source[i] if _same(d, 0) and not keep_zero else d for i, d in enumerate(imp.sizes(target))]
    unknown = [i for i, d in enumerate(shape) if _same(d, -1)]
    if unknown:
        known = math.prod(d for i, d in enumerate(shape) if i != unknown[0])
        shape[unknown[0]] = sympy.cancel(math.prod(source) / known)
    imp.emit(Op.RESHAPE, [imp.operand(x)], tuple(shape), imp.dtype(x), {"shape": tuple(_dim(d) for d in shape)},
             node.output[0])


def _h_expand(imp: _Importer, node) -> None:
    x, target = node.input
    shape = _broadcast(imp.shape(x), tuple(imp.sizes(target)))
    dims, array = tuple(_dim(d) for d in shape), imp.static(x)
    if array is not None and array.size == 1 and array.dtype != object:   # ones(...), full(...)
        dtype = str(array.dtype)
        imp.emit(Op.FULL, [], shape, dtype, {"shape": dims, "value": _python_scalar(array), "dtype": dtype},
                 node.output[0])
        return
    imp.emit(Op.EXPAND, [imp.operand(x)], shape, imp.dtype(x), {"shape": dims}, node.output[0])


def _h_constant_of_shape(imp: _Importer, node) -> None:
    value = _attrs(node).get("value")
    array = numpy_helper.to_array(value) if value is not None else np.zeros(1, dtype=np.float32)
    shape = tuple(imp.sizes(node.input[0]))
    dtype = str(array.dtype)
    imp.emit(Op.FULL, [], shape, dtype, {"shape": tuple(_dim(d) for d in shape), "value": _python_scalar(array),
                                         "dtype": dtype}, node.output[0])


def _h_range(imp: _Importer, node) -> None:
    (start,), (end,), (step,) = (imp.sizes(i) for i in node.input)
    if not step.is_Integer or step < 1:
        raise UnsupportedOpError("Range", _where(node), "a step that is not a positive integer")
    length = end - start if step == 1 else sympy.ceiling((end - start) / step)
    dtype = imp.dtype(node.input[0])
    imp.emit(Op.ARANGE, [], (length,), dtype, {"start": _dim(start), "end": _dim(end), "step": int(step),
                                                "dtype": dtype}, node.output[0])


def _h_slice(imp: _Importer, node) -> None:
    spec = _slice_spec(imp, node)
    current, shape, dtype = imp.operand(node.input[0]), list(imp.shape(node.input[0])), imp.dtype(node.input[0])
    for k, (axis, start, end, step) in enumerate(spec):
        shape[axis] = sympy.Max(0, end - start) if step == 1 else sympy.ceiling((end - start) / step)
        out = node.output[0] if k == len(spec) - 1 else None
        current = imp.emit(Op.SLICE, [current], tuple(shape), dtype,
                           {"dim": axis, "start": _dim(start), "end": _dim(end), "step": step}, out).name


def _h_transpose(imp: _Importer, node) -> None:
    x = node.input[0]
    shape = imp.shape(x)
    perm = _attrs(node).get("perm", list(range(len(shape)))[::-1])
    moved = [i for i, p in enumerate(perm) if i != p]
    out_shape = tuple(shape[p] for p in perm)
    if not moved:
        imp.values[node.output[0]] = imp.values[x]
    elif len(moved) == 2:
        imp.emit(Op.TRANSPOSE, [imp.operand(x)], out_shape, imp.dtype(x), {"dim0": moved[0], "dim1": moved[1]},
                 node.output[0])
    else:
        imp.emit(Op.PERMUTE, [imp.operand(x)], out_shape, imp.dtype(x), {"dims": tuple(perm)}, node.output[0])


def _h_unsqueeze(imp: _Importer, node) -> None:
    x = node.input[0]
    shape, dtype = list(imp.shape(x)), imp.dtype(x)
    raw = _raw_axes(imp, node) or []
    axes = sorted(a % (len(shape) + len(raw)) for a in raw)     # positions in the output
    current = imp.operand(x)
    for k, axis in enumerate(axes):
        shape.insert(axis, sympy.Integer(1))
        out = node.output[0] if k == len(axes) - 1 else None
        current = imp.emit(Op.UNSQUEEZE, [current], tuple(shape), dtype, {"dim": axis}, out).name


def _h_squeeze(imp: _Importer, node) -> None:
    x = node.input[0]
    shape = imp.shape(x)
    axes = _axes(imp, node, len(shape))
    axes = axes if axes is not None else [i for i, d in enumerate(shape) if _same(d, 1)]
    out_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
    imp.emit(Op.SQUEEZE, [imp.operand(x)], out_shape, imp.dtype(x), {"dims": tuple(sorted(axes))}, node.output[0])


def _h_concat(imp: _Importer, node) -> None:
    axis = _attrs(node)["axis"]
    shapes = [imp.shape(i) for i in node.input]
    shape = list(shapes[0])
    shape[axis % len(shape)] = sum(s[axis % len(shape)] for s in shapes)
    imp.emit(Op.CAT, [imp.operand(i) for i in node.input], tuple(shape), imp.dtype(node.input[0]), {"dim": axis},
             node.output[0])


def _h_gather(imp: _Importer, node) -> None:
    data, indices = node.input
    table, axis = imp.static(data), _attrs(node).get("axis", 0)
    if table is not None and axis == 0 and table.ndim == 2 and table.dtype.kind == "f":
        imp.emit(Op.EMBEDDING, [imp.weight(data), imp.operand(indices)],
                 imp.shape(indices) + (sympy.Integer(table.shape[1]),), str(table.dtype), {}, node.output[0])
        return
    shape = imp.shape(data)
    axis %= len(shape)
    imp.emit(Op.INDEX, [imp.operand(data), imp.operand(indices)], shape[:axis] + imp.shape(indices) + shape[axis + 1:],
             imp.dtype(data), {"none_dims": tuple(range(axis)), "count": axis + 1}, node.output[0])


def _h_gather_nd(imp: _Importer, node) -> None:
    """GatherND(x, idx [..., r]) = x[idx[..., 0], ..., idx[..., r-1]]: advanced indexing by r tensors."""
    data, indices = node.input
    idx_shape = imp.shape(indices)
    if _attrs(node).get("batch_dims", 0) or not idx_shape[-1].is_Integer:
        raise UnsupportedOpError("GatherND", _where(node), "batch_dims or a symbolic index depth")
    depth, last = int(idx_shape[-1]), len(idx_shape) - 1
    picked = []
    for k in range(depth):
        column = imp.emit(Op.SLICE, [imp.operand(indices)], idx_shape[:-1] + (sympy.Integer(1),), "int64",
                          {"dim": last, "start": k, "end": k + 1, "step": 1})
        picked.append(imp.emit(Op.SQUEEZE, [column.name], idx_shape[:-1], "int64", {"dims": (last,)}).name)
    imp.emit(Op.INDEX, [imp.operand(data)] + picked, idx_shape[:-1] + imp.shape(data)[depth:], imp.dtype(data),
             {"none_dims": (), "count": depth}, node.output[0])


def _h_reduce(op: Op) -> Handler:
    def handle(imp: _Importer, node) -> None:
        x = node.input[0]
        shape = imp.shape(x)
        axes, keep = _axes(imp, node, len(shape)), bool(_attrs(node).get("keepdims", 1))
        if axes is None:
            raise UnsupportedOpError(node.op_type, _where(node), "no axes")
        raw = _raw_axes(imp, node)
        out = tuple(sympy.Integer(1) if i in axes else d for i, d in enumerate(shape) if keep or i not in axes)
        imp.emit(op, [imp.operand(x)], out, imp.dtype(x), {"dims": tuple(raw), "keepdim": keep}, node.output[0])
    return handle


def _h_cumsum(imp: _Importer, node) -> None:
    attrs = _attrs(node)
    if attrs.get("exclusive", 0) or attrs.get("reverse", 0):
        raise UnsupportedOpError("CumSum", _where(node), "exclusive or reverse")
    x, (axis,) = node.input[0], imp.ints(node.input[1])
    imp.emit(Op.CUMSUM, [imp.operand(x)], imp.shape(x), imp.dtype(x), {"dim": axis}, node.output[0])


def _h_layer_norm(imp: _Importer, node) -> None:
    attrs = _attrs(node)
    x = node.input[0]
    if attrs.get("axis", -1) % imp.rank(x) != imp.rank(x) - 1:
        raise UnsupportedOpError("LayerNormalization", _where(node), "not over the last axis alone")
    inputs = [imp.operand(x)] + [imp.operand(i) for i in node.input[1:] if i]
    imp.emit(Op.LAYER_NORM, inputs, imp.shape(x), imp.dtype(x),
             {"eps": _float32_literal(attrs.get("epsilon", 1e-5))}, node.output[0])
