"""The linear kernels' opt-in L2 bulk prefetch (config `prefetch_l2`; sm_90's cp.async.bulk.prefetch.L2, from
one thread a program), which `fdcc tune` tries on Hopper GPUs: compiled for sm_90 the dense GEMV and flat GEMM and
the chunked-CSR L1 kernel ask L2 for their program's weight rows (values and offsets) before the wait for x's
producer (the weights are no kernel's output), the xshared kernel for its first row block before the wait too
and for the next one in the loop; without the option no kernel has a prefetch and the wait comes first. Whether it is
faster is measured on a GPU (fdcc tune; scripts/bench_chunked_csr.py --prefetch-l2 0,1; scripts/gpu_xshared_check.py's
"pf" cases); here only what is compiled and which candidates the tune tries."""

import re

import pytest
import torch

from fdpp.codegen.build import compile_kernel
from fdpp.codegen.kernels import chunked_csr_xshared as X
from fdpp.codegen.launch_specs import step_launches
from fdpp.compiler import tune
from fdpp.compiler.errors import CompileError
from fdpp.compiler.targets import get_target
from fdpp.runtime.schema import KernelChoice, OpKind, Step
from fdpp.runtime.sparse_formats import PARTS, encode_chunked_csr

PREFETCH = re.compile(r"cp\.async\.bulk\.prefetch\.L2\.global")
GLOBAL_ACCESS = re.compile(r"\b(?:ld|st|atom|red)\.global\b")


def _entry_lines(ptx: str) -> list[str]:
    return ptx[ptx.index(".entry"):].splitlines()


def _compiled(spec, key):
    return compile_kernel(spec.fn, get_target("h100"), dict(spec.signature), dict(spec.constexprs), name=key,
                          num_warps=spec.num_warps, num_stages=spec.num_stages, divisible_by_16=spec.divisible_by_16,
                          dependent_launch=True)


def _dense_kernel(kernel: str, config: dict, gated: bool = False):
    """A dense linear's gemv or flat GEMM as a bundle's launch spec records it, compiled for h100."""
    shapes = {"x": ("batch", "seq", 512), "@w.weight": (192 if gated else 96, 512)}
    step = Step(OpKind.LINEAR, ("x", "@w.weight"), "y", {"gated": "silu"} if gated else {},
                out_shape=("batch", "seq", 96))
    (key, spec), = step_launches(step, KernelChoice(4, kernel, config), "float16", shapes.__getitem__).specs.items()
    assert dict(spec.constexprs)["PREFETCH_L2"] is bool(config.get("prefetch_l2"))
    return _compiled(spec, key)


def _prefetches_then_wait(ptx: str) -> tuple[int, bool]:
    """How many bulk prefetches the kernel has, and whether all come before its one wait, which comes before its
    first global access."""
    lines = _entry_lines(ptx)
    prefetches = [i for i, line in enumerate(lines) for _ in PREFETCH.findall(line)]
    waits = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
    accesses = [i for i, line in enumerate(lines) if GLOBAL_ACCESS.search(line)]
    assert len(waits) == 1 and waits[0] < accesses[0]
    return len(prefetches), all(i < waits[0] for i in prefetches)


@pytest.mark.parametrize("kernel,config", [
    ("gemv", {"block_n": 4, "block_k": 256}),
    ("flat_gemm", {"block_n": 32, "block_k": 128, "num_stages": 3}),
    ("flat_gemm", {"block_n": 16, "block_k": 128, "num_stages": 3, "spread": 8})])
@pytest.mark.parametrize("gated", [False, True])
def test_dense_kernels_prefetch_their_weight_rows_before_waiting_for_x(kernel, config, gated):
    # one range a program (the gated ones: gate rows and up rows)
    assert _prefetches_then_wait(_dense_kernel(kernel, {**config, "prefetch_l2": True}, gated).ptx) == (
        2 if gated else 1, True)
    assert _prefetches_then_wait(_dense_kernel(kernel, config, gated).ptx)[0] == 0


def _l1_kernel(config: dict, gated: bool = False):
    """The chunked-CSR L1 kernel as a bundle's launch spec records it (decode bucket of 1 row), compiled for h100
    with dependent launch."""
    weight = torch.randn(96 if gated else 48, 512).half()
    encoded = encode_chunked_csr(weight)
    refs = [f"@w.chunked_csr.{part}" for part in PARTS["chunked_csr"]]
    shapes = {"x": ("batch", "seq", 512), **{ref: tuple(encoded.tensors[part].shape)
                                             for ref, part in zip(refs, PARTS["chunked_csr"])}}
    attrs = {"sparse": encoded.meta(), **({"gated": "silu"} if gated else {})}
    step = Step(OpKind.LINEAR, ("x", *refs), "y", attrs, out_shape=("batch", "seq", 48))
    specs = step_launches(step, KernelChoice(1, "chunked_csr_gemv", config), "float16", shapes.__getitem__).specs
    (key, spec), = [(key, spec) for key, spec in specs.items() if "chunked_csr_linear" in key]
    assert dict(spec.constexprs)["PREFETCH_L2"] is bool(config.get("prefetch_l2"))
    return _compiled(spec, key)


@pytest.mark.parametrize("gated", [False, True])
def test_l1_kernel_prefetches_its_rows_before_waiting_for_x(gated):
    # values and offsets of the program's rows (the gated ones: of its gate rows and of its up rows)
    assert _prefetches_then_wait(_l1_kernel({"prefetch_l2": True}, gated).ptx) == (4 if gated else 2, True)
    assert _prefetches_then_wait(_l1_kernel({}, gated).ptx)[0] == 0


