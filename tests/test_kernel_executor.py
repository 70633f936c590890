"""Whole bundles through the kernel executor: the launches recorded in the plan, run with the Triton
interpreter on the CPU, must give the reference executor's tokens and logits (fp16) — for Llama (GQA),
OPT (LayerNorm, biases, learned positions) and Qwen2 (biased QKV), prefill and decode, ragged batches."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

import fdpp
from fdpp.codegen.aot import collect_launches, jit_launchers
from fdpp.codegen.kernels.testing import interpreter_fallback
from fdpp.runtime.bundle import read_bundle
from fdpp.runtime.kernel_executor import KernelExecutor
from fdpp.runtime.model import Model
from helpers import spread_profile, tiny_llama, tiny_opt, tiny_qwen2

_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)

BUILDERS = {"llama": tiny_llama, "opt": tiny_opt, "qwen2": tiny_qwen2}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_recorded_launches_match_the_reference_executor(kind, tmp_path):
    _, directory = BUILDERS[kind](tmp_path)
    path = tmp_path / f"{kind}.fdpp"
    # compiled kernels are built in a process of their own: this one may run Triton as the interpreter
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-m", "fdpp.compiler.cli", "compile", str(directory), "--target", "h100",
                    "-o", str(path), "--dtype", "float16", "--max-batch", "4", "--max-seq-len", "64",
                    "--prefill-chunk", "16"], env=env, check=True, capture_output=True)
    bundle = read_bundle(path)
    assert bundle.manifest.kernels, "the bundle carries compiled kernels"
    _, specs = collect_launches(bundle.plan, bundle.manifest.dtype,
                                {k: tuple(v.shape) for k, v in bundle.weights.items()})
    executor = KernelExecutor(bundle.plan, bundle.weights, jit_launchers(specs), torch.float16, "cpu")
    kernels = Model(bundle, "cpu", executor)
    reference = fdpp.load(path)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [11, 12], [40]]  # > 1 chunk
    got = kernels.generate(prompts, max_new_tokens=6).token_ids
    assert got == reference.generate(prompts, max_new_tokens=6).token_ids
    ids = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]]
    a, r = kernels.logits(ids), reference.logits(ids)
    assert float((a - r).norm() / r.norm()) < 3e-3


def test_spread_flat_gemm_launches_match_the_reference_executor(tmp_path):
    """A profile that puts every linear of a few rows on the flat GEMM with a spread grid (3 programs per 16 rows,
    each owning about a third of the features): the recorded launches still give the reference's tokens."""
    import json

    model, directory = tiny_llama(tmp_path)
    profile = tmp_path / "spread.json"
    profile.write_text(json.dumps(spread_profile(model.config.to_dict(), "h100", spread=3, decode_rows=(1, 4),
                                                 vendor_rows=64, block_k=32, num_stages=2)))
    path = tmp_path / "spread.fdpp"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-m", "fdpp.compiler.cli", "compile", str(directory), "--target", "h100",
                    "-o", str(path), "--dtype", "float16", "--max-batch", "4", "--max-seq-len", "64",
                    "--prefill-chunk", "16", "--profile", str(profile)], env=env, check=True, capture_output=True)
    bundle = read_bundle(path)
    spread_steps = [s for s in bundle.plan.steps for c in s.kernels if c.config.get("spread")]
    assert spread_steps, "the profile's spread grids reach the plan"
    from fdpp.runtime.inspect import describe
    assert "<= 4: flat_gemm x3 programs" in describe(bundle)
    _, specs = collect_launches(bundle.plan, bundle.manifest.dtype,
                                {k: tuple(v.shape) for k, v in bundle.weights.items()})
    executor = KernelExecutor(bundle.plan, bundle.weights, jit_launchers(specs), torch.float16, "cpu")
    kernels = Model(bundle, "cpu", executor)
    reference = fdpp.load(path)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [40]]
    assert kernels.generate(prompts, max_new_tokens=4).token_ids == \
        reference.generate(prompts, max_new_tokens=4).token_ids
