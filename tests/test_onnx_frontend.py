"""The ONNX frontend against Hugging Face and against the torch frontend.

Tiny Llama (GQA), OPT and Qwen2 models are exported with torch.onnx.export(dynamo=True) and imported;
Llama also without the exporter's graph optimizer (weight transposes and scale casts stay in the graph)
and at opset 23 (the optimizer fuses RMSNormalization, RotaryEmbedding and Attention). Then:
the IR's logits match Hugging Face's, the weights come back under their state-dict names, and after the
pass pipeline the plan is step for step the torch frontend's (same ops, attrs, kernels, dataflow and
weights). Hand-made ONNX graphs check the SDPA raise (and that it refuses a softmax over the wrong axis)
and the error for an op the importer does not know.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # torch.onnx.export(dynamo=True) needs it

from helpers import compile_options, random_tokens, tiny_llama, tiny_opt, tiny_qwen2, trace_tiny
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from fdpp.codegen.emit import emit_plan
from fdpp.compiler.errors import UnsupportedOpError
from fdpp.compiler.frontend_onnx import import_onnx, tokenizer_json_beside
from fdpp.compiler.interpreter import evaluate
from fdpp.compiler.ir import Graph, Op
from fdpp.compiler.targets import get_target
from fdpp.passes.pass_manager import PassContext, PassManager
from fdpp.passes.pipeline import PIPELINE
from fdpp.runtime.schema import WEIGHT_PREFIX, OpKind, Plan

TINY_MODELS = {"llama": tiny_llama, "opt": tiny_opt, "qwen2": tiny_qwen2}
EXPORTS = {                                         # test id -> (model, torch.onnx.export options)
    "llama": ("llama", {}), "opt": ("opt", {}), "qwen2": ("qwen2", {}),
    "llama-unoptimized": ("llama", {"optimize": False}), "llama-opset23": ("llama", {"opset_version": 23}),
}


class LogitsOnly(torch.nn.Module):
    """input_ids [B, S] -> logits [B, S, V]; holds the model as `lm`, so initializers start with "lm."."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def export_onnx(module: torch.nn.Module, path, **options) -> None:
    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=2, max=128)
    torch.onnx.export(module, (torch.ones(2, 8, dtype=torch.long),), str(path), dynamo=True,
                      input_names=["input_ids"], output_names=["logits"],
                      dynamic_shapes={"input_ids": {0: batch, 1: seq}}, verbose=False, **options)


@pytest.fixture(scope="module", params=list(EXPORTS))
def exported(request, tmp_path_factory) -> tuple[torch.nn.Module, Graph]:
    arch, options = EXPORTS[request.param]
    model, _ = TINY_MODELS[arch]()
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    export_onnx(LogitsOnly(model).eval(), path, **options)
    return model, import_onnx(path, compile_options())


def optimized(graph: Graph) -> tuple[Graph, Plan]:
    """The graph after the pass pipeline (its weights include the position tables) and its plan."""
    ctx = PassContext(compile_options("float32"), get_target("a100"))
    graph = PassManager(list(PIPELINE)).run(graph, ctx)
    return graph, emit_plan(graph)


def dataflow(plan: Plan, graph: Graph) -> list[tuple]:
    """Each step as (op, attrs, kernels, inputs), inputs named by the step that made them or as weights.
    Position lookups read only `positions`, so where they sit is free: they come first here."""
    made_by = {}
    steps = []
    ordered = sorted(plan.steps, key=lambda step: step.op is not OpKind.POSITION_LOOKUP)
    for index, step in enumerate(ordered):
        inputs = []
        for name in step.inputs:
            if name.startswith(WEIGHT_PREFIX):
                inputs.append(graph.weights.get(name[len(WEIGHT_PREFIX):]))
            else:
                inputs.append(made_by.get(name, name))
        steps.append((step.op, step.attrs, step.kernels, inputs))
        made_by[step.output] = index
    return steps


