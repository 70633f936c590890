"""chunked_csr_xshared: the Gluon chunked-CSR kernel that gathers x from shared memory at 4-8 rows. Gluon kernels do not
run under the interpreter, so here: the bank-spread encoding it reads decodes exactly to the weight, the dataflow
offers it only where it can run (sm_90, float16, x fitting in shared memory, a Triton with Gluon's gather) and
bundles record its launches with x interleaved by its producer, and it compiles for sm_90 with its epilogues, a
vector shared-memory load per entry and the dependent-launch instructions in place. scripts/gpu_xshared_check.py
runs it on a GPU against float64."""

import re

import pytest
import torch

from fdpp.codegen.kernels import chunked_csr_xshared as X
from fdpp.compiler.errors import CompileError
from fdpp.compiler.targets import get_target
from fdpp.passes import sparse_choice
from fdpp.passes.sparse_choice import choose_sparse_linear
from fdpp.runtime.sparse_formats import SparseFormatError, decode, encode, encode_chunked_csr, spread_banks

needs_gather = pytest.mark.skipif(not X.GLUON_SHARED_GATHER, reason="this Triton's Gluon has no shared-memory gather")


def _pruned(n: int, k: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g).half()
    return torch.where(torch.rand(n, k, generator=g) < density, weight, torch.zeros((), dtype=weight.dtype))


@pytest.mark.parametrize("n,k,density", [(37, 600, 0.3), (16, 4096, 0.3), (9, 1000, 0.95), (5, 300, 0.02),
                                         (3, 64, 0.0)])
def test_spread_encoding_decodes_to_the_weight_with_each_chunk_sorted_by_bank_group(n, k, density):
    weight = _pruned(n, k, density, seed=n + k)
    plain = encode_chunked_csr(weight)
    spread = encode(weight, "chunked_csr", spread=True)
    assert torch.equal(decode(spread.meta(), spread.tensors), weight)
    assert torch.equal(spread.tensors["bases"], plain.tensors["bases"]) and spread.nbytes == plain.nbytes
    chunk = spread.tile[1]
    columns = spread.tensors["bases"].long().repeat_interleave(chunk, 1) + spread.tensors["offsets"].long()
    group = (columns % 8).view(n, -1, chunk)
    assert bool((group[..., 1:] >= group[..., :-1]).all())          # sorted by class within every chunk
    # each chunk holds the same entries as before, reordered
    for part in ("values", "offsets"):
        before = plain.tensors[part].view(n, -1, chunk).to(torch.int32).sort(2).values
        after = spread.tensors[part].view(n, -1, chunk).to(torch.int32).sort(2).values
        assert torch.equal(before, after)


def test_spread_refuses_other_formats():
    with pytest.raises(SparseFormatError, match="chunked_csr"):
        encode(_pruned(8, 128, 0.3, 1), "bitmap", (16, 64), spread=True)


def _choices(n, k, target="h100", dtype="float16", gated=False):
    decision = choose_sparse_linear(n, k, 0.3, dtype, "chunked_csr", [1, 2, 4, 8, 16], (1, 2, 4, 8),
                                    get_target(target), lambda m: 40.0 + m, epilogue=gated)
    return {c.max_rows: c for c in decision["choices"]}


@needs_gather
def test_dataflow_offers_xshared_at_four_to_eight_rows_where_x_fits():
    qkv = _choices(12288, 4096)
    assert qkv[8].kernel == "chunked_csr_xshared" and qkv[4].kernel == "chunked_csr_xshared"
    assert qkv[8].config == {"multiprocessors": 132}
    assert {qkv[m].kernel for m in (1, 2, 16)} == {"chunked_csr_gemv"}
    # down_proj at 8 rows: x ([16384 pow2, 8] fp16, 256 KB) does not fit in 227 KB
    assert not sparse_choice.xshared_offered(8, 11008, "float16", get_target("h100"))
    assert sparse_choice.xshared_offered(4, 11008, "float16", get_target("h100"))
    for target, dtype in (("a100", "float16"), ("mi300x", "float16"), ("h100", "bfloat16"), ("h200", "float32")):
        assert not sparse_choice.xshared_offered(8, 4096, dtype, get_target(target)), (target, dtype)
    assert sparse_choice.xshared_offered(8, 4096, "float16", get_target("h200"))


def test_dataflow_does_not_offer_xshared_without_gluons_gather(monkeypatch):
    monkeypatch.setattr(X, "GLUON_SHARED_GATHER", False)
    assert {c.kernel for c in _choices(12288, 4096).values()} == {"chunked_csr_gemv"}


