"""`fdcc tune` profiles: a measured profile replaces the cost model for the shapes it covers (and only
those), bad profiles are refused with one line, and tuning without a GPU says so."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from fdpp.compiler.errors import CompileError
from fdpp.compiler.targets import get_target
from fdpp.compiler.tune import PROFILE_VERSION, load_profile, model_linear_shapes
from fdpp.passes.select_kernels import choose_linear, choose_linear_from_profile


def _profile(entries, target="h200"):
    return {"profile_version": PROFILE_VERSION, "target": target, "gpu": "test GPU", "entries": entries}


def _entry(n, k, m, kernel, us, config=None):
    return {"n": n, "k": k, "m": m, "kernel": kernel, "config": config or {}, "us": us, "vendor_us": 10.0}


def test_profile_choices_follow_the_measurements():
    profile = _profile([_entry(64, 32, 1, "gemv", 3.0, {"block_n": 8, "block_k": 512, "num_warps": 2}),
                        _entry(64, 32, 4, "flat_gemm", 4.0, {"block_n": 32, "block_k": 128, "num_stages": 4,
                                                             "num_warps": 4}),
                        _entry(64, 32, 16, "tc_gemm", 5.0)])
    choices = choose_linear_from_profile(64, 32, 64, profile)
    assert [(c.max_rows, c.kernel) for c in choices] == [(1, "gemv"), (4, "flat_gemm"), (64, "tc_gemm")]
    assert choices[0].config["block_n"] == 8 and choices[0].reason.startswith("profile (test GPU)")
    assert choose_linear_from_profile(128, 32, 64, profile) is None          # shape not measured


def test_unmeasured_shapes_keep_the_cost_model(tmp_path):
    from fdpp.compiler.options import CompileOptions
    from fdpp.passes.pass_manager import PassContext
    from fdpp.passes.pipeline import PIPELINE
    from fdpp.passes.pass_manager import PassManager
    from fdpp.compiler.ir import Op
    from helpers import tiny_llama, trace_tiny

    model, _ = tiny_llama()
    graph = trace_tiny(model)
    q_shape = (64, 64)                                 # tiny Llama: hidden 64, 4 heads of 16
    profile = _profile([_entry(*q_shape, 64, "flat_gemm", 1.0, {"block_n": 16, "block_k": 64, "num_stages": 3,
                                                                 "num_warps": 4})])
    options = CompileOptions(dtype="float32", max_batch=4, max_seq_len=128, profile=profile, softmax="synchronized")
    after = PassManager(list(PIPELINE)).run(graph, PassContext(options, get_target("h200")))
    reasons = {}
    for n in after.nodes:
        if n.op is Op.LINEAR:
            shape = after.node(n.inputs[1]).type.shape
            reasons.setdefault(shape, set()).update(k["reason"].split(":")[0] for k in n.attr("kernels"))
    assert any(r.startswith("profile") for r in reasons[q_shape])
    assert all(not any(r.startswith("profile") for r in rs) for s, rs in reasons.items() if s != q_shape)


def test_bad_profiles_are_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(CompileError, match="cannot read profile"):
        load_profile(path, "h200")
    path.write_text(json.dumps({"entries": []}))
    with pytest.raises(CompileError, match="not an fdcc tune profile"):
        load_profile(path, "h200")
    path.write_text(json.dumps(_profile([], target="a100")))
    with pytest.raises(CompileError, match="measured for a100, not h200"):
        load_profile(path, "h200")
    good = _entry(64, 32, 1, "gemv", 3.0)
    for bad, words in (({"n": 1}, "entry 1 needs 'k'"), ({**good, "m": "1"}, "entry 1 needs 'm'"),
                       ({**good, "kernel": "magic"}, "entry 1 names kernel 'magic'"),
                       ({**good, "m": 0}, "entry 1 needs n, k, m >= 1"), (["n", 1], "entry 1 is not an object")):
        path.write_text(json.dumps(_profile([good, bad])))
        with pytest.raises(CompileError, match=re.escape(words)):
            load_profile(path, "h200")
    path.write_text(json.dumps(_profile([good])))
    assert load_profile(path, "h200")["entries"] == [good]


def test_model_shapes_and_tune_without_gpu(tmp_path):
    from fdpp.compiler.sources import BUILTINS
    shapes = model_linear_shapes(BUILTINS["llama2-7b"].config)
    assert (4096, 4096, False) in shapes and (11008, 4096, False) in shapes and (4096, 11008, False) in shapes
    assert (32000, 4096, False) in shapes and (12288, 4096, False) in shapes      # QKV fused
    assert (22016, 4096, True) in shapes                                          # gate and up fused, gated
    done = subprocess.run([sys.executable, "-m", "fdpp.compiler.cli", "tune", "-t", "h200", "--model", "llama2-7b",
                           "-o", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=300)
    if "torch sees none" not in done.stderr:
        pytest.skip("a GPU is visible: tune measures for real here")
    assert done.returncode == 2 and done.stderr.startswith("fdcc: error:")
    assert not (tmp_path / "p.json").exists()


def test_spread_candidates_match_the_multiprocessors():
    """1-4 programs per multiprocessor, each run of features held by the narrowest power-of-two tile (>= 16);
    a grid the plain tiling already gives is left out."""
    from fdpp.compiler.tune import spread_candidates
    grids = sorted({(c["spread"], c["block_n"]) for c in spread_candidates(4096, 132)})
    assert grids == [(132, 32), (264, 16), (396, 16), (528, 16)]
    assert all(c["block_n"] >= -(-4096 // c["spread"]) for c in spread_candidates(4096, 132))
    assert not any(c["spread"] == 64 for c in spread_candidates(4096, 64))     # 4096 / 64 = 64 tiles of 64 already
    assert spread_candidates(100, 132) == []                                     # more programs than features
