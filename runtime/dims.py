"""Size expressions: how plans write shapes and launch grids that depend on the batch at run time.

An expression is an int, or a string over named sizes ("batch", "seq", "rows", "capacity", ...) with
+, -, *, //, and the functions cdiv, min, max: e.g. "batch*seq", "cdiv(rows, 16)". Parsed with `ast`
and evaluated over a whitelist only, so a bundle can never run code through it.
"""

from __future__ import annotations

import ast
import functools
from typing import Mapping

_FUNCTIONS = {"cdiv": lambda a, b: -(-a // b), "min": min, "max": max}
_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.FloorDiv: lambda a, b: a // b}


@functools.lru_cache(maxsize=4096)
def _parse(expr: str) -> ast.expr:
    tree = ast.parse(expr, mode="eval").body
    for node in ast.walk(tree):
        allowed = (ast.BinOp, ast.Name, ast.Constant, ast.Call, ast.Load, ast.UnaryOp, ast.USub) + tuple(_BINARY)
        if not isinstance(node, allowed):
            raise ValueError(f"size expression {expr!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
            raise ValueError(f"size expression {expr!r}: only {sorted(_FUNCTIONS)} may be called")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int):
            raise ValueError(f"size expression {expr!r}: constants must be integers")
    return tree


def _eval(node: ast.expr, env: Mapping[str, int]) -> int:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise KeyError(f"size {node.id!r} is not known here (known: {sorted(env)})")
        return int(env[node.id])
    if isinstance(node, ast.UnaryOp):
        return -_eval(node.operand, env)
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    return _FUNCTIONS[node.func.id](*(_eval(a, env) for a in node.args))


def always_multiple_of(expr: int | str, factor: int) -> bool:
    """Whether `expr` is a multiple of `factor` for every value of its sizes: a constant that is one, a product
    with such a factor, a sum or difference of such terms. False where that cannot be shown (it may still be)."""
    def provable(node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return node.value % factor == 0
        if isinstance(node, ast.UnaryOp):
            return provable(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return provable(node.left) or provable(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            return provable(node.left) and provable(node.right)
        return False                                   # a size, a quotient, cdiv/min/max
    return expr % factor == 0 if isinstance(expr, int) else provable(_parse(expr))


def evaluate_dim(expr: int | str, env: Mapping[str, int]) -> int:
    """An int stays itself; a string expression is evaluated over `env`."""
    if isinstance(expr, int):
        return expr
    return _eval(_parse(expr), env)


def evaluate_shape(shape, env: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(evaluate_dim(d, env) for d in shape)
