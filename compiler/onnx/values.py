"""ONNX values as the importer holds them (static or runtime), and conversions of numbers and attributes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from onnx import helper

_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool",
                3: "int8", 2: "uint8"}


@dataclass(frozen=True)
class _Static:
    """A value known at import time: numbers, or sizes (an object array of sympy expressions)."""
    array: np.ndarray
    initializer: str | None = None      # the initializer it is, for its weight name


@dataclass(frozen=True)
class _Runtime:
    """A tensor the IR computes: its node, symbolic shape and dtype."""
    name: str
    shape: tuple
    dtype: str


def _float32_literal(value: float) -> float:
    """The shortest decimal that round-trips a float32 (9.9999997e-06 -> 1e-05): the model's own literal."""
    return float(str(np.float32(value)))


def _python_scalar(array: np.ndarray) -> bool | int | float:
    value = array.reshape(()).item()
    if array.dtype == np.float32:
        return _float32_literal(value)
    return value


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if str(array.dtype) == "bfloat16":
        return torch.tensor(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def _attrs(node) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out
