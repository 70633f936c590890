"""The op table: ONNX op type -> handler. An op missing here stops the import (UnsupportedOpError)."""

from __future__ import annotations

import numpy as np

from fdpp.compiler.ir import Op
from fdpp.compiler.onnx.folding import (Handler, _fold_arith, _fold_cast, _fold_concrete, _fold_constant_of_shape,
                                        _fold_div, _fold_reshape, _fold_slice, _folding)
from fdpp.compiler.onnx.fused_ops import _h_attention, _h_rms_norm, _h_rotary_embedding
from fdpp.compiler.onnx.handlers import (
    _binary, _h_add, _h_cast, _h_concat, _h_constant, _h_constant_of_shape, _h_cumsum, _h_expand, _h_gather,
    _h_gather_nd, _h_gemm, _h_identity, _h_isnan, _h_layer_norm, _h_matmul, _h_min_max, _h_mul, _h_range,
    _h_reciprocal, _h_reduce, _h_reshape, _h_shape, _h_sigmoid, _h_slice, _h_squeeze, _h_sub, _h_transpose,
    _h_unsqueeze, _h_where, _math, _unary)

_OPS: dict[str, Handler] = {
    # sizes and constants, evaluated at import time when their inputs are
    "Constant": _h_constant,
    "Shape": _h_shape,
    "Identity": _h_identity,
    "Concat": _folding(lambda a, *xs: np.concatenate(xs, axis=a["axis"]), _h_concat),
    "Slice": _folding(_fold_slice, _h_slice),
    "Squeeze": _folding(lambda a, x, axes=None: np.squeeze(x, tuple(int(i) for i in axes))
                        if axes is not None else np.squeeze(x), _h_squeeze),
    "Unsqueeze": _folding(lambda a, x, axes: np.expand_dims(x, tuple(int(i) for i in axes)), _h_unsqueeze),
    "Gather": _folding(lambda a, x, idx: np.take(x, idx, axis=a.get("axis", 0)), _h_gather),
    "Reshape": _folding(_fold_reshape, _h_reshape),
    "Cast": _folding(_fold_cast, _h_cast),
    "CastLike": _h_cast,
    "Range": _folding(_fold_concrete(lambda a, s, e, d: np.arange(s, e, d, dtype=s.dtype)), _h_range),
    "Expand": _folding(_fold_concrete(lambda a, x, s: np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(s))
                                                                          ).copy()), _h_expand),
    "ConstantOfShape": _folding(_fold_constant_of_shape, _h_constant_of_shape),
    # arithmetic
    "Add": _folding(_fold_arith(np.add), _h_add),
    "Sub": _folding(_fold_arith(np.subtract), _h_sub),
    "Mul": _folding(_fold_arith(np.multiply), _h_mul),
    "Div": _folding(_fold_div, _binary(Op.DIV)),
    "Pow": _binary(Op.POW),
    "Neg": _math(Op.NEG, np.negative),
    "Sqrt": _math(Op.SQRT, np.sqrt),
    "Reciprocal": _h_reciprocal,
    "Exp": _math(Op.EXP, np.exp),
    "Cos": _math(Op.COS, np.cos),
    "Sin": _math(Op.SIN, np.sin),
    "Tanh": _unary(Op.TANH),
    "Erf": _unary(Op.ERF),
    "Relu": _unary(Op.RELU),
    "Sigmoid": _h_sigmoid,
    "Gelu": _unary(Op.GELU, lambda a: {"approximate": a.get("approximate", "none")}),
    "Softmax": _unary(Op.SOFTMAX, lambda a: {"dim": a.get("axis", -1)}),
    "ReduceMean": _h_reduce(Op.MEAN),
    "ReduceSum": _h_reduce(Op.SUM),
    "CumSum": _h_cumsum,
    "Max": _h_min_max(Op.GE),
    "Min": _h_min_max(Op.LE),
    "MatMul": _h_matmul,
    "Gemm": _h_gemm,
    "LayerNormalization": _h_layer_norm,
    "RMSNormalization": _h_rms_norm,
    "RotaryEmbedding": _h_rotary_embedding,
    "Attention": _h_attention,
    # layout
    "Transpose": _h_transpose,
    "GatherND": _h_gather_nd,
    # comparisons and logic (masks)
    "Equal": _binary(Op.EQ, "bool"),
    "Less": _binary(Op.LT, "bool"),
    "LessOrEqual": _binary(Op.LE, "bool"),
    "Greater": _binary(Op.GT, "bool"),
    "GreaterOrEqual": _binary(Op.GE, "bool"),
    "And": _binary(Op.AND, "bool"),
    "Or": _binary(Op.OR, "bool"),
    "Not": _unary(Op.NOT),
    "IsNaN": _h_isnan,
    "Where": _h_where,
}
