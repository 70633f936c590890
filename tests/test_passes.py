"""Pass tests, three checks each (DESIGN.md §10): the pass fired (its counter), the output holds the fused op
and not the pattern's primitive ops, and the interpreter gives the same numbers before and after.

Every pattern also has negative tests: hand-made IR graphs that almost match and must be left alone.
"""

from __future__ import annotations

import pytest
import torch

from fdpp.compiler.errors import CompileError
from fdpp.compiler.interpreter import evaluate
from fdpp.compiler.ir import Graph, Node, Op, TensorType, format_graph, resolve_shape
from fdpp.compiler.targets import get_target
from fdpp.passes.canonicalize import canonicalize
from fdpp.passes.fold_position_tables import TABLE_PREFIX, fold_position_tables
from fdpp.passes.fuse_attention import fuse_attention
from fdpp.passes.fuse_gated_mlp import fuse_gated_mlp
from fdpp.passes.fuse_linear_epilogues import fuse_linear_epilogues, stacked_key
from fdpp.passes.fuse_rms_norm import fuse_rms_norm
from fdpp.passes.fuse_rotary import fuse_rotary
from fdpp.passes.fuse_rotary_into_attention import fuse_rotary_into_attention
from fdpp.passes.insert_kv_cache import insert_kv_cache
from fdpp.passes.pass_manager import PassContext, PassManager, PassResult
from fdpp.passes.pipeline import PIPELINE
from fdpp.passes.select_kernels import choose_linear
from fdpp.runtime.schema import KernelChoice

from helpers import MAX_BATCH, MAX_SEQ_LEN, GraphBuilder, compile_options, tiny_llama, tiny_opt, tiny_qwen2, trace_tiny

VOCAB = 300
LAYERS = 2
CTX = PassContext(compile_options(), get_target("a100"))
B, S = "batch", "seq"


# --- shared checks ---------------------------------------------------------------------------


def random_feeds(graph: Graph, env: dict[str, int]) -> dict[str, torch.Tensor]:
    """Fresh values for every graph input: token ids, positions 0..seq-1, or floats."""
    feeds = {}
    for n in graph.inputs():
        shape = resolve_shape(n.type.shape, env)
        if n.name == "positions":
            feeds[n.name] = torch.arange(env["seq"])[None, :].expand(*shape)
        elif n.type.dtype == "int64":
            feeds[n.name] = torch.randint(0, VOCAB, shape)
        else:
            feeds[n.name] = torch.randn(shape, dtype=getattr(torch, n.type.dtype))
    return feeds


def assert_same_numbers(before: Graph, after: Graph, sizes=((2, 9), (1, 5))) -> None:
    for batch, seq in sizes:
        env = {"batch": batch, "seq": seq}
        feeds = random_feeds(after if after.has("positions") else before, env)
        feeds.update({k: v for k, v in random_feeds(before, env).items() if k not in feeds})
        (want,) = evaluate(before, feeds, env).values()
        (got,) = evaluate(after, feeds, env).values()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def assert_left_alone(pass_fn, graph: Graph, fused: Op | None) -> None:
    """A near-miss: the pass changes nothing and adds no fused op."""
    result = pass_fn(graph, CTX)
    assert not result.modified, f"{pass_fn.__name__} fired on a near-miss: {result.changes}\n{format_graph(graph)}"
    assert fused is None or result.graph.count(fused) == 0
    assert result.graph.nodes == graph.nodes


def assert_fused(pass_fn, graph: Graph, fused: Op, count: int = 1, check_numbers: bool = True) -> Graph:
    result = pass_fn(graph, CTX)
    assert sum(result.changes.values()) >= count and result.graph.count(fused) == count, result.changes
    if check_numbers:
        assert_same_numbers(graph, result.graph)
    return result.graph


# --- the traced tiny models, pass by pass ------------------------------------------------------

MODELS = {"llama": tiny_llama, "opt": tiny_opt}


@pytest.fixture(scope="module", params=list(MODELS))
def stages(request) -> dict[str, tuple[Graph, PassResult]]:
    """pass name -> (graph before it, its result), running PIPELINE over one traced tiny model."""
    model, _ = MODELS[request.param]()
    graph = trace_tiny(model)
    out = {"model": request.param}
    for name, fn in PIPELINE:
        result = fn(graph, CTX)
        out[name] = (graph, result)
        graph = result.graph
    return out


def test_pipeline_covers_every_pass_tested_here():
    assert [name for name, _ in PIPELINE] == ["canonicalize", "fuse_rms_norm", "fuse_rotary", "fuse_attention",
                                             "fuse_gated_mlp", "fold_position_tables", "insert_kv_cache",
                                             "prune_weights", "calibrate_softmax", "fuse_linear_epilogues",
                                             "fuse_rotary_into_attention", "select_kernels",
                                             "encode_sparse_weights", "interleave_sparse_inputs"]
    # prune_weights and encode_sparse_weights are tested in test_prune.py and test_sparse_bundles.py,
    # interleave_sparse_inputs in test_interleave_sparse_inputs.py


def _removable(graph: Graph, n: Node) -> bool:
    """What canonicalize promises to remove: a same-type cast, reshape or expand, a full slice, x*1, x+0."""
    if not n.inputs or graph.node(n.inputs[0]).type != n.type:
        return False
    if n.op in (Op.CAST, Op.RESHAPE, Op.EXPAND):
        return True
    if n.op is Op.SLICE:
        return n.attr("start") == 0 and n.attr("step") == 1
    other = graph.node(n.inputs[1]) if len(n.inputs) > 1 else None
    if other is None or other.op is not Op.CONSTANT or isinstance(other.attr("value"), bool):
        return False
    return (n.op in (Op.MUL, Op.DIV) and other.attr("value") == 1) or (n.op in (Op.ADD, Op.SUB)
                                                                      and other.attr("value") == 0)


def test_canonicalize(stages):
    before, result = stages["canonicalize"]
    assert result.changes["reshape"] >= LAYERS and result.changes["identity_arith"] >= 1
    assert any(_removable(before, n) for n in before.nodes)
    assert not any(_removable(result.graph, n) for n in result.graph.nodes)
    assert len(result.graph.nodes) < len(before.nodes)
    assert_same_numbers(before, result.graph)


