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


def _sparse_entry(n, k, m, config, density=0.3, gated=False, us=2.0):
    return {"format": "chunked_csr", "n": n, "k": k, "gated": gated, "m": m, "density": density, "config": config,
            "us": us}


def test_measured_sparse_configs_replace_the_chunked_csr_defaults():
    """A profile's chunked-CSR entry gives its config to the CUDA-core chunked-CSR choice of exactly its row
    bucket, and its time to the costs (and the expected speedup), for the same shape and gating at a density
    within MEASURED_DENSITY_SLACK; other buckets keep the wrapper's defaults and the cost model."""
    from fdpp.passes.sparse_choice import choose_sparse_linear, measured_sparse_config
    measured_config = {"rows": 1, "block_n": 4, "chunks": 16, "split_k": 1, "vector": 8, "num_warps": 8,
                       "prefetch": True}
    profile = _profile([], target="h200")
    profile["sparse_entries"] = [_sparse_entry(4096, 4096, 1, measured_config, density=0.31),
                                 _sparse_entry(4096, 4096, 1, {**measured_config, "chunks": 4}, density=0.5)]
    assert measured_sparse_config(profile, "chunked_csr", 4096, 4096, False, 0.3, 1)["config"] == measured_config
    assert measured_sparse_config(profile, "chunked_csr", 4096, 4096, False, 0.48, 1)["config"]["chunks"] == 4
    assert measured_sparse_config(profile, "chunked_csr", 4096, 4096, False, 0.4, 1) is None      # too far off
    assert measured_sparse_config(profile, "chunked_csr", 4096, 4096, True, 0.3, 1) is None       # not gated
    assert measured_sparse_config(profile, "chunked_csr", 4096, 4096, False, 0.3, 2) is None      # other rows
    assert measured_sparse_config(None, "chunked_csr", 4096, 4096, False, 0.3, 1) is None
    chosen = choose_sparse_linear(
        4096, 4096, 0.3, "float16", "chunked_csr", [1, 2], (1,), get_target("h200"), lambda m: 12.0,
        measured=lambda fmt, m: measured_sparse_config(profile, fmt, 4096, 4096, False, 0.3, m), gpu="test GPU")
    one, two = chosen["choices"]
    assert (one.kernel, one.config) == ("chunked_csr_gemv", measured_config)
    assert one.reason.startswith("profile (test GPU, chunked_csr_gemv measured at density 0.310): ")
    assert "chunked_csr_gemv 2.0us" in one.reason and chosen["expected_speedup"] == 6.0     # 12 us dense / 2 us
    assert (two.kernel, two.config) == ("chunked_csr_gemv", {}) and not two.reason.startswith("profile")


def test_a_measured_config_within_the_noise_of_the_default_is_not_taken():
    """Where the tune timed the wrapper's default within MIN_CONFIG_GAIN of the best config, the choice keeps the
    default config ({}) and the default's time, and says so; a bigger win takes the measured config."""
    from fdpp.passes.sparse_choice import MIN_CONFIG_GAIN, choose_sparse_linear
    best = {"rows": 1, "block_n": 4, "chunks": 8, "split_k": 1, "vector": 8, "num_warps": 4, "prefetch": True}

    def choice(default_us):
        entry = {**_sparse_entry(4096, 4096, 1, best, us=8.0), "default_us": default_us}
        chosen = choose_sparse_linear(4096, 4096, 0.3, "float16", "chunked_csr", [1], (1,), get_target("h100"),
                                      lambda m: 16.0, measured=lambda fmt, m: entry, gpu="test GPU")
        return chosen["choices"][0], chosen["expected_speedup"]

    near, speedup = choice(8.0 * (1 + MIN_CONFIG_GAIN / 2))
    assert near.config == {} and "default config within the noise of the best" in near.reason
    assert speedup == round(16.0 / (8.0 * (1 + MIN_CONFIG_GAIN / 2)), 2)
    far, speedup = choice(8.0 * (1 + 2 * MIN_CONFIG_GAIN))
    assert far.config == best and "within the noise" not in far.reason and speedup == 2.0


def test_compiled_plans_launch_the_measured_sparse_config():
    """Through the whole pipeline: a pruned tiny Llama compiled with a profile that measured its o_proj shape at
    one row gets that config in the o_proj's one-row choices (decode and prefill, both layers; the launch specs
    and the interleave pass merge it over the defaults), and every other pruned linear keeps the defaults."""
    from fdpp.compiler.ir import Op
    from fdpp.passes.pass_manager import PassContext, PassManager
    from fdpp.passes.pipeline import PIPELINE
    from helpers import compile_options, tiny_llama, trace_tiny

    model, _ = tiny_llama()
    graph = trace_tiny(model)
    measured_config = {"rows": 1, "block_n": 4, "chunks": 16, "split_k": 1, "vector": 8, "num_warps": 8,
                       "prefetch": True}
    profile = _profile([])
    profile["sparse_entries"] = [_sparse_entry(64, 64, 1, measured_config, density=0.3)]   # o_proj [64, 64]
    options = compile_options("float16", sparsity=0.7, prune="magnitude", sparse_format="chunked_csr",
                              profile=profile)
    after = PassManager(list(PIPELINE)).run(graph, PassContext(options, get_target("h200")))
    seen = {}
    for n in after.nodes:
        if n.op is Op.LINEAR and n.attrs.get("sparse_format", {}).get("format") == "chunked_csr":
            layer = n.attr("pruned")["weight"].split(".")[-2]                 # o_proj, down_proj, ...
            for choice in n.attr("kernels"):
                if choice["kernel"] == "chunked_csr_gemv":
                    seen.setdefault((layer, choice["max_rows"]), []).append(choice["config"])
    assert len(seen[("o_proj", 1)]) == 4 and all(c == measured_config for c in seen[("o_proj", 1)])
    others = [c for key, configs in seen.items() if key != ("o_proj", 1) for c in configs]
    assert len(others) > 10 and not any("block_n" in c for c in others)      # the wrapper's defaults


