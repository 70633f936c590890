"""prune_weights (magnitude, Wanda), the sparse dataflow decision and encode_sparse_weights, on hand-made
weights and the tiny Llama; the sparse bundles' outputs against dense bundles of the same pruned weights
are in test_sparse_bundles.py."""

from __future__ import annotations

import pytest
import torch

from fdpp.compiler.calibration import load_calibration
from fdpp.compiler.errors import CompileError
from fdpp.compiler.interpreter import evaluate
from fdpp.compiler.ir import DictWeightStore, Op
from fdpp.compiler.targets import get_target
from fdpp.passes.pass_manager import PassContext, PassManager
from fdpp.passes.pipeline import PIPELINE
from fdpp.passes import prune_weights as prune_module
from fdpp.passes.prune_weights import PrunedWeightStore, row_thresholds, scores
from fdpp.passes.select_kernels import dense_linear_cost_us
from fdpp.passes.sparse_choice import choose_sparse_linear

from helpers import compile_options, random_tokens, tiny_llama, trace_tiny

UP_TO_PRUNING = PIPELINE[:[name for name, _ in PIPELINE].index("prune_weights") + 1]


def _pruned_graph(progress=None, **options):
    model, _ = tiny_llama()
    calibration = load_calibration(None, None, 300, 256, 64)
    ctx = PassContext(compile_options(**options), get_target("h100"), calibration, progress)
    return PassManager(list(UP_TO_PRUNING)).run(trace_tiny(model), ctx), model


def _linear_weights(graph):
    return {graph.node(n.inputs[1]).attr("key"): n for n in graph.nodes if n.op is Op.LINEAR}


def test_magnitude_keeps_the_largest_of_each_row():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0], [0.5, 0.25, -0.75, 1.0]])
    store = PrunedWeightStore(DictWeightStore({"w": w}), {"w": (None, row_thresholds(w, None, 0.5))})
    assert store.get("w").tolist() == [[0.0, -4.0, 3.0, 0.0], [0.0, 0.0, -0.75, 1.0]]