def test_fuse_rms_norm(stages):
    before, result = stages["fuse_rms_norm"]
    after = result.graph
    if stages["model"] == "opt":   # LayerNorm is not RMSNorm: a real-model negative
        assert not result.modified and after.count(Op.RMS_NORM) == 0
        assert after.count(Op.LAYER_NORM) == before.count(Op.LAYER_NORM) == 2 * LAYERS + 1
        return
    assert result.changes == {"rms_norm": 2 * LAYERS + 1}
    assert after.count(Op.RMS_NORM) == 2 * LAYERS + 1
    for op in (Op.POW, Op.MEAN, Op.RSQRT):
        assert before.count(op) > 0 and after.count(op) == 0, op
    assert all(n.attr("eps") == pytest.approx(1e-6) for n in after.nodes if n.op is Op.RMS_NORM)
    assert_same_numbers(before, after)


def test_fuse_rotary(stages):
    before, result = stages["fuse_rotary"]
    after = result.graph
    if stages["model"] == "opt":   # learned positions, no rotary
        assert not result.modified and after.count(Op.ROTARY) == 0
        return
    assert result.changes == {"rotary": 2 * LAYERS}                    # q and k of each layer
    assert after.count(Op.ROTARY) == 2 * LAYERS
    assert before.count(Op.NEG) == 2 * LAYERS and after.count(Op.NEG) == 0
    assert not any(n.op is Op.SLICE and n.attr("dim") % 4 == 3 for n in after.nodes)
    assert all(n.attr("layout") == "heads" and n.attr("head_dim") == 16 for n in after.nodes if n.op is Op.ROTARY)
    assert_same_numbers(before, after)


def test_fuse_attention(stages):
    before, result = stages["fuse_attention"]
    after = result.graph
    assert result.changes["attention"] == LAYERS
    assert result.changes["mask_verified_causal"] == LAYERS               # HF passes an explicit mask
    assert result.changes["query_scale_folded"] == (LAYERS if stages["model"] == "opt" else 0)
    assert after.count(Op.ATTENTION) == LAYERS and after.count(Op.SDPA) == 0
    # head split/merge, GQA repeat and the mask are gone with the SDPA
    for op in (Op.TRANSPOSE, Op.EXPAND, Op.LE, Op.INDEX):
        assert after.count(op) == 0, op
    attention = [n for n in after.nodes if n.op is Op.ATTENTION]
    kv_heads = 2 if stages["model"] == "llama" else 4
    assert all(n.attr("n_heads") == 4 and n.attr("n_kv_heads") == kv_heads and n.attr("head_dim") == 16
               for n in attention)
    assert all(n.attr("layout") == "flat" for n in after.nodes if n.op is Op.ROTARY)
    assert_same_numbers(before, after)


def test_fuse_gated_mlp(stages):
    before, result = stages["fuse_gated_mlp"]
    after = result.graph
    if stages["model"] == "opt":   # ReLU MLP: nothing gated
        assert not result.modified and after.count(Op.GATED_ACT) == 0 and after.count(Op.RELU) == LAYERS
        return
    assert result.changes == {"gated_act": LAYERS}
    assert after.count(Op.GATED_ACT) == LAYERS
    assert before.count(Op.SILU) == LAYERS and after.count(Op.SILU) == 0
    assert all(n.attr("activation") == "silu" for n in after.nodes if n.op is Op.GATED_ACT)
    assert_same_numbers(before, after)


def test_fuse_linear_epilogues(stages):
    before, result = stages["fuse_linear_epilogues"]
    after = result.graph
    gated = LAYERS if stages["model"] == "llama" else 0                      # OPT's ReLU MLP has no GATED_ACT
    # o_proj and down_proj take the residual; q, k and v become one GEMM with three views
    assert result.changes == {"gated": gated, "residual": 2 * LAYERS, "siblings": LAYERS}
    assert after.count(Op.GATED_ACT) == 0 and after.count(Op.ADD) == before.count(Op.ADD) - 2 * LAYERS
    assert after.count(Op.LINEAR) == before.count(Op.LINEAR) - gated - 2 * LAYERS
    assert after.count(Op.SLICE) == 3 * LAYERS
    for n in after.nodes:
        if n.op is Op.LINEAR and n.attr("gated"):
            weight = after.node(n.inputs[1])
            assert weight.attr("key").endswith("gate_proj+up_proj.weight")
            assert after.param_tensor(weight).shape == weight.type.shape == (2 * n.type.shape[-1], 64)
    assert_same_numbers(before, after)


def test_fold_position_tables(stages):
    before, result = stages["fold_position_tables"]
    after = result.graph
    tables = 2 if stages["model"] == "llama" else 1                         # cos and sin / learned positions
    assert result.changes == {"tables": tables}
    assert after.count(Op.POSITION_LOOKUP) == tables
    assert not before.has("positions") and after.node("positions").op is Op.INPUT
    for op in (Op.ARANGE, Op.FULL, Op.CUMSUM, Op.COS, Op.SIN):
        assert after.count(op) == 0, op
    for n in after.nodes:
        if n.op is Op.PARAM and n.attr("key").startswith(TABLE_PREFIX):
            assert after.param_tensor(n).shape[0] == MAX_SEQ_LEN
    assert_same_numbers(before, after)


def test_insert_kv_cache(stages):
    before, result = stages["insert_kv_cache"]
    after = result.graph
    assert result.changes == {"kv_cached_layers": LAYERS}
    attention = [n for n in after.nodes if n.op is Op.ATTENTION]
    assert [n.attr("layer") for n in attention] == list(range(LAYERS))
    assert all(len(n.inputs) == 4 and n.inputs[3] == "positions" for n in attention)
    assert after.config["kv_layers"] == LAYERS and after.config["head_dim"] == 16
    assert_same_numbers(before, after)


