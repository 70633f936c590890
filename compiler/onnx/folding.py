"""Evaluating nodes at import time (size subgraphs, constants) when all their inputs are static."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from onnx import numpy_helper

from fdpp.compiler.onnx.sizes import _normalized
from fdpp.compiler.onnx.values import _ONNX_DTYPES, _attrs, _Runtime, _Static

if TYPE_CHECKING:
    from fdpp.compiler.onnx.importer import _Importer

Handler = Callable[["_Importer", Any], None]


def _folding(fold: Callable[..., np.ndarray | None], handle: Handler) -> Handler:
    """Evaluate the node at import time when all its inputs are static and `fold` can; else `handle`."""
    def run(imp: _Importer, node) -> None:
        values = [imp.values[i] if i else None for i in node.input]
        if not any(isinstance(v, _Runtime) for v in values):
            arrays = [v.array if v is not None else None for v in values]
            out = fold(_attrs(node), *arrays)
            if out is not None:
                imp.values[node.output[0]] = _Static(_normalized(np.asarray(out)))
                return
        handle(imp, node)
    return run


def _concrete(*arrays) -> bool:
    return all(a is None or a.dtype != object for a in arrays)


def _fold_arith(ufunc) -> Callable:
    return lambda attrs, a, b: ufunc(a, b)


def _fold_div(attrs, a, b):
    integral = a.dtype == object or a.dtype.kind in "iu"
    return np.floor_divide(a, b) if integral else np.true_divide(a, b)


def _fold_slice(attrs, data, starts, ends, axes=None, steps=None):
    if not _concrete(starts, ends, axes, steps):
        return None
    index = [slice(None)] * data.ndim
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _fold_reshape(attrs, data, shape):
    if not _concrete(shape):
        return None
    shape = [data.shape[i] if d == 0 and not attrs.get("allowzero", 0) else int(d) for i, d in enumerate(shape)]
    return data.reshape(shape)


def _fold_cast(attrs, x):
    """Sizes stay sizes through an integer cast; numbers are cast by _h_cast."""
    return x if x.dtype == object and _ONNX_DTYPES[attrs["to"]].startswith("int") else None


def _fold_concrete(fn: Callable) -> Callable:
    return lambda attrs, *arrays: fn(attrs, *arrays) if _concrete(*arrays) else None


def _fold_constant_of_shape(attrs, shape):
    if not _concrete(shape):
        return None
    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, dtype=np.float32)
    return np.full([int(d) for d in shape], value.reshape(()).item(), dtype=value.dtype)
