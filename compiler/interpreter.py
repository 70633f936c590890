"""Evaluate an ir.Graph (or part of one) with torch, on the CPU.

Used at compile time to evaluate subgraphs that depend only on shapes and positions (masks, rotary
tables, learned position embeddings), and by tests to check that a pass kept the graph's meaning.
Primitive ops follow ATen; fused ops use runtime.reference_ops, which is their definition.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from fdpp.compiler.ir import Graph, Node, Op, resolve_dim, resolve_shape
from fdpp.runtime import reference_ops as ref


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _index(n: Node, x: torch.Tensor, *indices: torch.Tensor) -> torch.Tensor:
    it = iter(indices)
    full = [None if i in n.attr("none_dims") else next(it) for i in range(n.attr("count"))]
    return x[tuple(slice(None) if i is None else i for i in full)]


def _attention(n: Node, q, k, v, positions=None, *rotary_tables):
    b, s = q.shape[0], q.shape[1]
    if positions is None:
        positions = torch.arange(s)[None, :].expand(b, s)
    return ref.attention(q, k, v, positions, None, None, n_heads=n.attr("n_heads"),
                         n_kv_heads=n.attr("n_kv_heads"), head_dim=n.attr("head_dim"), scale=n.attr("scale"),
                         rotary_tables=tuple(rotary_tables) or None)


def _linear(n: Node, x, *rest):
    """(x, weight, bias?, residual?) or, for an encoded sparse weight, (x, part..., bias?)."""
    sparse = n.attr("sparse")
    if sparse is not None:
        return ref.sparse_linear(x, list(rest), sparse)
    return ref.linear_step(x, rest[0], n.attrs, list(rest[1:]))


def _sdpa(n: Node, q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=n.attr("is_causal"),
                                          scale=n.attr("scale"), enable_gqa=n.attr("enable_gqa"))


_EVAL: dict[Op, Callable[..., torch.Tensor]] = {
    Op.EMBEDDING: lambda n, t, i: ref.embedding(t, i),
    Op.LINEAR: _linear,
    Op.MATMUL: lambda n, a, b: torch.matmul(a, b),
    Op.ADD: lambda n, a, b: torch.add(a, b),
    Op.SUB: lambda n, a, b: torch.sub(a, b),
    Op.MUL: lambda n, a, b: torch.mul(a, b),
    Op.DIV: lambda n, a, b: torch.div(a, b),
    Op.NEG: lambda n, x: -x,
    Op.POW: lambda n, x, e: torch.pow(x, e),
    Op.RSQRT: lambda n, x: torch.rsqrt(x),
    Op.SQRT: lambda n, x: torch.sqrt(x),
    Op.EXP: lambda n, x: torch.exp(x),
    Op.COS: lambda n, x: torch.cos(x),
    Op.SIN: lambda n, x: torch.sin(x),
    Op.TANH: lambda n, x: torch.tanh(x),
    Op.ERF: lambda n, x: torch.erf(x),
    Op.MEAN: lambda n, x: torch.mean(x, dim=n.attr("dims"), keepdim=n.attr("keepdim")),
    Op.SUM: lambda n, x: torch.sum(x, dim=n.attr("dims"), keepdim=n.attr("keepdim")),
    Op.CUMSUM: lambda n, x: torch.cumsum(x, n.attr("dim")),
    Op.DIFF: lambda n, x, pre=None: torch.diff(x, n=n.attr("n"), dim=n.attr("dim"), prepend=pre),
    Op.SILU: lambda n, x: F.silu(x),
    Op.RELU: lambda n, x: F.relu(x),
    Op.GELU: lambda n, x: F.gelu(x, approximate=n.attr("approximate")),
    Op.SOFTMAX: lambda n, x: torch.softmax(x, n.attr("dim")),
    Op.CAT: lambda n, *xs: torch.cat(xs, n.attr("dim")),
    Op.TRANSPOSE: lambda n, x: x.transpose(n.attr("dim0"), n.attr("dim1")),
    Op.PERMUTE: lambda n, x: x.permute(n.attr("dims")),
    Op.UNSQUEEZE: lambda n, x: x.unsqueeze(n.attr("dim")),
    Op.SQUEEZE: lambda n, x: x.squeeze(n.attr("dims")),
    Op.CAST: lambda n, x: x.to(_dtype(n.attr("dtype"))),
    Op.INDEX: _index,
    Op.EQ: lambda n, a, b: torch.eq(a, b),
    Op.NE: lambda n, a, b: torch.ne(a, b),
    Op.LT: lambda n, a, b: torch.lt(a, b),
    Op.LE: lambda n, a, b: torch.le(a, b),
    Op.GT: lambda n, a, b: torch.gt(a, b),
    Op.GE: lambda n, a, b: torch.ge(a, b),
    Op.AND: lambda n, a, b: torch.logical_and(a, b) if a.dtype == torch.bool else a & b,
    Op.OR: lambda n, a, b: torch.logical_or(a, b) if a.dtype == torch.bool else a | b,
    Op.NOT: lambda n, x: torch.logical_not(x) if x.dtype == torch.bool else ~x,
    Op.WHERE: lambda n, c, a, b: torch.where(c, a, b),
    Op.LAYER_NORM: lambda n, x, w, b=None: ref.layer_norm(x, w, b, n.attr("eps")),
    Op.SDPA: _sdpa,
    Op.RMS_NORM: lambda n, x, w: ref.rms_norm(x, w, n.attr("eps")),
    Op.ROTARY: lambda n, x, c, s: ref.rotary(x, c, s, n.attr("head_dim"), n.attr("layout")),
    Op.ATTENTION: _attention,
    Op.GATED_ACT: lambda n, g, u: ref.gated_act(g, u, n.attr("activation")),
    Op.POSITION_LOOKUP: lambda n, t, p: ref.position_lookup(t, p, n.attr("seq_axis")),
}


def _constant(n: Node, env: Mapping[str, int]) -> torch.Tensor:
    return torch.tensor(n.attr("value"), dtype=_dtype(n.type.dtype))


def _shaped(n: Node, env: Mapping[str, int], inputs: list[torch.Tensor]) -> torch.Tensor:
    if n.op is Op.RESHAPE:
        return inputs[0].reshape(resolve_shape(n.attr("shape"), env))
    if n.op is Op.EXPAND:
        return inputs[0].expand(resolve_shape(n.attr("shape"), env))
    if n.op is Op.SLICE:
        x = inputs[0]
        dim = n.attr("dim") % x.dim()
        span = slice(resolve_dim(n.attr("start"), env), resolve_dim(n.attr("end"), env), n.attr("step"))
        return x[(slice(None),) * dim + (span,)]
    if n.op is Op.ARANGE:
        return torch.arange(resolve_dim(n.attr("start"), env), resolve_dim(n.attr("end"), env), n.attr("step"),
                            dtype=_dtype(n.attr("dtype")))
    if n.op is Op.FULL:
        return torch.full(resolve_shape(n.attr("shape"), env), n.attr("value"), dtype=_dtype(n.attr("dtype")))
    raise KeyError(n.op)


_SHAPED = {Op.RESHAPE, Op.EXPAND, Op.SLICE, Op.ARANGE, Op.FULL}


def evaluate(graph: Graph, feeds: Mapping[str, torch.Tensor], env: Mapping[str, int],
             want: list[str] | None = None,
             observe: Callable[[Node, list[torch.Tensor]], None] | None = None,
             float_weights: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Run the graph's nodes in order. `feeds` gives INPUT values (and may pre-set any node's value);
    `env` gives the symbols ("batch", "seq"). Returns the values of `want` (default: graph outputs).

    A value is dropped after its last reader, and weights are fetched from the graph's store when a node
    reads them, so a model larger than memory runs one layer's weights at a time (with a store that makes
    or maps them on demand). `observe(node, inputs)` is called before each fused or primitive op runs.
    `float_weights` casts floating weights as they are read (e.g. float32 for half-precision stores on a CPU)."""

    def weight(name: str) -> torch.Tensor:
        t = graph.param_tensor(graph.node(name))
        return t.to(float_weights) if float_weights is not None and t.is_floating_point() else t

    want = list(want if want is not None else graph.outputs)
    needed = set(want)
    for n in reversed(graph.nodes):
        if n.name in needed and n.name not in feeds:
            needed.update(n.inputs)
    last_reader: dict[str, int] = {}
    for index, n in enumerate(graph.nodes):
        if n.name in needed:
            for i in n.inputs:
                last_reader[i] = index
    keep = set(want)
    values: dict[str, torch.Tensor] = dict(feeds)
    for index, n in enumerate(graph.nodes):
        if n.name not in needed or n.name in values:
            continue
        if n.op is Op.INPUT:
            raise KeyError(f"interpreter: no value fed for input %{n.name}")
        if n.op is Op.PARAM:
            continue                           # fetched when first read, so weights live one layer at a time
        args = [values[i] if i in values else weight(i) for i in n.inputs]
        if n.op is Op.CONSTANT:
            values[n.name] = _constant(n, env)
        elif n.op in _SHAPED:
            values[n.name] = _shaped(n, env, args)
        else:
            if observe is not None:
                observe(n, args)
            values[n.name] = _EVAL[n.op](n, *args)
        for i in set(n.inputs):
            if last_reader.get(i) == index and i not in keep:
                values.pop(i, None)
    return {w: values[w] if w in values else weight(w) for w in want}