def test_fuse_rotary_into_attention(stages):
    before, result = stages["fuse_rotary_into_attention"]
    after = result.graph
    if stages["model"] == "opt":   # learned positions: no rotary to move
        assert not result.modified and after.count(Op.ROTARY) == 0
        return
    assert result.changes == {"rotary_into_attention": LAYERS}
    assert before.count(Op.ROTARY) == 2 * LAYERS and after.count(Op.ROTARY) == 0
    for n in (n for n in after.nodes if n.op is Op.ATTENTION):
        assert n.attr("rotary") is True and len(n.inputs) == 6
        assert [after.node(i).op for i in n.inputs[4:]] == [Op.POSITION_LOOKUP] * 2
    assert_same_numbers(before, after)


def test_select_kernels(stages):
    before, result = stages["select_kernels"]
    after = result.graph
    max_rows = MAX_BATCH * CTX.options.prefill_chunk
    bound = [n for n in after.nodes if n.attr("kernels")]
    assert result.changes == {"bound": len(bound)} and len(bound) > 0
    for n in after.nodes:
        if n.op in (Op.LINEAR, Op.ATTENTION, Op.EMBEDDING, Op.POSITION_LOOKUP):
            assert n.attr("kernels"), n.name
    for n in bound:
        choices = [KernelChoice(**k) for k in n.attr("kernels")]
        for phase in {c.phase for c in choices}:
            rows = [c.max_rows for c in choices if c.phase == phase]
            covered = MAX_BATCH if phase == "decode" else max_rows             # decode: one row per sequence
            assert rows == sorted(rows) and rows[-1] == covered, n.name        # every row count is covered
    assert not any(n.attr("kernels") for n in after.nodes if n.op in (Op.INPUT, Op.PARAM, Op.RESHAPE))
    assert_same_numbers(before, after)


def test_heuristic_dataflow_orders_gemv_flat_tensor_core():
    """FlashDecoding++ §5: GEMV for few rows, flat GEMM in between, tensor-core GEMM for many — in that
    order where each is chosen. On the H200 our flat GEMM measured faster than our GEMV even at M = 1
    (docs/perf/2026-11-22-h200-flat-gemm.md), so the cost model may skip the GEMV; it must pick the flat GEMM
    for decode batches and the tensor-core GEMM for large M."""
    order = ["gemv", "flat_gemm", "tc_gemm"]
    for target in ("a100", "h200", "mi300x"):
        choices = choose_linear(4096, 4096, 2048, get_target(target))
        kernels = [c.kernel for c in choices]
        assert kernels[-1] == "tc_gemm", (target, kernels)
        assert kernels == sorted(kernels, key=order.index), (target, kernels)
        decode = next(c for c in choices if 16 <= c.max_rows)
        assert decode.kernel == "flat_gemm" and decode.config["block_n"] >= 16, (target, choices)


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt, tiny_qwen2], ids=["llama", "opt", "qwen2"])
def test_pipeline_keeps_hugging_face_logits(make):
    model, _ = make()
    graph = trace_tiny(model)
    optimized = PassManager(list(PIPELINE)).run(graph, CTX)
    tokens = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        want = model(input_ids=tokens).logits
    feeds = {"tokens": tokens, "positions": torch.arange(11)[None, :].expand(2, 11)}
    (got,) = evaluate(optimized, feeds, {"batch": 2, "seq": 11}).values()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- canonicalize: near-misses --------------------------------------------------------------


def _unary_graph(op: Op, out_shape, out_dtype="float32", operand=None, in_dtype="float32", **attrs) -> Graph:
    b = GraphBuilder()
    x = b.input("x", (B, S, 8), in_dtype)
    inputs = [x] + ([b.const(operand)] if operand is not None else [])
    return b.build(b.op(op, inputs, out_shape, out_dtype, **attrs))


@pytest.mark.parametrize("graph, kind", [
    (_unary_graph(Op.CAST, (B, S, 8), dtype="float32"), "cast"),
    (_unary_graph(Op.RESHAPE, (B, S, 8), shape=(B, S, 8)), "reshape"),
    (_unary_graph(Op.EXPAND, (B, S, 8), shape=(B, S, 8)), "reshape"),
    (_unary_graph(Op.SLICE, (B, S, 8), dim=2, start=0, end=8, step=1), "slice"),
    (_unary_graph(Op.MUL, (B, S, 8), operand=1.0), "identity_arith"),
    (_unary_graph(Op.DIV, (B, S, 8), operand=1), "identity_arith"),
    (_unary_graph(Op.ADD, (B, S, 8), operand=0), "identity_arith"),
    (_unary_graph(Op.SUB, (B, S, 8), operand=0.0), "identity_arith"),
], ids=["cast", "reshape", "expand", "slice", "mul1", "div1", "add0", "sub0"])
def test_canonicalize_drops_no_ops(graph, kind):
    result = canonicalize(graph, CTX)
    assert result.changes[kind] == 1
    assert [n.op for n in result.graph.nodes] == [Op.INPUT] and result.graph.outputs == ("x",)


@pytest.mark.parametrize("graph", [
    _unary_graph(Op.RESHAPE, (B, S, 2, 4), shape=(B, S, 2, 4)),
    _unary_graph(Op.RESHAPE, (S, B, 8), shape=(S, B, 8)),
    _unary_graph(Op.CAST, (B, S, 8), "float16", dtype="float16"),
    _unary_graph(Op.CAST, (B, S, 8), "float32", in_dtype="int64", dtype="float32"),
    _unary_graph(Op.SLICE, (B, S, 4), dim=2, start=0, end=4, step=1),
    _unary_graph(Op.SLICE, (B, S, 4), dim=2, start=0, end=8, step=2),
    _unary_graph(Op.MUL, (B, S, 8), operand=2.0),
    _unary_graph(Op.MUL, (B, S, 8), operand=True),
    _unary_graph(Op.ADD, (B, S, 8), operand=1e-6),
    _unary_graph(Op.ADD, (B, S, 8), "float32", operand=0.0, in_dtype="int64"),
    _unary_graph(Op.DIV, (B, S, 8), "float32", operand=1, in_dtype="int64"),
], ids=["reshape-split", "reshape-swap", "cast-f16", "cast-int-to-float", "slice-half", "slice-step2",
        "mul2", "mul-true", "add-eps", "add0-promotes-int", "div1-int-true-division"])
