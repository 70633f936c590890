"""Sparse bundles through the kernel executor: the recorded bitmap, Tiled-CSL and chunked-CSR launches (CUDA-core
kernels for decode buckets, tensor-core kernels for prefill where the format has them, split-K sums; for chunked
CSR, x written interleaved by its producers, also for a batch that is not a multiple of the rows gathered, and
prefill through a dense copy of the weight), run by the Triton interpreter, give the reference executor's tokens
and logits."""

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
from helpers import tiny_llama

_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl", "chunked_csr"])
def test_sparse_launches_match_the_reference_executor(fmt, tmp_path):
    _, directory = tiny_llama(tmp_path)
    path = tmp_path / f"{fmt}.fdpp"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # compile in a process of its own
    # chunked CSR: the cost model would keep these tiny shapes on the CUDA-core kernel; from 8 rows on, the
    # 16-token prefill chunk takes the densified tensor-core path instead, so both run here. The Gluon kernel
    # (chunked_csr_xshared) is left out: Gluon does not run in the interpreter (tests/test_chunked_csr_xshared.py)
    force = ("import fdpp.passes.sparse_choice as S; "
             "S.densified_gemm_cost_us = lambda m, *rest: 0.0 if m >= 8 else float('inf'); "
             "S.xshared_offered = lambda *args: False; ") if fmt == "chunked_csr" else ""
    subprocess.run([sys.executable, "-c", f"import sys; {force}from fdpp.compiler.cli import main; main()",
                    "compile", str(directory), "--target", "h100",
                    "-o", str(path), "--dtype", "float16", "--max-batch", "4", "--max-seq-len", "64",
                    "--prefill-chunk", "16", "--sparsity", "0.6", "--prune", "magnitude", "--sparse-format", fmt,
                    "--softmax", "synchronized"], env=env, check=True, capture_output=True)
    bundle = read_bundle(path)
    kernels_used = {k.kernel for s in bundle.plan.steps for k in s.kernels}
    assert {f"{fmt}_gemv", f"{fmt}_gemm"} <= kernels_used
    if fmt == "chunked_csr":   # x's producers write it interleaved: only o_proj's prefill interleaves x itself
        launches = [(s.output, k.phase, launch["kernel"]) for s in bundle.plan.steps for k in s.kernels
                    for launch in k.launches]
        interleaving = {(step, phase) for step, phase, kernel in launches if kernel.startswith("interleave_rows")}
        assert interleaving and all(phase == "prefill" for _, phase in interleaving)
        assert any(kernel.startswith("densify_kernel") for _, _, kernel in launches)
        for producer in ("rms_norm", "attention"):
            assert any(k.config.get("out_rows_together") for s in bundle.plan.steps for k in s.kernels
                       if s.op.value == producer)
    _, specs = collect_launches(bundle.plan, bundle.manifest.dtype,
                                {k: tuple(v.shape) for k, v in bundle.weights.items()})
    executor = KernelExecutor(bundle.plan, bundle.weights, jit_launchers(specs), torch.float16, "cpu")
    kernels = Model(bundle, "cpu", executor)
    reference = fdpp.load(path)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [11, 12], [40]]
    assert kernels.generate(prompts, max_new_tokens=4).token_ids == \
        reference.generate(prompts, max_new_tokens=4).token_ids
    ids = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]]
    a, r = kernels.logits(ids), reference.logits(ids)
    assert float((a - r).norm() / r.norm()) < 3e-3