@pytest.mark.skipif(not X.GLUON_SHARED_GATHER, reason="this Triton's Gluon has no shared-memory gather")
@pytest.mark.parametrize("n,rows,gated", [(4096, 4, False), (22016, 8, True)])
def test_xshared_kernel_prefetches_the_first_row_block_before_the_wait_and_each_next_one(n, rows, gated):
    def ptx(prefetch: bool) -> str:
        config = {**X.default_xshared_config(n, 4096, rows), "prefetch_l2": prefetch}
        constexprs = X.xshared_constexprs(4096, config, has_bias=False, has_residual=not gated,
                                          activation=0 if gated else None, out_rows=rows if gated else 1)
        return compile_kernel(X.chunked_csr_xshared_kernel, get_target("h100"), X.XSHARED_SIGNATURE, constexprs,
                              name=f"xshared_prefetch_{n}_{rows}_{prefetch}", num_warps=config["num_warps"],
                              num_stages=1, dependent_launch=True).ptx
    with_prefetch = _entry_lines(ptx(True))
    # two call sites (the first row block, before the wait; the next one in the loop), values and offsets each, of
    # the block's rows (the gated ones: its gate rows and its up rows)
    assert sum(len(PREFETCH.findall(line)) for line in with_prefetch) == (8 if gated else 4)
    first_prefetch = min(i for i, line in enumerate(with_prefetch) if PREFETCH.search(line))
    wait = [i for i, line in enumerate(with_prefetch) if "griddepcontrol.wait" in line]
    first_access = min(i for i, line in enumerate(with_prefetch) if GLOBAL_ACCESS.search(line))
    assert len(wait) == 1 and first_prefetch < wait[0] < first_access
    assert not PREFETCH.search(ptx(False))


def test_chunked_csr_prefetch_refuses_split_k():
    with pytest.raises(CompileError, match="prefetch_l2 asks for whole rows and needs split_k 1, got 2"):
        _l1_kernel({"prefetch_l2": True, "split_k": 2})


def test_tune_tries_the_dense_prefetch_up_to_16_rows_where_asked():
    plain = tune._candidates(4, 4096, 132)
    hopper = tune._candidates(4, 4096, 132, bulk_prefetch=True)
    assert hopper[:len(plain)] == plain and not any(config.get("prefetch_l2") for _, config in plain)
    added = hopper[len(plain):]
    assert {kernel for kernel, _ in added} == {"gemv", "flat_gemm"}
    assert all(config["prefetch_l2"] and "block_m" not in config for _, config in added)
    assert any(config.get("spread") for _, config in added)
    assert tune._candidates(32, 4096, 132, bulk_prefetch=True) == tune._candidates(32, 4096, 132)


def test_tune_tries_the_prefetch_on_hopper_only():
    plain = tune.chunked_csr_candidates(4096, 40, 1)
    hopper = tune.chunked_csr_candidates(4096, 40, 1, bulk_prefetch=True)
    assert not any(config.get("prefetch_l2") for config in plain)
    assert hopper[:len(plain)] == plain
    added = hopper[len(plain):]
    assert added and all(config["prefetch_l2"] and config["num_warps"] == 4 for config in added)
    assert {**plain[0], "prefetch_l2": True} in added                     # the default config among them
    assert len(added) == sum(config["num_warps"] == 4 for config in plain)
    quick = tune.chunked_csr_candidates(4096, 40, 1, bulk_prefetch=True, grid=False)    # --sparse-configs default
    assert quick == [plain[0], {**plain[0], "prefetch_l2": True}]


def test_a_profile_forcing_the_prefetch_reaches_the_bundles_kernels(tmp_path):
    """scripts/force_prefetch_profile.py's copy of a profile (here one putting a tiny Llama's linears on spread and
    plain flat GEMMs) compiles into an h100 bundle whose decode linears carry PREFETCH_L2, each kernel still waiting
    for its producer before any global load or store (tests/helpers.assert_kernels_wait_first)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import assert_kernels_wait_first, spread_profile, tiny_llama
    from fdpp.runtime.bundle import read_bundle

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from force_prefetch_profile import forced

    model, directory = tiny_llama(tmp_path)
    profile = spread_profile(model.config.to_dict(), "h100", spread=3, decode_rows=(1, 4), vendor_rows=64,
                             block_k=32, num_stages=2)
    forced_profile, dense_changed, sparse_changed = forced(profile, dense=True, sparse=True)
    assert dense_changed == 2 * len(profile["entries"]) // 3 and sparse_changed == 0     # decode rows, not vendor
    path, profile_path = tmp_path / "prefetch.fdpp", tmp_path / "prefetch.json"
    profile_path.write_text(json.dumps(forced_profile))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-m", "fdpp.compiler.cli", "compile", str(directory), "--target", "h100",
                    "-o", str(path), "--dtype", "float16", "--max-batch", "4", "--max-seq-len", "64",
                    "--prefill-chunk", "16", "--profile", str(profile_path)], env=env, check=True, capture_output=True)
    kernels = read_bundle(path).manifest.kernels
    prefetching = [k for k in kernels if k["constexprs"].get("PREFETCH_L2")]
    assert prefetching and all(k["name"].startswith("gemm_kernel") for k in prefetching)
    assert all(PREFETCH.search(read_bundle(path).member_bytes("kernels/" + k["ptx"]).decode()) for k in prefetching)
    assert assert_kernels_wait_first(path) == len(kernels)