def test_wanda_weighs_by_input_channel_norms():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0]])
    norms = torch.tensor([10.0, 0.1, 1.0, 1.0])            # channel 0 matters, channel 1 hardly
    store = PrunedWeightStore(DictWeightStore({"w": w}), {"w": (norms, row_thresholds(w, norms, 0.5))})
    assert store.get("w").tolist() == [[1.0, 0.0, 3.0, 0.0]]
    assert torch.equal(scores(w, norms), w.abs() * norms)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_pass_prunes_every_row_of_every_linear_but_lm_head(method):
    graph, model = _pruned_graph(sparsity=0.5, prune=method)
    linears = _linear_weights(graph)
    assert "lm_head.weight" in linears and "pruned" not in linears["lm_head.weight"].attrs
    pruned = {k: n for k, n in linears.items() if "pruned" in n.attrs}
    assert len(pruned) == 2 * 7                              # q k v o gate up down, two layers
    for key, node in pruned.items():
        w = graph.weights.get(key)
        zeros_per_row = (w == 0).sum(1)
        assert torch.all(zeros_per_row >= w.shape[1] // 2), key
        assert node.attr("pruned")["method"] == method
        assert node.attr("pruned")["density"] == pytest.approx(float((w != 0).float().mean()))
        kept = w != 0
        assert torch.equal(w[kept], model.state_dict()[key][kept])   # survivors are untouched


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_row_blocks_prune_as_the_whole_matrix_does(monkeypatch, method):
    """Scores, thresholds and masks are made a few rows at a time; the result is the per-row rule on the whole
    matrix: zero the round(s * K) lowest scores of each row (and ties at the threshold)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(37, 16, generator=g)
    norms = torch.rand(16, generator=g) + 0.1 if method == "wanda" else None
    monkeypatch.setattr(prune_module, "ROW_BLOCK_ELEMENTS", 40)           # 2 rows a block, the last alone
    assert len(prune_module._row_blocks(w)) == 19
    threshold = row_thresholds(w, norms, 0.7)
    score = w.abs() * norms if norms is not None else w.abs()
    expected_threshold = score.kthvalue(round(0.7 * 16), dim=1).values
    assert torch.equal(threshold, expected_threshold)
    pruned = PrunedWeightStore(DictWeightStore({"w": w}), {"w": (norms, threshold)}).get("w")
    assert torch.equal(pruned, w.masked_fill(score <= expected_threshold[:, None], 0))


def test_pass_says_its_progress():
    lines = []
    _pruned_graph(progress=lines.append, sparsity=0.5, prune="magnitude")
    assert lines[-1] == "  pruned weights 14/14"


def test_wanda_and_magnitude_choose_differently_and_wanda_uses_the_activations():
    magnitude, _ = _pruned_graph(sparsity=0.5, prune="magnitude")
    wanda, _ = _pruned_graph(sparsity=0.5, prune="wanda")
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(magnitude.weights.get(key) != 0, wanda.weights.get(key) != 0)


def test_include_and_exclude_patterns():
    graph, _ = _pruned_graph(sparsity=0.5, prune="magnitude", prune_include=("*mlp*",),
                             prune_exclude=("*down_proj*", "*lm_head*"))
    pruned = sorted(k for k, n in _linear_weights(graph).items() if "pruned" in n.attrs)
    assert pruned == sorted(f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up"))
    with pytest.raises(CompileError, match="no linear weight matches"):
        _pruned_graph(sparsity=0.5, prune="magnitude", prune_include=("nothing*",))


def test_pruning_reads_one_weight_at_a_time():
    """The pruned store holds thresholds, not tensors: each read prunes the base store's tensor again."""
    reads = []

    class Counting(DictWeightStore):
        def get(self, name):
            reads.append(name)
            return super().get(name)

    w = torch.randn(8, 16)
    store = PrunedWeightStore(Counting({"w": w}), {"w": (None, row_thresholds(w, None, 0.7))})
    first, second = store.get("w"), store.get("w")
    assert reads == ["w", "w"] and torch.equal(first, second)
    assert int((first == 0).sum()) == 8 * int(0.7 * 16)


def test_pruned_graph_still_runs_and_differs_from_dense():
    graph, model = _pruned_graph(sparsity=0.5, prune="wanda")
    tokens = random_tokens(1, 12, seed=1)
    positions = torch.arange(12)[None, :]
    logits = evaluate(graph, {"tokens": tokens, "positions": positions}, {"batch": 1, "seq": 12})
    (out,) = logits.values()
    with torch.no_grad():
        dense = model(tokens).logits
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-3)


def test_dataflow_keeps_a_layer_dense_where_sparse_loses():
    target = get_target("h200")
    low_sparsity = choose_sparse_linear(4096, 4096, 0.95, "float16", "auto", [1, 2, 4, 8], (1, 2, 4, 8), target,
                                        lambda m: 9.0)
    assert low_sparsity["format"] == "dense" and low_sparsity["choices"] == ()
    high_sparsity = choose_sparse_linear(4096, 4096, 0.2, "float16", "auto", [1, 2, 4, 8], (1, 2, 4, 8), target,
                                         lambda m: 30.0)
    assert high_sparsity["format"] in ("bitmap", "tiled_csl", "chunked_csr")
    assert high_sparsity["expected_speedup"] > 1
    forced = choose_sparse_linear(4096, 4096, 0.95, "float16", "tiled_csl", [1, 16], (1,), target, lambda m: 9.0)
    assert forced["format"] == "tiled_csl" and {c.kernel for c in forced["choices"]} <= {"tiled_csl_gemv",
                                                                                          "tiled_csl_gemm"}
    float32 = choose_sparse_linear(4096, 4096, 0.2, "float32", "auto", [1], (1,), target, lambda m: 60.0)
    assert float32["format"] in ("bitmap", "chunked_csr", "dense")    # Tiled-CSL holds 16-bit values only


