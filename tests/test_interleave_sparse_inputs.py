"""passes/interleave_sparse_inputs.py on small hand-built graphs: for every phase and row count (as the runtime
picks choices, runtime/schema.Step.kernel_for), the producer writes x interleaved exactly where the chunked-CSR
linear reads it so, by the rows that linear gathers together, and every choice still runs the config it had."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from fdpp.codegen.kernels.chunked_csr_linear import default_chunked_csr_config
from fdpp.codegen.launch_specs import INTERLEAVED_OUTPUT_KERNELS
from fdpp.compiler.ir import DictWeightStore, Graph, Node, Op, TensorType
from fdpp.compiler.options import CompileOptions
from fdpp.compiler.targets import get_target
from fdpp.passes.interleave_sparse_inputs import interleave_sparse_inputs
from fdpp.passes.pass_manager import PassContext
from fdpp.runtime.schema import KernelChoice, OpKind, Step

N, K, CHUNKS = 64, 96, 3            # the linear's weight [N, K], chunks per row of its chunked-CSR encoding
LADDER = (1, 2, 4, 8, 16, 64)       # the linear's row buckets (select_kernels' row_buckets up to 64)


def _choices(*entries) -> tuple[dict, ...]:
    """KernelChoice dicts (as select_kernels stores them) from (max_rows, kernel, config, phase) tuples."""
    return tuple(asdict(KernelChoice(rows, kernel, config, phase=phase)) for rows, kernel, config, phase in entries)


def _ccsr(config: dict | None = None) -> tuple[dict, ...]:
    return _choices(*((rows, "chunked_csr_gemv", dict(config or {}), "any") for rows in LADDER))


def _graph(producer_op: Op, producer_choices, linear_choices, extra_reader: bool = False,
           producer_sparse: bool = False) -> Graph:
    """x -> producer -> chunked-CSR linear (-> its own reader), the producer's choices and the linear's given."""
    t = TensorType(("batch", "seq", K), "float16")
    sparse = {"format": "chunked_csr", "shape": [N, K], "tile": [CHUNKS, 32]}
    nodes = [Node("x", Op.INPUT, (), t), Node("w", Op.PARAM, (), TensorType((N, K), "float16"), {"key": "w"}),
             Node("p", producer_op, ("x",), t, {"kernels": producer_choices,
                                                **({"sparse": sparse} if producer_sparse else {})}),
             Node("y", Op.LINEAR, ("p", "w"), TensorType(("batch", "seq", N), "float16"),
                  {"kernels": linear_choices, "sparse": sparse})]
    if extra_reader:
        nodes.append(Node("z", Op.ADD, ("p", "x"), t))
    return Graph(tuple(nodes), ("y", "z") if extra_reader else ("y",), DictWeightStore({}))


def _run(graph: Graph, max_batch: int = 8) -> Graph:
    ctx = PassContext(CompileOptions(max_batch=max_batch, softmax="synchronized"), get_target("h100"))
    return interleave_sparse_inputs(graph, ctx).graph


def _pick(node: Node, rows: int, phase: str) -> KernelChoice:
    step = Step(OpKind.LINEAR, (), node.name, {}, tuple(KernelChoice(**c) for c in node.attrs["kernels"]))
    return step.kernel_for(rows, phase)


def _resolved(choice) -> dict:
    return {**default_chunked_csr_config(N, CHUNKS, choice.max_rows), **choice.config}


def _config(choice) -> dict:
    """What a choice runs: a chunked-CSR choice's config resolved at its bucket, without the pass's layout keys."""
    config = _resolved(choice) if choice.kernel == "chunked_csr_gemv" else choice.config
    return {k: v for k, v in config.items() if k not in ("out_rows_together", "x_interleaved")}


def _could_interleave(made, read) -> bool:
    """Whether the producer's choice can store what the linear's choice gathers: more than one row, by a kernel
    with an interleaved store (a chunked-CSR one only without split-K)."""
    gathers = read.kernel == "chunked_csr_gemv" and _resolved(read)["rows"] > 1
    return gathers and made.kernel in INTERLEAVED_OUTPUT_KERNELS and \
        (made.kernel != "chunked_csr_gemv" or _resolved(made)["split_k"] == 1)


def _check_agreement(before: Graph, after: Graph, max_rows: int, max_batch: int, producer: str = "p",
                     linear: str = "y") -> int:
    """Every phase and row count: the linear reads x interleaved iff the producer writes it so, with the rows the
    linear gathers; each choice's kernel and resolved config are unchanged. Returns the interleaved row counts."""
    interleaved = 0
    for phase, top in (("decode", max_batch), ("prefill", max_rows)):
        for rows in range(1, top + 1):
            made, read = _pick(after.node(producer), rows, phase), _pick(after.node(linear), rows, phase)
            was_made, was_read = _pick(before.node(producer), rows, phase), _pick(before.node(linear), rows, phase)
            for now, was in ((made, was_made), (read, was_read)):
                assert (now.kernel, _config(now)) == (was.kernel, _config(was)), (phase, rows)
            together = made.config.get("out_rows_together", 1)
            assert bool(read.config.get("x_interleaved")) == (together > 1), (phase, rows)
            assert (together > 1) == _could_interleave(was_made, was_read), (phase, rows)   # none missed
            if together > 1:
                assert together == _resolved(read)["rows"]
                interleaved += 1
    return interleaved