def test_canonicalize_keeps_ops_that_change_something(graph):
    assert_left_alone(canonicalize, graph, None)


def test_canonicalize_keeps_zero_minus_x():
    b = GraphBuilder()
    x = b.input("x", (B, S, 8))
    graph = b.build(b.op(Op.SUB, [b.const(0.0), x], (B, S, 8)))
    assert_left_alone(canonicalize, graph, None)


# --- fuse_rms_norm: positive and near-misses ----------------------------------------------------


def rms_norm_graph(*, mean_op=Op.MEAN, dims=(-1,), keepdim=True, power=2, eps_constant=True, weight_len=8,
                   cast_normed: str | None = None, square_other=False, eps_first=False) -> Graph:
    """weight * [cast](x * rsqrt(mean(x^power, dims, keepdim) + eps)) over x [batch, seq, 8]."""
    b = GraphBuilder()
    x = b.input("x", (B, S, 8))
    squared_src = b.input("y", (B, S, 8)) if square_other else x
    p = b.op(Op.POW, [squared_src, b.const(power)], (B, S, 8))
    reduced = [B, S, 8]
    for d in dims:
        reduced[d] = 1
    shape = tuple(reduced) if keepdim else tuple(s for i, s in enumerate((B, S, 8)) if i % 3 not in
                                                 {d % 3 for d in dims})
    m = b.op(mean_op, [p], shape, dims=dims, keepdim=keepdim)
    eps = b.const(1e-6) if eps_constant else b.param("eps", torch.full((1,), 1e-6))
    a = b.op(Op.ADD, [eps, m] if eps_first else [m, eps], shape)
    r = b.op(Op.RSQRT, [a], shape)
    normed = b.op(Op.MUL, [x, r], (B, S, 8))
    if cast_normed:
        normed = b.op(Op.CAST, [normed], (B, S, 8), cast_normed, dtype=cast_normed)
    w = b.param("norm.weight", 1 + 0.1 * torch.randn(weight_len))
    return b.build(b.op(Op.MUL, [w, normed], (B, S, 8)))


def test_fuse_rms_norm_hand_made():
    after = assert_fused(fuse_rms_norm, rms_norm_graph(), Op.RMS_NORM)
    assert after.count(Op.RSQRT) == 0 and after.count(Op.POW) == 0
    assert_fused(fuse_rms_norm, rms_norm_graph(cast_normed="float32"), Op.RMS_NORM)


@pytest.mark.parametrize("kwargs", [
    dict(dims=(0,)), dict(dims=(1,)), dict(dims=(-1, -2)), dict(power=3), dict(power=1), dict(keepdim=False),
    dict(mean_op=Op.SUM), dict(eps_constant=False), dict(weight_len=1), dict(square_other=True),
], ids=["mean-dim0", "mean-dim1", "mean-two-dims", "pow3", "pow1", "no-keepdim", "sum-not-mean",
        "eps-not-constant", "weight-not-hidden-size", "squares-another-tensor"])
def test_fuse_rms_norm_near_misses(kwargs):
    assert_left_alone(fuse_rms_norm, rms_norm_graph(**kwargs), Op.RMS_NORM)


@pytest.mark.parametrize("dtype", ["int64", "float16"])
def test_fuse_rms_norm_keeps_a_cast_that_changes_the_numbers(dtype):
    """The normalized value cast to another dtype than x's before the weight: fusing would drop the rounding."""
    graph = rms_norm_graph(cast_normed=dtype)
    result = fuse_rms_norm(graph, CTX)
    if result.modified:
        assert_same_numbers(graph, result.graph)       # a fusion is only allowed if it keeps the numbers
    else:
        assert result.graph.count(Op.RMS_NORM) == 0


# --- fuse_rotary: positive and near-misses ----------------------------------------------------


def rotary_graph(*, first=(0, 4), second=(4, 8), cat_order="neg-first", negate="second", table_dim=1,
                 step=1, other_source=False) -> Graph:
    """x * unsqueeze(cos) + cat(-x[..., 4:], x[..., :4]) * unsqueeze(sin) over x [batch, 2, seq, 8]."""
    b = GraphBuilder()
    x = b.input("x", (B, 2, S, 8))
    sliced = b.input("y", (B, 2, S, 8)) if other_source else x
    cos, sin = b.input("cos", (1, S, 8)), b.input("sin", (1, S, 8))
    table_shape = (1, 1, S, 8) if table_dim == 1 else (1, S, 1, 8)
    cos_u = b.op(Op.UNSQUEEZE, [cos], table_shape, dim=table_dim)
    sin_u = b.op(Op.UNSQUEEZE, [sin], table_shape, dim=table_dim)
    plain = b.op(Op.MUL, [x, cos_u], (B, 2, S, 8))
    lo = b.op(Op.SLICE, [sliced], (B, 2, S, len(range(*first, step))), dim=3, start=first[0], end=first[1], step=step)
    hi = b.op(Op.SLICE, [sliced], (B, 2, S, len(range(*second, step))), dim=3, start=second[0], end=second[1],
              step=step)
    if negate == "second":
        hi = b.op(Op.NEG, [hi], b.nodes[-1].type.shape)
    else:
        lo = b.op(Op.NEG, [lo], b.nodes[-1].type.shape)
    parts = [hi, lo] if cat_order == "neg-first" else [lo, hi]
    cat = b.op(Op.CAT, parts, (B, 2, S, 8), dim=-1)
    rotated = b.op(Op.MUL, [cat, sin_u], (B, 2, S, 8))
    return b.build(b.op(Op.ADD, [plain, rotated], (B, 2, S, 8)))


def test_fuse_rotary_hand_made():
    after = assert_fused(fuse_rotary, rotary_graph(), Op.ROTARY)
    assert after.count(Op.NEG) == 0 and after.count(Op.CAT) == 0 and after.count(Op.SLICE) == 0


@pytest.mark.parametrize("kwargs", [
    dict(first=(0, 3), second=(3, 8)),
    dict(first=(0, 5), second=(5, 8)),
    dict(cat_order="swapped"),
    dict(negate="first", cat_order="swapped"),
    dict(negate="first"),
    dict(table_dim=2),
    dict(first=(0, 8), second=(1, 8), step=2),
    dict(other_source=True),
], ids=["slices-3-5", "slices-5-3", "cat-swapped", "neg-first-half-swapped", "neg-first-half", "table-on-dim2",
        "strided-slices", "slices-of-another-tensor"])