def test_sparse_profile_entries_are_checked_and_merged(tmp_path):
    from fdpp.compiler.tune import merged_profile
    path = tmp_path / "p.json"
    good = _sparse_entry(64, 32, 1, {"block_n": 2})
    for bad, words in (({**good, "format": "bitmap"}, "sparse entry 1 names format 'bitmap'"),
                       ({**good, "density": "0.3"}, "sparse entry 1 needs 'density'"),
                       ({**good, "density": 1.5}, "sparse entry 1 needs n, k, m >= 1, a density in (0, 1]")):
        profile = _profile([])
        profile["sparse_entries"] = [good, bad]
        path.write_text(json.dumps(profile))
        with pytest.raises(CompileError, match=re.escape(words)):
            load_profile(path, "h200")
    base = _profile([_entry(64, 32, 1, "gemv", 3.0), _entry(64, 32, 2, "gemv", 3.5)])
    base["sparse_entries"] = [good, _sparse_entry(64, 32, 2, {"block_n": 8})]
    measured = {**_profile([_entry(64, 32, 2, "flat_gemm", 3.1)]), "gpu": "new GPU",
                "sparse_entries": [_sparse_entry(64, 32, 1, {"block_n": 4})]}
    merged = merged_profile(base, measured)
    assert sorted((e["m"], e["kernel"]) for e in merged["entries"]) == [(1, "gemv"), (2, "flat_gemm")]
    assert sorted((e["m"], e["config"]["block_n"]) for e in merged["sparse_entries"]) == [(1, 4), (2, 8)]
    assert merged["gpu"] == "new GPU" and merged["base"] == {"gpu": "test GPU", "torch": None, "triton": None,
                                                             "entries_kept": 1}
    path.write_text(json.dumps(merged))
    assert load_profile(path, "h200")["sparse_entries"] == merged["sparse_entries"]


def test_tune_refuses_bad_sparse_options(tmp_path):
    def tune(*args):
        return subprocess.run([sys.executable, "-m", "fdpp.compiler.cli", "tune", "-t", "h200", "--model",
                               "llama2-7b", "-o", str(tmp_path / "p.json"), *args], capture_output=True, text=True,
                              timeout=300)
    for args, words in ((["--sparsity", "1.5"], "--sparsity 1.5: give the fraction of weights pruned"),
                        (["--sparse-only"], "--sparse-only measures the sparse kernel: give --sparsity too"),
                        (["--sparsity", "0.7", "--base", str(tmp_path / "none.json")], "cannot read profile")):
        done = tune(*args)
        assert done.returncode == 2 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


def test_a_measured_sparse_config_reaches_the_compiled_kernel(tmp_path):
    """`fdcc compile --profile` with a sparse entry for the tiny Llama's o_proj: the bundle's o_proj launches run
    a kernel compiled with the measured constexprs and warps (and a grid of its rows a program), the other pruned
    linears' the defaults; `fdcc inspect` counts the two o_proj as measured."""
    from fdpp.runtime.bundle import read_bundle
    from helpers import tiny_llama

    _, model_dir = tiny_llama(tmp_path / "model")
    measured_config = {"rows": 1, "block_n": 8, "chunks": 32, "split_k": 1, "vector": 8, "num_warps": 8,
                       "prefetch": True}
    profile = _profile([], target="h100")
    profile["sparse_entries"] = [_sparse_entry(64, 64, 1, measured_config, density=0.3, us=1.0)]
    (tmp_path / "p.json").write_text(json.dumps(profile))
    bundle_path = tmp_path / "b.fdpp"
    cli = [sys.executable, "-m", "fdpp.compiler.cli"]
    done = subprocess.run([*cli, "compile", str(model_dir), "-t", "h100", "--sparsity", "0.7", "--prune", "magnitude",
                           "--sparse-format", "chunked_csr",
                           "--max-batch", "1", "--softmax", "synchronized", "--profile", str(tmp_path / "p.json"),
                           "-o", str(bundle_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    bundle = read_bundle(bundle_path)
    binaries = {k["name"]: k for k in bundle.manifest.kernels}
    seen = {}
    for step in bundle.plan.steps:
        for choice in step.kernels:
            if choice.kernel == "chunked_csr_gemv" and choice.max_rows == 1:
                weight = next(a[1] for a in choice.launches[0]["args"] if str(a[1]).endswith("chunked_csr.values"))
                layer = weight.split(".")[-4]                                  # o_proj, down_proj, ...
                binary = binaries[choice.launches[0]["kernel"]]
                seen.setdefault(layer, []).append(
                    (binary["constexprs"]["BLOCK_N"], binary["constexprs"]["CHUNKS"], binary["num_warps"]))
    assert set(seen) == {"q_proj+k_proj+v_proj", "o_proj", "gate_proj+up_proj", "down_proj"}
    assert seen["o_proj"] == [(8, 32, 8)] * 2
    assert all(block_n != 8 or name == "gate_proj+up_proj" for name, launches in seen.items() if name != "o_proj"
               for block_n, chunks, warps in launches)
    assert all((chunks, warps) == (8, 4) for name, launches in seen.items() if name != "o_proj"
               for _, chunks, warps in launches)
    shown = subprocess.run([*cli, "inspect", str(bundle_path)], capture_output=True, text=True, timeout=300).stdout
    assert "measured profile for 2 of 9 linears" in shown
