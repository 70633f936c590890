"""Opset 23's fused ops, written out in the primitives the torch frontend imports."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fdpp.compiler.errors import UnsupportedOpError
from fdpp.compiler.ir import Op
from fdpp.compiler.onnx.names import _where
from fdpp.compiler.onnx.sizes import _same
from fdpp.compiler.onnx.values import _attrs, _float32_literal

if TYPE_CHECKING:
    from fdpp.compiler.onnx.importer import _Importer


def _h_attention(imp: _Importer, node) -> None:
    """Attention(q, k, v [, mask]) on [B, H, S, D] -> SDPA; GQA when K/V have fewer heads."""
    attrs = _attrs(node)
    used_outputs = [o for o in node.output[1:] if o and imp.uses.get(o)]
    if len(node.input) > 4 or attrs.get("softcap", 0.0) or used_outputs or imp.rank(node.input[0]) != 4:
        raise UnsupportedOpError("Attention", _where(node), "a KV-cache input, softcap, extra outputs or 3-D inputs")
    q, k, v = node.input[:3]
    qs, vs = imp.shape(q), imp.shape(v)
    scale = attrs.get("scale")
    scale = float(int(qs[3])) ** -0.5 if scale is None else _float32_literal(scale)
    inputs = [imp.operand(q), imp.operand(k), imp.operand(v)]
    if len(node.input) > 3 and node.input[3]:
        inputs.append(imp.operand(node.input[3], 4))
    imp.emit(Op.SDPA, inputs, qs[:3] + (vs[3],), imp.dtype(q),
             {"scale": scale, "is_causal": bool(attrs.get("is_causal", 0)),
              "enable_gqa": not _same(qs[1], imp.shape(k)[1])}, node.output[0])


def _h_rms_norm(imp: _Importer, node) -> None:
    """RMSNormalization(x, w) -> w * (x * rsqrt(mean(x^2, -1) + eps)): Hugging Face's spelling."""
    attrs = _attrs(node)
    x, weight = node.input[:2]
    shape, dtype, rank = imp.shape(x), imp.dtype(x), imp.rank(x)
    if attrs.get("axis", -1) % rank != rank - 1:
        raise UnsupportedOpError("RMSNormalization", _where(node), "not over the last axis alone")
    two = imp.constant(np.array(2.0, dtype=np.dtype(dtype)))
    eps = imp.constant(np.array(attrs.get("epsilon", 1e-5), dtype=np.float32))
    square = imp.emit(Op.POW, [imp.operand(x), two], shape, dtype)
    mean = imp.emit(Op.MEAN, [square.name], shape[:-1] + (1,), dtype, {"dims": (-1,), "keepdim": True})
    shifted = imp.emit(Op.ADD, [mean.name, eps], shape[:-1] + (1,), dtype)
    inverse = imp.emit(Op.RSQRT, [shifted.name], shape[:-1] + (1,), dtype)
    normed = imp.emit(Op.MUL, [imp.operand(x), inverse.name], shape, dtype)
    imp.emit(Op.MUL, [imp.operand(weight), normed.name], shape, dtype, {}, node.output[0])


def _h_rotary_embedding(imp: _Importer, node) -> None:
    """RotaryEmbedding(x [B, H, S, D], cos, sin [B|1, S, D/2]) -> x * cos' + cat(-x2, x1) * sin', with
    cos' = unsqueeze(cat(cos, cos), 1): Hugging Face's rotate-half spelling."""
    attrs = _attrs(node)
    x, cos, sin = node.input[:3]
    shape, dtype = imp.shape(x), imp.dtype(x)
    half = imp.shape(cos)[-1] if len(imp.shape(cos)) == 3 else None
    if len(node.input) > 3 and node.input[3] or attrs.get("interleaved", 0) or len(shape) != 4 \
            or half is None or not _same(2 * half, shape[3]) or attrs.get("rotary_embedding_dim", 0) not in (0, shape[3]):
        raise UnsupportedOpError("RotaryEmbedding", _where(node), "position ids, interleaving, a partial rotary "
                                 "dim or a layout other than x [B, H, S, D] with cos/sin [B, S, D/2]")
    d, table = int(shape[3]), imp.shape(cos)[:2] + (shape[3],)

    def full_table(half_table: str) -> str:
        both = imp.emit(Op.CAT, [imp.operand(half_table)] * 2, table, dtype, {"dim": -1})
        return imp.emit(Op.UNSQUEEZE, [both.name], (table[0], 1) + table[1:], dtype, {"dim": 1}).name

    halves = shape[:3] + (d // 2,)
    first = imp.emit(Op.SLICE, [imp.operand(x)], halves, dtype, {"dim": 3, "start": 0, "end": d // 2, "step": 1})
    second = imp.emit(Op.SLICE, [imp.operand(x)], halves, dtype, {"dim": 3, "start": d // 2, "end": d, "step": 1})
    negated = imp.emit(Op.NEG, [second.name], halves, dtype)
    rotated = imp.emit(Op.CAT, [negated.name, first.name], shape, dtype, {"dim": -1})
    plain = imp.emit(Op.MUL, [imp.operand(x), full_table(cos)], shape, dtype)
    turned = imp.emit(Op.MUL, [rotated.name, full_table(sin)], shape, dtype)
    imp.emit(Op.ADD, [plain.name, turned.name], shape, dtype, {}, node.output[0])