def test_fuse_rotary_near_misses(kwargs):
    assert_left_alone(fuse_rotary, rotary_graph(**kwargs), Op.ROTARY)


# --- fuse_rotary_into_attention: positive and near-misses -------------------------------------


def rotated_attention_graph(*, k_tables="same", layout="flat", head_dim=4, q_also_output=False) -> Graph:
    """ATTENTION(ROTARY(q), ROTARY(k), v, positions) over 2 heads of 4, cos/sin [1, seq, 4] per position."""
    b = GraphBuilder()
    q, k, v = (b.input(name, (B, S, 8)) for name in "qkv")
    positions = b.input("positions", (B, S), "int64")
    cos, sin = b.input("cos", (1, S, 4)), b.input("sin", (1, S, 4))
    other_cos = b.input("cos2", (1, S, 4)) if k_tables == "other" else cos
    q_rot = b.op(Op.ROTARY, [q, cos, sin], (B, S, 8), head_dim=head_dim, layout=layout)
    k_rot = b.op(Op.ROTARY, [k, other_cos, sin], (B, S, 8), head_dim=head_dim, layout=layout)
    out = b.op(Op.ATTENTION, [q_rot, k_rot, v, positions], (B, S, 8), n_heads=2, n_kv_heads=2, head_dim=4,
               scale=0.5, layer=0)
    return b.build(out, *([q_rot] if q_also_output else []))


def test_fuse_rotary_into_attention_hand_made():
    after = assert_fused(fuse_rotary_into_attention, rotated_attention_graph(), Op.ATTENTION)
    (attention,) = [n for n in after.nodes if n.op is Op.ATTENTION]
    assert after.count(Op.ROTARY) == 0 and attention.inputs == ("q", "k", "v", "positions", "cos", "sin")


@pytest.mark.parametrize("kwargs", [dict(k_tables="other"), dict(head_dim=2), dict(q_also_output=True)],
                         ids=["k-rotated-by-other-tables", "rotary-head-dim-differs", "rotated-q-read-elsewhere"])
def test_fuse_rotary_into_attention_near_misses(kwargs):
    assert_left_alone(fuse_rotary_into_attention, rotated_attention_graph(**kwargs), None)


# --- fuse_attention: positive and near-misses ------------------------------------------------


def _causal_bool(b: GraphBuilder, *, strict=False, window: int | None = None) -> tuple[str, str, str]:
    """-> (allowed [seq, seq] bool, row index [seq, 1], column index [1, seq])."""
    i = b.op(Op.ARANGE, [], (S,), "int64", start=0, end=S, step=1, dtype="int64")
    row = b.op(Op.UNSQUEEZE, [i], (S, 1), "int64", dim=1)
    col = b.op(Op.UNSQUEEZE, [i], (1, S), "int64", dim=0)
    allowed = b.op(Op.LT if strict else Op.LE, [col, row], (S, S), "bool")
    if window is not None:
        distance = b.op(Op.SUB, [row, col], (S, S), "int64")
        near = b.op(Op.LT, [distance, b.const(window)], (S, S), "bool")
        allowed = b.op(Op.AND, [allowed, near], (S, S), "bool")
    return allowed, row, col


def _as_4d(b: GraphBuilder, mask: str, dtype: str) -> str:
    m = b.op(Op.UNSQUEEZE, [mask], (1, S, S), dtype, dim=0)
    return b.op(Op.UNSQUEEZE, [m], (1, 1, S, S), dtype, dim=0)


def attention_graph(mask: str = "causal-bool", *, is_causal=False, q_heads=4, kv_heads=2, gqa="flag") -> Graph:
    """Embedding -> q/k/v linears -> head split -> SDPA(mask) -> head merge, the shape HF exports."""
    torch.manual_seed(0)
    b = GraphBuilder()
    tokens = b.input("tokens", (B, S), "int64")
    x = b.op(Op.EMBEDDING, [b.param("embed", torch.randn(VOCAB, 32)), tokens], (B, S, 32))

    def heads(name: str, n: int) -> str:
        flat = b.op(Op.LINEAR, [x, b.param(f"{name}.weight", torch.randn(n * 8, 32) / 6)], (B, S, n * 8))
        split = b.op(Op.RESHAPE, [flat], (B, S, n, 8), shape=(B, S, n, 8))
        return b.op(Op.TRANSPOSE, [split], (B, n, S, 8), dim0=1, dim1=2)

    q, k, v = heads("q", q_heads), heads("k", kv_heads), heads("v", kv_heads)
    if gqa == "repeat" and q_heads != kv_heads:
        rep = q_heads // kv_heads

        def repeat(t: str) -> str:
            u = b.op(Op.UNSQUEEZE, [t], (B, kv_heads, 1, S, 8), dim=2)
            e = b.op(Op.EXPAND, [u], (B, kv_heads, rep, S, 8), shape=(B, kv_heads, rep, S, 8))
            return b.op(Op.RESHAPE, [e], (B, q_heads, S, 8), shape=(B, q_heads, S, 8))
        k, v = repeat(k), repeat(v)
    inputs = [q, k, v]
    if mask == "causal-bool":
        inputs.append(_as_4d(b, _causal_bool(b)[0], "bool"))
    elif mask == "causal-additive":
        allowed, _, _ = _causal_bool(b)
        zero = b.op(Op.FULL, [], (S, S), shape=(S, S), value=0.0, dtype="float32")
        blocked = b.op(Op.FULL, [], (S, S), shape=(S, S), value=float("-inf"), dtype="float32")
        inputs.append(_as_4d(b, b.op(Op.WHERE, [allowed, zero, blocked], (S, S)), "float32"))
    elif mask == "all-true":
        inputs.append(b.op(Op.FULL, [], (1, 1, S, S), "bool", shape=(1, 1, S, S), value=True, dtype="bool"))
    elif mask == "strict-lower":
        inputs.append(_as_4d(b, _causal_bool(b, strict=True)[0], "bool"))
    elif mask == "sliding-window":
        inputs.append(_as_4d(b, _causal_bool(b, window=2)[0], "bool"))
    elif mask == "padding-from-tokens":
        causal = _as_4d(b, _causal_bool(b)[0], "bool")
        keep = b.op(Op.NE, [tokens, b.const(VOCAB + 1)], (B, S), "bool")     # never equal: all True in value
        keep = b.op(Op.UNSQUEEZE, [keep], (B, 1, S), "bool", dim=1)
        keep = b.op(Op.UNSQUEEZE, [keep], (B, 1, 1, S), "bool", dim=1)
        inputs.append(b.op(Op.AND, [causal, keep], (B, 1, S, S), "bool"))
    elif mask == "alibi-bias":
        allowed, row, col = _causal_bool(b)
        distance = b.op(Op.CAST, [b.op(Op.SUB, [row, col], (S, S), "int64")], (S, S), dtype="float32")
        bias = b.op(Op.MUL, [distance, b.const(-0.5)], (S, S))
        blocked = b.op(Op.FULL, [], (S, S), shape=(S, S), value=float("-inf"), dtype="float32")
        inputs.append(_as_4d(b, b.op(Op.WHERE, [allowed, bias, blocked], (S, S)), "float32"))
    else:
        assert mask == "none"
    sdpa = b.op(Op.SDPA, inputs, (B, q_heads, S, 8), scale=8 ** -0.5, is_causal=is_causal,
                enable_gqa=(gqa == "flag" and q_heads != kv_heads))
    merged = b.op(Op.TRANSPOSE, [sdpa], (B, S, q_heads, 8), dim0=1, dim1=2)
    return b.build(b.op(Op.RESHAPE, [merged], (B, S, q_heads * 8), shape=(B, S, q_heads * 8)))


