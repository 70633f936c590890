"""Raising the exporter's decompositions back to single IR ops, every piece of the pattern checked."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from fdpp.compiler.errors import UnsupportedOpError
from fdpp.compiler.ir import Op
from fdpp.compiler.onnx.names import _where
from fdpp.compiler.onnx.sizes import _clamp, _same, _same_shape
from fdpp.compiler.onnx.values import _attrs, _float32_literal, _Runtime, _Static, _to_torch

if TYPE_CHECKING:
    from fdpp.compiler.onnx.importer import _Importer


def _unscaled(imp: _Importer, name: str) -> tuple[str, float]:
    mul = imp.producer_of(name, "Mul")
    if mul is not None:
        for x, c in (mul.input, mul.input[::-1]):
            if imp.scalar(c) is not None and isinstance(imp.values[x], _Runtime):
                return x, imp.scalar(c)
    return name, 1.0


def _untransposed(imp: _Importer, name: str) -> str | None:
    """k for k^T (last two dims swapped), as Transpose, or as the exporter's Reshape [N, S, D] ->
    Transpose(0, 2, 1) -> Reshape back to [..., D, S]."""
    transpose = imp.producer_of(name, "Transpose")
    if transpose is not None:
        rank = imp.rank(name)
        swap = list(range(rank - 2)) + [rank - 1, rank - 2]
        return transpose.input[0] if _attrs(transpose).get("perm") == swap else None
    outer = imp.producer_of(name, "Reshape")
    transpose = outer and imp.producer_of(outer.input[0], "Transpose")
    inner = transpose and imp.producer_of(transpose.input[0], "Reshape")
    if inner is None or _attrs(transpose).get("perm") != [0, 2, 1]:
        return None
    k = inner.input[0]
    k_shape, flat = imp.shape(k), imp.shape(inner.output[0])
    if len(k_shape) < 2 or len(flat) != 3 or not _same_shape(flat[1:], k_shape[-2:]) \
            or not _same(math.prod(flat), math.prod(k_shape)) \
            or not _same_shape(imp.shape(name), k_shape[:-2] + (k_shape[-1], k_shape[-2])):
        return None
    return k


def _raise_sdpa(imp: _Importer, node) -> bool:
    """MatMul(probs, v), probs = [Where(IsNaN(p), 0, p) of] p = Softmax(q*c1 @ (k^T*c2) [+ mask], -1) -> SDPA."""
    probs, v = node.input
    guard = imp.producer_of(probs, "Where")
    if guard is not None:
        isnan = imp.producer_of(guard.input[0], "IsNaN")
        if isnan is None or isnan.input[0] != guard.input[2] or imp.scalar(guard.input[1]) != 0.0:
            return False
        probs = guard.input[2]
    softmax = imp.producer_of(probs, "Softmax")
    if softmax is None or _attrs(softmax).get("axis", -1) not in (-1, 3):
        return False
    scores, mask = softmax.input[0], None
    add = imp.producer_of(scores, "Add")
    if add is not None:
        pairs = [(s, m) for s, m in (add.input, add.input[::-1]) if imp.producer_of(s, "MatMul") is not None]
        if not pairs:
            return False
        scores, mask = pairs[0]
    qk = imp.producer_of(scores, "MatMul")
    if qk is None:
        return False
    (q, q_scale), (k_t, k_scale) = _unscaled(imp, qk.input[0]), _unscaled(imp, qk.input[1])
    k = _untransposed(imp, k_t)
    if k is None or not all(isinstance(imp.values[x], _Runtime) for x in (q, k, v)):
        return False
    qs, ks, vs = imp.shape(q), imp.shape(k), imp.shape(v)
    if not (len(qs) == len(ks) == len(vs) == 4 and _same_shape(qs[:2], ks[:2]) and _same_shape(ks[:3], vs[:3])
            and _same(qs[3], ks[3]) and qs[3].is_Integer):
        return False
    scale, default = q_scale * k_scale, float(int(qs[3])) ** -0.5
    # the exporter splits the scale into two float32 square roots; their product is the scale to ~1e-7
    scale = default if abs(scale - default) <= 1e-6 * default else _float32_literal(scale)
    inputs = [imp.operand(q), imp.operand(k), imp.operand(v)] + ([imp.operand(mask, 4)] if mask else [])
    imp.emit(Op.SDPA, inputs, qs[:3] + (vs[3],), imp.dtype(q),
             {"scale": scale, "is_causal": False, "enable_gqa": False}, node.output[0])
    return True


def _slice_spec(imp: _Importer, node) -> list[tuple[int, Any, Any, int]]:
    """A Slice node's (axis, start, end, step) per axis, bounds clamped to the sizes."""
    data, starts, ends = node.input[:3]
    starts, ends = imp.sizes(starts), imp.sizes(ends)
    optional = list(node.input[3:]) + ["", ""]
    axes = imp.ints(optional[0]) if optional[0] else list(range(len(starts)))
    steps = imp.ints(optional[1]) if optional[1] else [1] * len(starts)
    shape, out = imp.shape(data), []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step < 1:
            raise UnsupportedOpError("Slice", _where(node), "a step below 1")
        axis %= len(shape)
        out.append((axis, _clamp(start, shape[axis]), _clamp(end, shape[axis]), step))
    return out


def _raise_diff(imp: _Importer, node) -> bool:
    """Sub(Slice(c, 1, n), Slice(c, 0, n-1)), c = Concat(prepend, x) on that axis -> DIFF(x, prepend)."""
    later, earlier = (imp.producer_of(x, "Slice") for x in node.input)
    if later is None or earlier is None or later.input[0] != earlier.input[0]:
        return False
    joined = later.input[0]
    concat = imp.producer_of(joined, "Concat")
    if concat is None or len(concat.input) != 2:
        return False
    axis = _attrs(concat)["axis"]
    size = imp.shape(joined)[axis % imp.rank(joined)]
    want_later, want_earlier = (axis % imp.rank(joined), 1, size, 1), (axis % imp.rank(joined), 0, size - 1, 1)
    (got_later,), (got_earlier,) = _slice_spec(imp, later), _slice_spec(imp, earlier)
    if not (_same_shape(got_later, want_later) and _same_shape(got_earlier, want_earlier)):
        return False
    prepend, x = concat.input
    imp.emit(Op.DIFF, [imp.operand(x), imp.operand(prepend)], imp.shape(x), imp.dtype(x), {"dim": axis, "n": 1},
             node.output[0])
    return True


def _linear_weight(imp: _Importer, node, name: str, transposed: bool) -> tuple[str, torch.Tensor] | None:
    """(key, weight [N, K]) when `name` is a constant matrix the node multiplies by: W^T written as
    Transpose(W), as a folded initializer [K, N], or (transposed=True, Gemm's transB) W itself."""
    transpose = imp.producer_of(name, "Transpose")
    if transpose is not None and _attrs(transpose).get("perm") == [1, 0]:
        source = imp.values[transpose.input[0]]
        if isinstance(source, _Static) and source.initializer and source.array.dtype.kind == "f":
            return imp.weight_key(source.initializer), _to_torch(source.array)
    v = imp.values[name]
    if not isinstance(v, _Static) or v.array.ndim != 2 or v.array.dtype.kind != "f":
        return None
    key = imp.weight_key(v.initializer or name)
    if transposed:
        return key, _to_torch(v.array)
    return imp.linear_weight_key(node) or f"{key}.T", _to_torch(v.array.T)