def test_chunked_csr_prefill_buckets_take_the_densified_gemm():
    """Forced chunked CSR for a 70% o_proj: the CUDA-core kernels for a few rows (x from L1, or from shared memory
    at 3-8 rows), and from some bucket on (their cost grows with the rows, the dense copy's does not) the weight
    written out dense and multiplied on tensor cores."""
    buckets = [1, 2, 4, 8, 16, 32, 64, 128, 512]
    forced = choose_sparse_linear(4096, 4096, 0.3, "float16", "chunked_csr", buckets, (1,), get_target("h100"),
                                  lambda m: 10.0)
    kernels = [c.kernel for c in forced["choices"]]
    switch = kernels.index("chunked_csr_gemm")
    assert 0 < switch and set(kernels[:switch]) <= {"chunked_csr_gemv", "chunked_csr_xshared"}
    assert kernels[0] == "chunked_csr_gemv"
    assert set(kernels[switch:]) == {"chunked_csr_gemm"}
    assert forced["choices"][-1].max_rows == 512 and len(kernels) == switch + 1   # gemm buckets share one choice


def test_dataflow_takes_chunked_csr_for_batch_one_decode_only():
    """On the H200 cost model a 70% Llama-2-7B gate/up weight is stored as chunked CSR when the bundle decodes one
    or two sequences, and stays dense when it decodes up to 16 (the format wins at M <= 4, about ties at 8 and
    loses at 16, so the summed cost is higher); each row bucket gets its own chunked-CSR choice, since its launch
    depends on the rows."""
    target = get_target("h200")

    def dense_cost(m: int) -> float:
        return dense_linear_cost_us(m, 11008, 4096, target, None)

    alone = choose_sparse_linear(11008, 4096, 0.3, "float16", "auto", [1, 2, 16], (1,), target, dense_cost)
    assert alone["format"] == "chunked_csr" and alone["expected_speedup"] > 1.3
    assert [(c.max_rows, c.kernel) for c in alone["choices"]] == [(1, "chunked_csr_gemv"), (2, "chunked_csr_gemv"),
                                                                   (16, "chunked_csr_gemv")]
    two = choose_sparse_linear(11008, 4096, 0.3, "float16", "auto", [1, 2], (1, 2), target, dense_cost)
    assert two["format"] == "chunked_csr" and two["costs"]["chunked_csr"] < 0.9 * two["costs"]["dense"]
    batched = choose_sparse_linear(11008, 4096, 0.3, "float16", "auto", [1, 2, 4, 8, 16], (1, 2, 4, 8, 16), target,
                                   dense_cost)
    assert batched["format"] == "dense"


def test_chunked_csr_cost_model_matches_the_recorded_h100_table():
    """The H100 cost of the CUDA-core chunked-CSR kernel (its own bandwidth fraction, not the H200's) is within 12%
    of every time in the recorded H100 table at M = 1 and 2 and 50-70% sparsity (docs/perf/
    2026-12-06-ccsr-producer-interleave.md: per-call event timings, as the model's launch term assumes), where the
    dense-or-sparse decision is close; the H200's fraction there was 11-30% over."""
    import json
    from pathlib import Path
    from fdpp.passes.sparse_choice import chunked_csr_cost_us

    table = Path(__file__).resolve().parents[1] / "docs/perf/2026-12-06-ccsr-producer-interleave/table/ccsr.jsonl"
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    close = [r for r in rows if r["m"] <= 2 and r["sparsity"] <= 0.7]
    assert len(close) == 16
    for row in close:
        model = chunked_csr_cost_us(row["m"], row["n"], row["k"], 1 - row["sparsity"], get_target("h100"))
        assert abs(model / row["us"] - 1) < 0.12, (row["shape"], row["m"], row["sparsity"], model, row["us"])
