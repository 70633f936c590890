"""calibrate_softmax: φ and the safe range per layer from calibration text, the auto/unified/synchronized
decisions, and what the CPU reference executor does with them (the kernels' own exactness is in
test_kernels_unified_softmax.py)."""

from __future__ import annotations

import pytest
import torch

from fdpp.compiler.calibration import load_calibration
from fdpp.compiler.errors import CompileError
from fdpp.compiler.ir import Op
from fdpp.compiler.targets import get_target
from fdpp.passes.calibrate_softmax import MIN_COVERAGE, calibrate_softmax, choose_unified_max
from fdpp.passes.pass_manager import PassContext, PassManager
from fdpp.passes.pipeline import PIPELINE
from fdpp.runtime.unified_max import safe_offsets

from helpers import MAX_SEQ_LEN, compile_options, tiny_llama, trace_tiny

BEFORE_CALIBRATION = [(name, fn) for name, fn in PIPELINE[:PIPELINE.index(("calibrate_softmax", calibrate_softmax))]]


def _kv_cached(model):
    graph = trace_tiny(model)
    return PassManager(BEFORE_CALIBRATION).run(graph, PassContext(compile_options(), get_target("h100")))


def _calibration(vocab: int = 300, tokens: int = 256, seq: int = 64):
    return load_calibration(None, None, vocab, tokens, seq)


def test_window_is_centred_on_the_row_maxima():
    maxima = torch.linspace(0.0, 10.0, 10001, dtype=torch.float64)
    choice = choose_unified_max(maxima, (-9.0, 10.5))
    assert choice["phi"] == pytest.approx(5.0 - 0.75, abs=1e-3)
    low, high = choice["safe_range"]
    assert low < 0.0 and high > 10.0 and high - low == pytest.approx(19.5)
    assert choice["coverage"] == 1.0


def test_maxima_wider_than_the_window_lose_coverage():
    maxima = torch.linspace(-100.0, 100.0, 20001, dtype=torch.float64)
    choice = choose_unified_max(maxima, (-9.0, 10.5))
    assert choice["coverage"] == pytest.approx(19.5 / 200.0, abs=1e-3)


def test_calibration_text_defaults_to_the_bundled_excerpt():
    cal = _calibration()
    assert cal.tokens.shape == (4, 64) and cal.tokens.dtype == torch.int64
    assert "default calibration text" in cal.description and "bytes" in cal.description
    with pytest.raises(CompileError, match="fewer than one row"):
        load_calibration(None, None, 300, 10_000_000, 10_000_000)


def test_auto_chooses_the_unified_max_where_the_scores_fit_and_records_it():
    model, _ = tiny_llama()
    graph = _kv_cached(model)
    cal = _calibration()
    result = calibrate_softmax(graph, PassContext(compile_options("float16", softmax="auto"), get_target("h100"), cal))
    assert result.changes == {"unified": 2, "synchronized": 0}
    for node in result.graph.nodes:
        if node.op is Op.ATTENTION:
            s = node.attr("softmax")
            assert s["scheme"] == "unified" and s["coverage"] == 1.0
            assert s["rows"] == 4 * 64 * node.attr("n_heads")
            low, high = s["safe_range"]
            assert high - low == pytest.approx(19.5) and low <= s["row_max_range"][0] <= s["row_max_range"][1] <= high
            assert s["phi"] == pytest.approx(low + 9.0, abs=1e-3)
    # measured once for the graph, then reused by the next target's pipeline
    assert len(cal.cache) == 1
    calibrate_softmax(graph, PassContext(compile_options("float16", softmax="auto"), get_target("a100"), cal))
    assert len(cal.cache) == 1


def test_a_layer_with_wide_scores_keeps_the_synchronized_softmax():
    """As FlashDecoding++ does for OPT-6.7B: layer 1's queries scaled up so its scores spread far wider than
    float16's safe window; layer 0 stays unified."""
    model, _ = tiny_llama(num_hidden_layers=2)
    wide = type(model)(model.config).eval()
    wide.load_state_dict(model.state_dict())
    with torch.no_grad():
        wide.model.layers[1].self_attn.q_proj.weight.mul_(400.0)
    graph = _kv_cached(wide)
    result = calibrate_softmax(graph, PassContext(compile_options("float16", softmax="auto"), get_target("h100"),
                                                  _calibration()))
    schemes = [n.attr("softmax") for n in result.graph.nodes if n.op is Op.ATTENTION]
    assert schemes[0]["scheme"] == "unified"
    assert schemes[1]["scheme"] == "synchronized" and schemes[1]["coverage"] < MIN_COVERAGE
    forced = calibrate_softmax(graph, PassContext(compile_options("float16", softmax="unified"), get_target("h100"),
                                                  _calibration()))
    assert forced.changes == {"unified": 2, "synchronized": 0}


def test_synchronized_needs_no_calibration_and_auto_does():
    model, _ = tiny_llama()
    graph = _kv_cached(model)
    result = calibrate_softmax(graph, PassContext(compile_options(softmax="synchronized"), get_target("h100")))
    assert result.changes == {"synchronized": 2}
    with pytest.raises(CompileError, match="calibration"):
        calibrate_softmax(graph, PassContext(compile_options(softmax="auto"), get_target("h100")))


def test_float32_window_is_wider_than_float16():
    (low16, high16), (low32, high32) = safe_offsets("float16"), safe_offsets("float32")
    assert low32 < low16 < 0 < high16 < high32 and high16 <= 11.09     # e^11.09 = 65504, float16's largest


def test_bundle_with_a_forced_unified_layer_counts_fallbacks_and_keeps_its_outputs(tmp_path):
    """Every layer forced unified on a model whose layer 1 scores leave the window: the CPU reference
    executor recomputes (and counts) those rows, and the logits still match Hugging Face. (float32's window
    is 120 wide, so layer 1's queries are scaled further than for float16.)"""
    import fdpp
    from fdpp.compiler.driver import compile_model

    model, _ = tiny_llama()
    wide = type(model)(model.config).eval()
    wide.load_state_dict(model.state_dict())
    with torch.no_grad():
        wide.model.layers[1].self_attn.q_proj.weight.mul_(4000.0)
    wide.save_pretrained(tmp_path / "wide")
    bundle = compile_model(str(tmp_path / "wide"), "h100", tmp_path / "wide.fdpp",
                           compile_options("float32", softmax="unified", calibration_tokens=256))
    m = fdpp.load(bundle)
    tokens = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(3))
    ours = m.logits(tokens)
    with torch.no_grad():
        hf = wide(tokens).logits
    assert float((ours - hf).norm() / hf.norm()) < 1e-4
    assert 0 < m.softmax_fallbacks < 2 * 40 * 4 * 2        # some rows, never all of both layers
    assert max(layer["softmax"]["coverage"] for layer in m.manifest.layers) <= 1.0
    assert MAX_SEQ_LEN >= 40