@pytest.mark.parametrize("mask, is_causal, gqa, verified", [
    ("none", True, "flag", 0),
    ("causal-bool", False, "flag", 1),
    ("causal-additive", False, "flag", 1),
    ("causal-bool", False, "repeat", 1),
])
def test_fuse_attention_hand_made(mask, is_causal, gqa, verified):
    graph = attention_graph(mask, is_causal=is_causal, gqa=gqa)
    after = assert_fused(fuse_attention, graph, Op.ATTENTION)
    assert fuse_attention(graph, CTX).changes["mask_verified_causal"] == verified
    (attention,) = [n for n in after.nodes if n.op is Op.ATTENTION]
    assert (attention.attr("n_heads"), attention.attr("n_kv_heads"), attention.attr("head_dim")) == (4, 2, 8)
    assert after.count(Op.SDPA) == 0 and after.count(Op.TRANSPOSE) == 0 and after.count(Op.ARANGE) == 0


@pytest.mark.parametrize("mask", ["all-true", "strict-lower", "sliding-window", "padding-from-tokens", "none"])
def test_fuse_attention_rejects_masks_that_are_not_causal(mask):
    assert_left_alone(fuse_attention, attention_graph(mask, is_causal=False), Op.ATTENTION)


def test_fuse_attention_rejects_mask_with_a_bias_on_allowed_positions():
    """An additive mask that is -inf above the diagonal but adds a bias below it (ALiBi-style) is not just
    'causal': dropping it changes the numbers."""
    graph = attention_graph("alibi-bias")
    result = fuse_attention(graph, CTX)
    if result.modified:
        assert_same_numbers(graph, result.graph)
    else:
        assert result.graph.count(Op.ATTENTION) == 0


def test_fuse_attention_rejects_causal_flag_with_an_extra_mask():
    assert_left_alone(fuse_attention, attention_graph("all-true", is_causal=True), Op.ATTENTION)


def test_fuse_attention_rejects_heads_that_do_not_divide():
    assert_left_alone(fuse_attention, attention_graph("none", is_causal=True, q_heads=3, kv_heads=2),
                      Op.ATTENTION)


# --- fuse_gated_mlp: positive and near-misses --------------------------------------------------


def gated_graph(act: Op = Op.SILU, *, approximate: str | None = None, act_read_elsewhere=False,
                up_shape=(B, S, 8), act_second=False) -> Graph:
    b = GraphBuilder()
    gate, up = b.input("gate", (B, S, 8)), b.input("up", up_shape)
    a = b.op(act, [gate], (B, S, 8), **({"approximate": approximate} if approximate else {}))
    out = b.op(Op.MUL, [up, a] if act_second else [a, up], (B, S, 8))
    if act_read_elsewhere:
        out = b.op(Op.ADD, [out, a], (B, S, 8))
    return b.build(out)


@pytest.mark.parametrize("act, approximate, kind", [
    (Op.SILU, None, "silu"), (Op.GELU, "none", "gelu"), (Op.GELU, "tanh", "gelu_tanh")])
@pytest.mark.parametrize("act_second", [False, True])
def test_fuse_gated_mlp_hand_made(act, approximate, kind, act_second):
    after = assert_fused(fuse_gated_mlp, gated_graph(act, approximate=approximate, act_second=act_second),
                         Op.GATED_ACT)
    (fused,) = [n for n in after.nodes if n.op is Op.GATED_ACT]
    assert fused.attr("activation") == kind and fused.inputs == ("gate", "up")
    assert after.count(act) == 0


@pytest.mark.parametrize("kwargs", [
    dict(act=Op.RELU), dict(act=Op.TANH), dict(act_read_elsewhere=True), dict(up_shape=(B, S, 1)),
], ids=["relu", "tanh", "activation-read-elsewhere", "up-broadcasts"])
def test_fuse_gated_mlp_near_misses(kwargs):
    assert_left_alone(fuse_gated_mlp, gated_graph(**kwargs), Op.GATED_ACT)


# --- fuse_linear_epilogues: positive and near-misses -------------------------------------------


