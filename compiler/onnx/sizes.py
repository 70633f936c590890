"""Symbolic sizes over batch and seq (sympy expressions), and their form as the IR's Dims."""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy

from fdpp.compiler.errors import CompileError
from fdpp.compiler.ir import SYMBOLS, Dim

BATCH, SEQ = sympy.symbols("batch seq", integer=True, positive=True)
_HUGE = 2**62                       # Slice bounds past this mean "to the end" (the exporter writes INT64_MAX)


def _normalized(array: np.ndarray) -> np.ndarray:
    """Sizes that turned out constant become plain int64."""
    if array.dtype == object and all(sympy.sympify(x).is_Integer for x in array.flat):
        return np.array([int(x) for x in array.flat], dtype=np.int64).reshape(array.shape)
    return array


def _dim(expr: Any) -> Dim:
    """A sympy size -> the IR's Dim (an int, "batch", "seq" or a product such as "batch*seq"). Any other
    size keeps its text; `_check_sizes` refuses it if a node that needs it survives the import."""
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    parts = []
    for factor in sympy.Mul.make_args(expr):
        base, exponent = factor.as_base_exp()
        if factor.is_Integer and factor > 0:
            parts.append(str(int(factor)))
        elif base in (BATCH, SEQ) and exponent.is_Integer and exponent > 0:
            parts += [str(base)] * int(exponent)
        else:
            return str(expr).replace(" ", "")
    return "*".join(sorted(parts, key=lambda s: (s.isdigit(), s)))


def _expressible(dim: Dim) -> bool:
    return isinstance(dim, int) or all(f.isdigit() or f in SYMBOLS for f in dim.split("*"))


def _same(a: Any, b: Any) -> bool:
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


def _same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def _broadcast(*shapes: tuple) -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        sizes = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        distinct = []
        for size in sizes:
            if not _same(size, 1) and not any(_same(size, d) for d in distinct):
                distinct.append(size)
        if len(distinct) > 1:
            raise CompileError(f"ONNX import: shapes {shapes} do not broadcast")
        out.append(distinct[0] if distinct else sympy.Integer(1))
    return tuple(out)


def _clamp(index: Any, size: Any) -> Any:
    """ONNX Slice's bound normalisation for a positive step: negative from the end, clamped to [0, size]."""
    index = sympy.sympify(index)
    if index.is_Integer:
        if index >= _HUGE:
            return size
        if index <= -_HUGE:
            return sympy.Integer(0)
        if index < 0:
            index = index + size
    if (index - size).is_nonnegative:
        return size
    return sympy.Integer(0) if index.is_negative else index
