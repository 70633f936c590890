"""One model compiled for every target in one invocation, on this GPU-less machine: each bundle's code
objects are ELF for its vendor and arch, the weights are the same bytes in every bundle (cast and
serialised once), and every bundle runs and agrees on the CPU."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

import fdpp
from fdpp.codegen.elf import read_elf_arch
from fdpp.compiler.driver import compile_for_targets
from fdpp.compiler.options import CompileOptions
from fdpp.compiler.targets import TARGETS
from fdpp.runtime.bundle import read_bundle
from helpers import assert_kernels_wait_first, tiny_llama


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("targets")
    _, directory = tiny_llama(tmp)
    outputs = [tmp / f"tiny-{name}.fdpp" for name in TARGETS]
    options = CompileOptions(dtype="float16", max_batch=4, max_seq_len=64, prefill_chunk=16)
    return dict(zip(TARGETS, compile_for_targets(str(directory), list(TARGETS), outputs, options)))


def test_every_code_object_is_elf_for_its_target(bundles):
    for name, path in bundles.items():
        bundle = read_bundle(path)
        target = TARGETS[name]
        assert bundle.manifest.target["name"] == name
        assert bundle.manifest.kernels, f"{name}: no kernels"
        for meta in bundle.manifest.kernels:
            code = bundle.member_bytes("kernels/" + meta["code_object"])
            assert read_elf_arch(code) == (target.vendor, target.arch), f"{name}: {meta['name']}"
            assert (meta["ptx"] is not None) == (target.vendor == "cuda")


def test_weights_are_shared_bytes_and_bundles_agree(bundles):
    digests = {}
    tokens = {}
    for name, path in bundles.items():
        bundle = read_bundle(path)
        digests[name] = {m: d for m, d in bundle.manifest.members.items() if m.startswith("weights/")}
        tokens[name] = fdpp.load(path).generate([[5, 6, 7], [9]], max_new_tokens=4).token_ids
    first = next(iter(digests.values()))
    assert first and all(d == first for d in digests.values())
    assert all(t == next(iter(tokens.values())) for t in tokens.values())


def test_sm90_kernels_wait_for_the_kernel_before_and_are_marked_for_dependent_launch(bundles):
    """Every kernel of a Hopper bundle waits for the kernel before it ahead of any global memory access and is
    launched dependent; no other target's kernel carries either (griddepcontrol does not exist before sm_90)."""
    for name, path in bundles.items():
        if TARGETS[name].dependent_launch:
            assert assert_kernels_wait_first(path) > 0
            continue
        bundle = read_bundle(path)
        for meta in bundle.manifest.kernels:
            assert not meta["programmatic_dependent_launch"], f"{name}: {meta['name']}"
            assert meta["constexprs"]["GRID_DEPENDENCY"] is False, f"{name}: {meta['name']}"
            if meta["ptx"] is not None:
                assert "griddepcontrol" not in bundle.member_bytes("kernels/" + meta["ptx"]).decode()
    assert {name for name in bundles if TARGETS[name].dependent_launch} == {"h100", "h200"}