def test_a_norm_writes_x_interleaved_for_every_bucket_that_gathers_rows():
    before = _graph(Op.RMS_NORM, _choices((64, "rms_norm", {}, "any")), _ccsr())
    after = _run(before)
    assert _check_agreement(before, after, 64, 8) == (8 - 1) + (64 - 1)     # every row count but 1, both phases
    # both lists stay phase "any": the norm's bucket is cut at the linear's
    assert [(c["max_rows"], c["phase"], c["config"]) for c in after.node("p").attrs["kernels"]] == [
        (1, "any", {}), (2, "any", {"out_rows_together": 2}), (4, "any", {"out_rows_together": 4}),
        (64, "any", {"out_rows_together": 8})]
    assert [c["config"] for c in after.node("y").attrs["kernels"]] == [{}] + [{"x_interleaved": True}] * 5


def test_decode_attention_writes_interleaved_and_prefill_keeps_the_interleave_launch():
    attention = _choices((1, "decode_attention_unified", {"splits": 16}, "decode"),
                         (2, "decode_attention_unified", {"splits": 16}, "decode"),
                         (6, "decode_attention_unified", {"splits": 8}, "decode"),
                         (64, "prefill_attention_unified", {}, "prefill"))
    before = _graph(Op.ATTENTION, attention, _ccsr())
    after = _run(before, max_batch=6)
    assert _check_agreement(before, after, 64, 6) == 5                      # decode rows 2..6 only
    linear = after.node("y").attrs["kernels"]
    assert {c["phase"] for c in linear} == {"decode", "prefill"}
    assert not any(c["config"].get("x_interleaved") for c in linear if c["phase"] == "prefill")
    # the linear's "<= 8" bucket, cut at the decode bound 6, keeps the config of its old bucket
    six = next(c for c in linear if c["phase"] == "decode" and c["max_rows"] == 6)
    assert six["config"] == {**default_chunked_csr_config(N, CHUNKS, 8), "x_interleaved": True}


def test_a_gated_chunked_csr_producer_writes_interleaved_unless_it_splits_k():
    before = _graph(Op.LINEAR, _ccsr(), _ccsr(), producer_sparse=True)
    after = _run(before)
    assert _check_agreement(before, after, 64, 8) == (8 - 1) + (64 - 1)
    split = _graph(Op.LINEAR, _ccsr({"split_k": 2}), _ccsr(), producer_sparse=True)
    assert _run(split) is split or _run(split).node("y").attrs["kernels"] == split.node("y").attrs["kernels"]


def test_a_chain_is_paired_link_by_link():
    """norm -> gated chunked-CSR gate/up (split-K at the 4-row bucket, the dense-copy GEMM from 17 rows) ->
    chunked-CSR down: the middle list, cut for its own x, is cut again for its output, and both links agree."""
    t = TensorType(("batch", "seq", K), "float16")
    sparse = {"format": "chunked_csr", "shape": [N, K], "tile": [CHUNKS, 32]}
    middle = _choices(*((rows, "chunked_csr_gemv", {"split_k": 2} if rows == 4 else {}, "any") for rows in LADDER[:5]),
                      (64, "chunked_csr_gemm", {}, "any"))
    nodes = (Node("x", Op.INPUT, (), t), Node("w", Op.PARAM, (), TensorType((N, K), "float16"), {"key": "w"}),
             Node("p", Op.RMS_NORM, ("x",), t, {"kernels": _choices((64, "rms_norm", {}, "any"))}),
             Node("g", Op.LINEAR, ("p", "w"), t, {"kernels": middle, "sparse": sparse}),
             Node("y", Op.LINEAR, ("g", "w"), t, {"kernels": _ccsr(), "sparse": sparse}))
    before = Graph(nodes, ("y",), DictWeightStore({}))
    after = _run(before, max_batch=6)
    assert _check_agreement(before, after, 64, 6, "p", "g") > 0
    assert _check_agreement(before, after, 64, 6, "g", "y") > 0
    # rows 3-4 (the split-K bucket) and from 17 rows (the dense-copy GEMM) the gate/up writes row-major
    assert not _pick(after.node("g"), 4, "decode").config.get("out_rows_together")
    assert not _pick(after.node("g"), 17, "prefill").config.get("out_rows_together")
    assert _pick(after.node("g"), 5, "decode").config.get("out_rows_together") == 8


@pytest.mark.parametrize("case", ["two readers", "dense linear", "no gathered rows"])
def test_pairs_it_leaves_alone(case):
    producer = _choices((64, "rms_norm", {}, "any"))
    linear = _ccsr({"rows": 1}) if case == "no gathered rows" else \
        _choices((64, "gemv", {}, "any")) if case == "dense linear" else _ccsr()
    before = _graph(Op.RMS_NORM, producer, linear, extra_reader=case == "two readers")
    after = _run(before)
    assert after.node("p").attrs["kernels"] == before.node("p").attrs["kernels"]
    assert after.node("y").attrs["kernels"] == before.node("y").attrs["kernels"]
