"""Whole sparse bundles: compiled with --sparsity, stored as Tiled-CSL, bitmap or chunked CSR, they give exactly
the outputs of a bundle that stores the same pruned weights dense (CPU reference executor; the encodings decode to the
same bits, and the same linear runs on them), and the manifest records each weight's encoding. The recorded
sparse kernel launches are checked under the interpreter in test_sparse_kernel_launches.py."""

from __future__ import annotations

import pytest
import torch

import fdpp
from fdpp.compiler.driver import compile_model
from fdpp.runtime.bundle import read_bundle
from fdpp.runtime.inspect import describe
from fdpp.runtime.sparse_formats import PARTS, tensor_name

from helpers import assert_kernels_wait_first, compile_options, random_tokens, tiny_llama

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13]]


def _compile(path, out, dtype: str, fmt: str, method: str = "magnitude", sparsity: float = 0.5):
    options = compile_options(dtype, sparsity=sparsity, prune=method, sparse_format=fmt)
    return compile_model(str(path), "h100", out / f"{method}-{fmt}-{dtype}.fdpp", options)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("sparse-llama"))[1]


@pytest.mark.parametrize("dtype,fmt", [("float32", "bitmap"), ("float16", "bitmap"), ("float16", "tiled_csl"),
                                       ("float32", "chunked_csr"), ("float16", "chunked_csr")])
def test_sparse_bundle_equals_the_pruned_dense_bundle(llama_dir, tmp_path, dtype, fmt):
    dense = fdpp.load(_compile(llama_dir, tmp_path, dtype, "dense"))
    sparse_path = _compile(llama_dir, tmp_path, dtype, fmt)
    assert assert_kernels_wait_first(sparse_path) > 0       # h100 bundles: every kernel waits before memory
    sparse = fdpp.load(sparse_path)
    tokens = random_tokens(2, 9, seed=4).tolist()
    if dtype == "float16" and fmt in ("bitmap", "tiled_csl"):
        # these kernels have no epilogues, so gate and up (and o_proj before the residual add) round to float16
        # on their own, where the dense bundle's fused epilogues round once: equal to float16 precision
        torch.testing.assert_close(sparse.logits(tokens), dense.logits(tokens), rtol=2e-2, atol=2e-2)
    else:
        assert torch.equal(sparse.logits(tokens), dense.logits(tokens))
    assert sparse.generate(PROMPTS, max_new_tokens=5).token_ids == dense.generate(PROMPTS, max_new_tokens=5).token_ids


def test_sparse_manifest_records_every_encoding(llama_dir, tmp_path):
    bundle = read_bundle(_compile(llama_dir, tmp_path, "float16", "tiled_csl", method="wanda", sparsity=0.7))
    sparsity = bundle.manifest.sparsity
    assert sparsity["method"] == "wanda" and sparsity["sparsity"] == 0.7 and sparsity["calibration"]
    # per layer: q/k/v stacked into one weight (no epilogue needed), o, gate, up and down apart (Tiled-CSL's
    # kernels have no gated or residual epilogue)
    assert len(sparsity["weights"]) == 10
    assert "model.layers.0.self_attn.q_proj+k_proj+v_proj.weight" in sparsity["weights"]
    for name, entry in sparsity["weights"].items():
        assert entry["format"] == "tiled_csl" and entry["density"] <= 0.3
        enc = entry["encoding"]
        for part in PARTS["tiled_csl"]:
            assert tensor_name(name, "tiled_csl", part) in bundle.weights
        assert name not in bundle.weights                        # only the encoding is stored
        entries = bundle.weights[tensor_name(name, "tiled_csl", "entries")]
        assert enc["bytes"] >= entries.numel() * 4 and enc["padded_shape"][0] % 128 == 0
    text = describe(bundle)
    assert "tiled_csl" in text and "density" in text


def test_dense_format_keeps_pruned_weights_dense(llama_dir, tmp_path):
    bundle = read_bundle(_compile(llama_dir, tmp_path, "float32", "dense", sparsity=0.7))
    w = bundle.weights["model.layers.1.mlp.gate_proj+up_proj.weight"]       # stored dense, fused
    assert float((w == 0).float().mean()) >= 0.7
    assert all(e["format"] == "dense" for e in bundle.manifest.sparsity["weights"].values())


def test_sparse_options_are_checked_before_any_work():
    from fdpp.compiler.driver import validate_options
    from fdpp.compiler.errors import CompileError

    with pytest.raises(CompileError, match="Tiled-CSL stores 16-bit values"):
        validate_options(compile_options("float32", sparsity=0.5, sparse_format="tiled_csl"))
    with pytest.raises(CompileError, match="--prune must be one of"):
        validate_options(compile_options(sparsity=0.5, prune="random"))
    with pytest.raises(CompileError, match="--sparse-format must be one of"):
        validate_options(compile_options(sparsity=0.5, sparse_format="csr"))