def mlp_graph(*, shared_x=True, gate_read_elsewhere=False, pruned=False, bias=False, residual_shape=(B, S, 4),
              residual_first=True) -> Graph:
    """x -> gate/up linears -> GATED_ACT -> down linear -> + residual."""
    b = GraphBuilder()
    x, x2 = b.input("x", (B, S, 4)), b.input("x2", (B, S, 4))
    r = b.input("r", residual_shape)
    gate = b.op(Op.LINEAR, [x, b.param("mlp.gate_proj.weight", torch.randn(8, 4))]
                + ([b.param("mlp.gate_proj.bias", torch.randn(8))] if bias else []), (B, S, 8),
                **({"pruned": {"weight": "mlp.gate_proj.weight"}} if pruned else {}))
    up = b.op(Op.LINEAR, [x if shared_x else x2, b.param("mlp.up_proj.weight", torch.randn(8, 4))]
              + ([b.param("mlp.up_proj.bias", torch.randn(8))] if bias else []), (B, S, 8))
    act = b.op(Op.GATED_ACT, [gate, up], (B, S, 8), activation="silu")
    if gate_read_elsewhere:
        act = b.op(Op.MUL, [act, gate], (B, S, 8))
    down = b.op(Op.LINEAR, [act, b.param("mlp.down_proj.weight", torch.randn(4, 8))], (B, S, 4))
    out = b.op(Op.ADD, [r, down] if residual_first else [down, r], (B, S, 4))
    return b.build(out)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual_first", [False, True])
def test_fuse_linear_epilogues_hand_made(bias, residual_first):
    graph = mlp_graph(bias=bias, residual_first=residual_first)
    result = fuse_linear_epilogues(graph, CTX)
    after = result.graph
    assert result.changes == {"gated": 1, "residual": 1, "siblings": 0}
    assert after.count(Op.GATED_ACT) == 0 and after.count(Op.ADD) == 0 and after.count(Op.LINEAR) == 2
    gated, down = (n for n in after.nodes if n.op is Op.LINEAR)
    assert gated.attr("gated") == "silu" and after.node(gated.inputs[1]).attr("key") == "mlp.gate_proj+up_proj.weight"
    assert len(gated.inputs) == 2 + bias and down.attr("residual") and down.inputs[-1] == "r"
    assert_same_numbers(graph, after)


@pytest.mark.parametrize("kwargs, changes", [
    (dict(shared_x=False), {"gated": 0, "residual": 1, "siblings": 0}),
    (dict(gate_read_elsewhere=True), {"gated": 0, "residual": 1, "siblings": 0}),   # no strided readers
    (dict(pruned=True), {"gated": 0, "residual": 1, "siblings": 0}),
    (dict(residual_shape=(B, 1, 4)), {"gated": 1, "residual": 0, "siblings": 0}),
], ids=["different-inputs", "gate-read-elsewhere", "pruned", "residual-broadcasts"])
def test_fuse_linear_epilogues_near_misses(kwargs, changes):
    graph = mlp_graph(**kwargs)
    result = fuse_linear_epilogues(graph, CTX)
    assert result.changes == changes
    assert_same_numbers(graph, result.graph)