def test_logits_match_hugging_face(exported):
    model, graph = exported
    tokens = random_tokens(2, 7, seed=1)
    with torch.no_grad():
        expected = model(input_ids=tokens, use_cache=False).logits
    got = evaluate(graph, {"tokens": tokens}, {"batch": 2, "seq": 7})[graph.outputs[0]]
    assert got.shape == expected.shape
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_weights_keep_their_state_dict_names(exported):
    model, graph = exported
    hf = {**dict(model.named_buffers()), **model.state_dict()}
    params = [n for n in graph.nodes if n.op is Op.PARAM]
    assert len(params) > 10
    for node in params:
        key = node.attr("key")
        assert key in hf, f"weight '{key}' is not a state-dict name"
        assert torch.equal(graph.weights.get(key), hf[key]), key


def test_plan_matches_torch_frontend(exported):
    model, onnx_graph = exported
    (onnx_graph, onnx_plan), (torch_graph, torch_plan) = optimized(onnx_graph), optimized(trace_tiny(model))
    onnx_steps, torch_steps = dataflow(onnx_plan, onnx_graph), dataflow(torch_plan, torch_graph)
    assert [s[0] for s in onnx_steps] == [s[0] for s in torch_steps]
    attention = [s.attrs for s in onnx_plan.steps if s.op is OpKind.ATTENTION]
    assert len(attention) == 2 and attention == [s.attrs for s in torch_plan.steps if s.op is OpKind.ATTENTION]
    assert (onnx_plan.kv_layers, onnx_plan.kv_heads, onnx_plan.head_dim) == \
           (torch_plan.kv_layers, torch_plan.kv_heads, torch_plan.head_dim)
    for index, (got, want) in enumerate(zip(onnx_steps, torch_steps)):
        assert got[:3] == want[:3], f"step {index} ({got[0].value})"
        assert len(got[3]) == len(want[3])
        for a, b in zip(got[3], want[3]):
            if isinstance(b, torch.Tensor):   # a weight, or a position table the passes computed
                assert isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
            else:
                assert a == b, f"step {index} ({got[0].value}) reads {a}, torch frontend's reads {b}"


# --- hand-made graphs -------------------------------------------------------------------------------


def _self_attention_model(softmax_axis: int) -> onnx.ModelProto:
    """tokens -> x = embedding [B, 1, S, 8] -> Softmax(x @ x^T, axis) @ x: SDPA's decomposition when the
    softmax runs over the keys (axis -1), plain math otherwise."""
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="embed"),
        helper.make_node("Unsqueeze", ["emb", "axes"], ["x"], name="heads"),
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[0, 1, 3, 2], name="keys_t"),
        helper.make_node("MatMul", ["x", "x_t"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=softmax_axis, name="softmax"),
        helper.make_node("MatMul", ["probs", "x"], ["out"], name="mix"),
    ]
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 1, "s", 8])
    graph = helper.make_graph(nodes, "attention", [ids], [out], [table, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("softmax_axis,raised", [(-1, True), (2, False)])
def test_sdpa_is_raised_only_over_the_keys(softmax_axis, raised, tmp_path):
    model = _self_attention_model(softmax_axis)
    onnx.save(model, tmp_path / "attention.onnx")
    graph = import_onnx(tmp_path / "attention.onnx")
    assert graph.count(Op.SDPA) == int(raised)
    if raised:
        assert graph.node(graph.outputs[0]).attr("scale") == 1.0
    tokens = random_tokens(2, 5, vocab=50, seed=2)
    (expected,) = ReferenceEvaluator(model).run(None, {"input_ids": tokens.numpy()})
    got = evaluate(graph, {"tokens": tokens}, {"batch": 2, "seq": 5})[graph.outputs[0]]
    assert torch.allclose(got, torch.from_numpy(expected), atol=1e-5)


class _SignOfEmbedding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(50, 8)

    def forward(self, input_ids):
        return torch.sign(self.table(input_ids))


def test_unsupported_op_names_the_onnx_node(tmp_path):
    export_onnx(_SignOfEmbedding().eval(), tmp_path / "sign.onnx")
    with pytest.raises(UnsupportedOpError) as raised:
        import_onnx(tmp_path / "sign.onnx")
    assert raised.value.op == "Sign"
    message = str(raised.value)
    assert "ONNX node 'node_sign'" in message and "torch.sign(self.table(input_ids))" in message


def test_tokenizer_json_beside_the_file(tmp_path):
    assert tokenizer_json_beside(tmp_path / "model.onnx") is None
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    assert tokenizer_json_beside(tmp_path / "model.onnx") == '{"version": "1.0"}'
