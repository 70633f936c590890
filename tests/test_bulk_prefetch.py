"""The chunked-CSR kernels' opt-in L2 bulk prefetch (config `prefetch_l2`; sm_90's cp.async.bulk.prefetch.L2),
which `fdcc tune --sparsity` tries on Hopper GPUs: compiled for sm_90 it asks L2 for each weight row's values and
offsets, in the L1 kernel before the wait for x's producer (the weights are no kernel's output) and in the xshared
kernel before x is staged and again for the next row block; without it the kernels have no prefetch. Whether it is
faster is measured on a GPU (scripts/bench_chunked_csr.py --prefetch-l2 0,1, scripts/gpu_xshared_check.py's "pf"
cases); here only what is compiled."""

import re

import pytest
import torch

from fdpp.codegen.build import compile_kernel
from fdpp.codegen.kernels import chunked_csr_xshared as X
from fdpp.codegen.launch_specs import step_launches
from fdpp.compiler import tune
from fdpp.compiler.targets import get_target
from fdpp.runtime.schema import KernelChoice, OpKind, Step
from fdpp.runtime.sparse_formats import PARTS, encode_chunked_csr

PREFETCH = re.compile(r"cp\.async\.bulk\.prefetch\.L2\.global")
GLOBAL_ACCESS = re.compile(r"\b(?:ld|st|atom|red)\.global\b")


def _entry_lines(ptx: str) -> list[str]:
    return ptx[ptx.index(".entry"):].splitlines()


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
    return compile_kernel(spec.fn, get_target("h100"), dict(spec.signature), dict(spec.constexprs), name=key,
                          num_warps=spec.num_warps, num_stages=spec.num_stages, divisible_by_16=spec.divisible_by_16,
                          dependent_launch=True)


@pytest.mark.parametrize("gated", [False, True])
def test_l1_kernel_prefetches_its_rows_before_waiting_for_x(gated):
    lines = _entry_lines(_l1_kernel({"prefetch_l2": True}, gated).ptx)
    prefetches = [i for i, line in enumerate(lines) for _ in PREFETCH.findall(line)]
    waits = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
    accesses = [i for i, line in enumerate(lines) if GLOBAL_ACCESS.search(line)]
    assert len(prefetches) == 2 and len(waits) == 1           # values and offsets; one wait, as every kernel has
    assert max(prefetches) < waits[0] < accesses[0]             # reads of x and the entries wait; the prefetch not


def test_l1_kernel_without_the_option_has_no_prefetch():
    lines = _entry_lines(_l1_kernel({}).ptx)
    assert not any(PREFETCH.search(line) for line in lines)
    waits = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
    assert len(waits) == 1 and waits[0] < min(i for i, line in enumerate(lines) if GLOBAL_ACCESS.search(line))


@pytest.mark.skipif(not X.GLUON_SHARED_GATHER, reason="this Triton's Gluon has no shared-memory gather")
@pytest.mark.parametrize("n,rows,gated", [(4096, 4, False), (22016, 8, True)])
def test_xshared_kernel_prefetches_the_first_and_each_next_row_block(n, rows, gated):
    def ptx(prefetch: bool) -> str:
        config = {**X.default_xshared_config(n, 4096, rows), "prefetch_l2": prefetch}
        constexprs = X.xshared_constexprs(4096, config, has_bias=False, has_residual=not gated,
                                          activation=0 if gated else None, out_rows=rows if gated else 1)
        return compile_kernel(X.chunked_csr_xshared_kernel, get_target("h100"), X.XSHARED_SIGNATURE, constexprs,
                              name=f"xshared_prefetch_{n}_{rows}_{prefetch}", num_warps=config["num_warps"],
                              num_stages=1, dependent_launch=True).ptx
    with_prefetch = _entry_lines(ptx(True))
    # two call sites (the first row block, before x's copy; the next one in the loop), values and offsets each
    assert sum(len(PREFETCH.findall(line)) for line in with_prefetch) == 4
    first_prefetch = min(i for i, line in enumerate(with_prefetch) if PREFETCH.search(line))
    first_shared_store = min(i for i, line in enumerate(with_prefetch) if re.search(r"\bst\.shared\b", line))
    assert first_prefetch < first_shared_store
    assert not PREFETCH.search(ptx(False))


def test_tune_tries_the_prefetch_on_hopper_only():
    plain = tune.chunked_csr_candidates(4096, 40, 1)
    hopper = tune.chunked_csr_candidates(4096, 40, 1, bulk_prefetch=True)
    assert not any(config.get("prefetch_l2") for config in plain)
    assert hopper[:len(plain)] == plain
    added = hopper[len(plain):]
    assert added and all(config["prefetch_l2"] and config["num_warps"] == 4 for config in added)
    assert {**plain[0], "prefetch_l2": True} in added                     # the default config among them
    assert len(added) == sum(config["num_warps"] == 4 for config in plain)