def test_xshared_config_and_shared_memory():
    assert X.default_xshared_config(4096, 4096, 8) == {"rows": 8, "num_warps": 8, "groups": 2, "unroll": 4,
                                                       "programs": 0}            # o_proj: 64 KB of x
    assert X.default_xshared_config(4096, 4096, 4)["num_warps"] == 8            # o_proj: 32 KB of x
    assert X.default_xshared_config(4096, 11008, 4)["num_warps"] == 16          # down_proj: 128 KB of x
    assert X.default_xshared_config(22016, 4096, 3)["rows"] == 4
    config = X.default_xshared_config(22016, 4096, 8)
    # 8 warps in one group: 32 weight rows a block, 16 features when gated; a persistent grid of 3 a multiprocessor
    assert X.xshared_row_blocks(11008, True, config) == 688 and X.xshared_grid(11008, True, config, 132) == 396
    assert X.xshared_shared_bytes(4096, 8, config) == 4 * 4 * (4096 + 64)
    # one and two rows: a word a column (one row's value zero-extended), so x's buffer is the same size
    assert X.xshared_x_bytes(4096, 1) == X.xshared_x_bytes(4096, 2) == 4 * 4096
    assert [X.xshared_rows(m) for m in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert X.xshared_constexprs(4096, {**config, "rows": 1}, has_bias=False, has_residual=False, activation=None,
                                out_rows=1)["SINGLE"]
    # sums from registers where a row block is one warp group (measured faster at 8 rows; gated: only there unless
    # asked for), unless the config says otherwise
    plain = dict(has_bias=False, has_residual=False, activation=None, out_rows=1)
    assert X.xshared_constexprs(4096, config, **plain)["DIRECT"]
    assert not X.xshared_constexprs(4096, X.default_xshared_config(4096, 4096, 8), **plain)["DIRECT"]   # 2 groups
    assert X.xshared_constexprs(4096, config, **{**plain, "activation": 0})["DIRECT"]                 # gated, 8 rows
    four = X.default_xshared_config(22016, 4096, 4)
    assert not X.xshared_constexprs(4096, four, **{**plain, "activation": 0})["DIRECT"]
    assert X.xshared_constexprs(4096, {**four, "direct": True}, **{**plain, "activation": 0})["DIRECT"]
    assert not X.xshared_constexprs(4096, {**config, "direct": False}, **plain)["DIRECT"]
    with pytest.raises(ValueError, match="need one warp group"):
        X.xshared_constexprs(4096, {**config, "groups": 2, "direct": True}, **plain)
    with pytest.raises(ValueError, match="takes 1-8 rows"):
        X.xshared_rows(9)
    with pytest.raises(ValueError, match="rows must be one of"):
        X.xshared_constexprs(4096, {**config, "rows": 3}, has_bias=False, has_residual=False, activation=None,
                             out_rows=1)


def _compiled(k, rows, gated, residual, bias, out_rows, dependent_launch=True, n=None, direct=None, early=0):
    """gated: False, or an activation name of ACTIVATION_CODES; n: the weight's rows for its default config."""
    from fdpp.codegen.build import compile_kernel
    from fdpp.codegen.kernels.activation import ACTIVATION_CODES
    config = X.default_xshared_config(n or (22016 if gated else 4096), k, rows)
    if direct is not None:
        config["direct"] = direct
    if early:
        config["early"] = early
    constexprs = X.xshared_constexprs(k, config, has_bias=bias, has_residual=residual,
                                      activation=ACTIVATION_CODES[gated] if gated else None, out_rows=out_rows)
    return compile_kernel(X.chunked_csr_xshared_kernel, get_target("h100"), X.XSHARED_SIGNATURE, constexprs,
                          name=f"xshared_test_{k}_{rows}_{gated}_{residual}_{bias}_{out_rows}_{n}_{direct}_{early}",
                          num_warps=config["num_warps"], num_stages=1, dependent_launch=dependent_launch)


@needs_gather
@pytest.mark.parametrize("k,rows,gated,residual,bias,out_rows", [
    (4096, 8, "silu", False, False, 8), (4096, 8, False, True, False, 1), (768, 4, False, False, True, 4),
    (11008, 4, False, True, False, 1), (576, 8, "gelu_tanh", False, True, 1), (1536, 4, "gelu", True, False, 4),
    (2048, 8, "relu", False, False, 1), (4096, 2, "silu", False, False, 2), (11008, 1, False, True, False, 1),
    (4096, 1, "silu", False, True, 1), (768, 2, False, True, True, 1)])
def test_kernel_compiles_for_sm90_with_a_shared_load_per_entry(k, rows, gated, residual, bias, out_rows):
    kernel = _compiled(k, rows, gated, residual, bias, out_rows)
    body = kernel.ptx[kernel.ptx.index(".entry"):]
    # 4 unrolled sets of 4 entries: 16 gathers of a column's words each, one load apiece (a vector from 4 rows)
    gather = r"ld\.shared\.b32" if rows <= 2 else rf"ld\.shared\.v{rows // 2}\.b32"
    assert len(re.findall(gather, body)) >= 16
    assert kernel.programmatic_dependent_launch
    lines = body.splitlines()
    wait = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
    memory = [i for i, line in enumerate(lines) if re.search(r"\b(?:ld|st)\.global\b", line)]
    assert len(wait) == 1 and wait[0] < memory[0]
    assert sum("griddepcontrol.launch_dependents" in line for line in lines) == 1
    assert kernel.shared_memory_bytes <= X.xshared_shared_bytes(k, rows, X.default_xshared_config(
        22016 if gated else 4096, k, rows)) + 2048


@needs_gather
@pytest.mark.parametrize("rows,gated", [(4, False), (8, "silu")])
def test_early_asks_l2_for_each_rows_first_chunks_before_the_wait(rows, gated):
    """config "early": E chunks of values and offsets a thread, one prefetch.global.L2 each, all before
    griddepcontrol.wait and before x's copy; none without it."""
    def prefetches_before_wait(kernel):
        lines = kernel.ptx[kernel.ptx.index(".entry"):].splitlines()
        wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
        first_load = next(i for i, line in enumerate(lines) if re.search(r"\bld\.global\b", line))
        asked = [i for i, line in enumerate(lines) for _ in re.findall(r"prefetch\.global\.L2", line)]
        assert all(i < wait < first_load for i in asked)
        return len(asked)
    assert prefetches_before_wait(_compiled(4096, rows, gated, not gated, False, 1, early=8)) == 2 * 8
    assert prefetches_before_wait(_compiled(4096, rows, gated, not gated, False, 1)) == 0


@needs_gather
@pytest.mark.parametrize("rows,gated,bias", [(8, False, True), (1, False, False), (8, "silu", True),
                                             (2, "silu", False)])
def test_direct_sums_leave_out_the_shared_round_trip(rows, gated, bias):
    """Sums from registers (the default for row blocks of one warp group: q/k/v, and gate/up at 8 rows): one barrier,
    after x's copy, against one per row block more through shared memory; gated rows pair with a shuffle 8 lanes
    apart."""
    def barriers(kernel):
        body = kernel.ptx[kernel.ptx.index(".entry"):]
        return len(re.findall(r"\bbar\.sync\b|\bbarrier\.sync\b", body))
    n = 22016 if gated else 12288       # gate/up, q/k/v: one warp group a row block by default
    direct = _compiled(4096, rows, gated, False, bias, 1, n=n, direct=True)
    through_shared = _compiled(4096, rows, gated, False, bias, 1, n=n, direct=False)
    assert barriers(direct) < barriers(through_shared)
    if gated:       # the pairing's shuffle (the reductions' own use offsets 4, 2, 1)
        assert re.search(r"shfl\.sync\.bfly\.b32 %r\d+, %r\d+, 8, 0x1f", direct.ptx)
        assert not re.search(r"shfl\.sync\.bfly\.b32 %r\d+, %r\d+, 8, 0x1f", through_shared.ptx)


@pytest.fixture(scope="module")
def xshared_bundle(tmp_path_factory):
    """A tiny random Llama at 70% in chunked CSR for h100, max batch 8, with the cost model made to take
    chunked_csr_xshared wherever it is offered (its tiny shapes would not pay for the copy of x otherwise)."""
    from fdpp.compiler.driver import compile_model
    from helpers import tiny_llama
    directory = tiny_llama(tmp_path_factory.mktemp("xshared-llama"))[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sparse_choice, "xshared_cost_us", lambda *args, **kwargs: 0.0)
        return compile_model(str(directory), "h100", tmp_path_factory.mktemp("xshared") / "xshared.fdpp",
                             _options("chunked_csr"))


def _options(sparse_format: str):
    """The tiny models' compile options at 70% magnitude pruning, max batch 8 (the 4- and 8-row buckets)."""
    import dataclasses
    from helpers import compile_options
    return dataclasses.replace(compile_options("float16", sparsity=0.7, prune="magnitude",
                                               sparse_format=sparse_format), max_batch=8)


@needs_gather
def test_bundle_launches_xshared_with_x_written_interleaved_and_spread_entries(xshared_bundle):
    from fdpp.runtime.bundle import read_bundle
    from helpers import assert_kernels_wait_first
    bundle = read_bundle(xshared_bundle)
    used = [(step, choice) for step in bundle.plan.steps for choice in step.kernels
            if choice.kernel == "chunked_csr_xshared"]
    assert used and all(3 <= choice.max_rows <= 8 for _, choice in used)
    for step, choice in used:
        # in decode x comes interleaved from its producer: one launch, the Gluon kernel; o_proj's prefill
        # (prefill attention writes row-major) interleaves x first, as chunked_csr_gemv does
        kernels = [launch["kernel"].split("-")[0] for launch in choice.launches]
        assert choice.config["multiprocessors"] == 132
        if choice.phase == "prefill" and not choice.config.get("x_interleaved"):
            assert kernels == ["interleave_rows_kernel", "chunked_csr_xshared_kernel"], step.output
        else:
            assert choice.config["x_interleaved"] and kernels == ["chunked_csr_xshared_kernel"], step.output
        # one recorded argument per runtime parameter, the weight's parts in the kernel's order
        launch = choice.launches[-1]
        assert len(launch["args"]) == len(X.XSHARED_SIGNATURE), step.output
        assert [ref for _, ref in launch["args"][1:4]] == list(step.inputs[1:4]), step.output
    # every chunked-CSR weight is bank-spread (whichever kernel reads it: weights must not depend on the target),
    # entries sorted by column mod 8 within every chunk
    spread = [name for name in bundle.weights if name.endswith(".chunked_csr.bases")]
    assert spread
    for name in spread:
        prefix = name.removesuffix(".bases")
        bases, offsets = bundle.weights[prefix + ".bases"], bundle.weights[prefix + ".offsets"]
        columns = bases.long().repeat_interleave(32, 1) + offsets.long()
        group = (columns % 8).view(bases.shape[0], -1, 32)
        assert bool((group[..., 1:] >= group[..., :-1]).all()), prefix
    assert assert_kernels_wait_first(xshared_bundle) > 0


def test_sparse_bundle_with_xshared_equals_the_pruned_dense_bundle_on_the_reference_executor(xshared_bundle, tmp_path):
    """The spread encoding the bundle stores decodes to the same pruned weights: token for token the dense
    bundle's output."""
    import fdpp
    from fdpp.compiler.driver import compile_model
    from helpers import tiny_llama
    directory = tiny_llama(tmp_path)[1]
    dense = compile_model(str(directory), "h100", tmp_path / "dense.fdpp", _options("dense"))
    prompts = [[5, 6, 7, 8, 9], [11, 12], [40], [3, 1, 4, 1, 5, 9]]
    assert fdpp.load(xshared_bundle).generate(prompts, max_new_tokens=6).token_ids == \
        fdpp.load(dense).generate(prompts, max_new_tokens=6).token_ids


def test_launch_spec_refuses_xshared_without_gluons_gather(monkeypatch, xshared_bundle):
    from fdpp.codegen import aot, launch_specs
    from fdpp.runtime.bundle import read_bundle
    bundle = read_bundle(xshared_bundle)
    if not any(c.kernel == "chunked_csr_xshared" for s in bundle.plan.steps for c in s.kernels):
        pytest.skip("this Triton's dataflow chose no chunked_csr_xshared")
    monkeypatch.setattr(launch_specs, "chunked_csr_xshared_kernel", None)
    with pytest.raises(CompileError, match="needs a Triton whose Gluon has the shared-memory gather"):
        aot.collect_launches(bundle.plan, bundle.manifest.dtype, {k: tuple(v.shape) for k, v in bundle.weights.items()})


@needs_gather
def test_h100_profile_puts_each_llama_shape_on_the_kernel_measured_faster_at_4_and_8_rows():
    """With the shipped H100 profile (the L1 kernel measured by `fdcc tune`, xshared scaled to its timing), the 70%
    Llama-2-7B linears take what docs/perf/2026-12-07-xshared-bundles.md measured faster: xshared for o_proj at 4
    and 8 rows and for q/k/v and gate/up, the L1 kernel for down_proj (at 8 rows its x does not fit)."""
    import json
    from pathlib import Path
    from fdpp.passes.select_kernels import pruned_linear_decision
    profile = json.loads((Path(__file__).resolve().parents[1] / "compiler" / "profiles" / "h100.json").read_text())
    expected = {(12288, 4096, False, False): "chunked_csr_xshared", (4096, 4096, False, True): "chunked_csr_xshared",
                (22016, 4096, True, False): "chunked_csr_xshared", (4096, 11008, False, True): "chunked_csr_gemv"}
    for (n, k, gated, residual), kernel in expected.items():
        decision = pruned_linear_decision(n, k, 0.3, gated, residual, get_target("h100"), profile, "float16",
                                          "chunked_csr", [1, 2, 4, 8], (1, 2, 4, 8))
        picked = {c.max_rows: c.kernel for c in decision["choices"]}
        assert picked[1] == picked[2] == "chunked_csr_gemv" and picked[4] == picked[8] == kernel, (n, k, picked)