def test_stacked_key_names_the_parts():
    assert stacked_key(["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]) == \
        "model.layers.0.mlp.gate_proj+up_proj.weight"
    assert stacked_key(["a.q.weight", "a.k.weight", "a.v.weight"]) == "a.q+k+v.weight"
    assert stacked_key(["gate", "up"]) == "gate+up"


# --- fold_position_tables: positive and values that are not a function of the position ----------


def position_graph(kind: str) -> Graph:
    """x [batch, seq, 8] * f(...) [1|batch, seq|1, 1], where f is built from shapes only."""
    b = GraphBuilder()
    tokens = b.input("tokens", (B, S), "int64")
    x = b.op(Op.EMBEDDING, [b.param("embed", torch.randn(VOCAB, 8)), tokens], (B, S, 8))
    if kind == "batch-index":
        i = b.op(Op.ARANGE, [], (B,), "int64", start=0, end=B, step=1, dtype="int64")
        f = b.op(Op.CAST, [i], (B,), dtype="float32")
        f = b.op(Op.UNSQUEEZE, [b.op(Op.UNSQUEEZE, [f], (B, 1), dim=1)], (B, 1, 1), dim=2)
        return b.build(b.op(Op.MUL, [x, f], (B, S, 8)))
    if kind == "reversed":
        i = b.op(Op.ARANGE, [], (S,), "int64", start=S, end=0, step=-1, dtype="int64")
    else:
        i = b.op(Op.ARANGE, [], (S,), "int64", start=0, end=S, step=1, dtype="int64")
    f = b.op(Op.CAST, [i], (S,), dtype="float32")
    if kind == "centered":                                      # i - mean(0..seq-1): depends on seq
        f = b.op(Op.SUB, [f, b.op(Op.MEAN, [f], (1,), dims=(0,), keepdim=True)], (S,))
    f = b.op(Op.UNSQUEEZE, [f], (1, S), dim=0)
    f = b.op(Op.UNSQUEEZE, [f], (1, S, 1), dim=2)
    if kind == "plus-batch":
        j = b.op(Op.ARANGE, [], (B,), "int64", start=0, end=B, step=1, dtype="int64")
        j = b.op(Op.CAST, [j], (B,), dtype="float32")
        j = b.op(Op.UNSQUEEZE, [b.op(Op.UNSQUEEZE, [j], (B, 1), dim=1)], (B, 1, 1), dim=2)
        f = b.op(Op.ADD, [f, j], (B, S, 1))
    return b.build(b.op(Op.MUL, [x, f], (B, S, 8)))


def test_fold_position_tables_hand_made():
    graph = position_graph("position")
    result = fold_position_tables(graph, CTX)
    assert result.changes == {"tables": 1}
    after = result.graph
    assert after.count(Op.POSITION_LOOKUP) == 1 and after.count(Op.ARANGE) == 0
    (table,) = [after.param_tensor(n) for n in after.nodes if n.op is Op.PARAM and n.attr("key").startswith(
        TABLE_PREFIX)]
    assert torch.equal(table, torch.arange(MAX_SEQ_LEN, dtype=torch.float32).view(MAX_SEQ_LEN, 1))
    assert_same_numbers(graph, after)


@pytest.mark.parametrize("kind, message", [
    ("centered", "depends on more than the token position"),
    ("reversed", "depends on more than the token position"),
    ("plus-batch", "depends on more than the token position"),
    ("batch-index", "cannot tabulate by position"),
])
def test_fold_position_tables_rejects_values_not_of_the_position_alone(kind, message):
    with pytest.raises(CompileError, match=message):
        fold_position_tables(position_graph(kind), CTX)


def test_fold_position_tables_without_position_values_changes_nothing():
    b = GraphBuilder()
    tokens = b.input("tokens", (B, S), "int64")
    graph = b.build(b.op(Op.EMBEDDING, [b.param("embed", torch.randn(VOCAB, 8)), tokens], (B, S, 8)))
    result = fold_position_tables(graph, CTX)
    assert not result.modified and result.graph is graph


# --- insert_kv_cache ----------------------------------------------------------------------------


def _attention_nodes(kv_heads: tuple[int, ...]) -> Graph:
    b = GraphBuilder()
    tokens = b.input("tokens", (B, S), "int64")
    x = b.op(Op.EMBEDDING, [b.param("embed", torch.randn(VOCAB, 32)), tokens], (B, S, 32))
    for i, kv in enumerate(kv_heads):
        k = b.op(Op.LINEAR, [x, b.param(f"k{i}", torch.randn(kv * 8, 32))], (B, S, kv * 8))
        v = b.op(Op.LINEAR, [x, b.param(f"v{i}", torch.randn(kv * 8, 32))], (B, S, kv * 8))
        x = b.op(Op.ATTENTION, [x, k, v], (B, S, 32), n_heads=4, n_kv_heads=kv, head_dim=8, scale=0.3)
    return b.build(x)


def test_insert_kv_cache_hand_made():
    result = insert_kv_cache(_attention_nodes((2, 2)), CTX)
    assert result.changes == {"kv_cached_layers": 2}
    nodes = [n for n in result.graph.nodes if n.op is Op.ATTENTION]
    assert [n.attr("layer") for n in nodes] == [0, 1] and all(n.inputs[3] == "positions" for n in nodes)
    assert result.graph.node("positions").type == TensorType((B, S), "int64")
    assert (result.graph.config["kv_heads"], result.graph.config["head_dim"]) == (2, 8)


def test_insert_kv_cache_needs_attention():
    with pytest.raises(CompileError, match="no causal attention"):
        insert_kv_cache(_attention_nodes(()), CTX)


def test_insert_kv_cache_needs_one_cache_shape():
    with pytest.raises(CompileError, match="differ in KV heads"):
        insert_kv_cache(_attention_nodes((2, 4)), CTX)


# --- the pass manager ---------------------------------------------------------------------------


def _boom(graph: Graph, ctx: PassContext) -> PassResult:
    raise ZeroDivisionError("kaboom")


def _compile_error(graph: Graph, ctx: PassContext) -> PassResult:
    raise CompileError("this graph cannot be fused")


def _breaks_the_graph(graph: Graph, ctx: PassContext) -> PassResult:
    bad = Node("dangling", Op.NEG, ("nowhere",), graph.nodes[-1].type)
    return PassResult(graph.with_(nodes=graph.nodes + (bad,), outputs=("dangling",)), {"broken": 1})


@pytest.mark.parametrize("failing, expected", [
    (_boom, "pass explode (after canonicalize, fuse_rms_norm) failed: ZeroDivisionError: kaboom"),
    (_compile_error, "pass explode (after canonicalize, fuse_rms_norm): this graph cannot be fused"),
    (_breaks_the_graph, "pass explode (after canonicalize, fuse_rms_norm) failed: ValueError: IR verify"),
])
def test_pass_manager_names_the_failing_pass_and_those_before(failing, expected):
    manager = PassManager([("canonicalize", canonicalize), ("fuse_rms_norm", fuse_rms_norm), ("explode", failing),
                           ("fuse_rotary", fuse_rotary)])
    with pytest.raises(CompileError) as info:
        manager.run(rms_norm_graph(), CTX)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)
    assert [name for name, _ in manager.history] == ["canonicalize", "fuse_rms_norm"]


def test_pass_manager_first_pass_failing_says_none_before():
    with pytest.raises(CompileError, match=r"^pass explode \(after none\)"):
        PassManager([("explode", _boom)]).run(rms_norm_graph(), CTX)


def test_pass_manager_names_only_this_runs_passes():
    """A manager used for a second graph must not blame passes of the first run."""
    def fails_on_second_graph(graph: Graph, ctx: PassContext) -> PassResult:
        if graph.has("y"):
            raise ValueError("second graph")
        return PassResult(graph)

    manager = PassManager([("check", fails_on_second_graph)])
    manager.run(rms_norm_graph(), CTX)
    with pytest.raises(CompileError) as info:
        manager.run(rms_norm_graph(square_other=True), CTX)
    assert str(info.value).startswith("pass check (after none)"), str(info.value)


def test_dump_ir_writes_one_file_per_pass(tmp_path):
    model, _ = tiny_llama()
    graph = trace_tiny(model)
    PassManager(list(PIPELINE), dump_dir=tmp_path / "ir").run(graph, CTX)
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == ["00-imported.ir"] + [f"{i:02d}-{name}.ir" for i, (name, _) in enumerate(PIPELINE, start=1)]
    text = {name: (tmp_path / "ir" / name).read_text() for name in files}
    assert text["00-imported.ir"] == format_graph(graph)
    assert "sdpa(" in text["00-imported.ir"] and "sdpa(" not in text["04-fuse_attention.ir"]
    assert "rms_norm(" in text["02-fuse_rms_norm.ir"] and "rms_norm(" not in text["01-canonicalize.ir"]
    assert "position_lookup(" in text["06-fold_position_tables.ir"]
    assert all(t.rstrip().splitlines()[-1].startswith("return %") for t in text.values())


def test_passes_are_pure():
    """A pass returns a new graph and leaves its input as it was."""
    graph = rms_norm_graph()
    nodes = graph.nodes
    for _, fn in PIPELINE[:5]:
        fn(graph, CTX)
    assert graph.nodes is nodes and graph.count(Op.RMS_NORM) == 0

