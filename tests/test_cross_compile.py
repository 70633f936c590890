"""Cross-compilation on a machine without a GPU: every target's code object is valid ELF for its arch.

Also the launch ABI recorded with it, the on-disk kernel cache, the JSON round trip, and the host-side
argument packing the launchers use (the part of a launch that needs no GPU).
"""

from __future__ import annotations

import ctypes
import json
import re
import struct

import pytest

from fdpp.codegen.build import KernelCache, compile_kernel
from fdpp.codegen.elf import EM_AMDGPU, EM_CUDA, function_symbols, read_elf_arch
from fdpp.codegen.kernels import _probe, _probe_gluon
from fdpp.compiler.errors import CompileError
from fdpp.compiler.targets import TARGETS, get_target
from fdpp.runtime.dims import always_multiple_of
from fdpp.runtime.errors import BundleError
from fdpp.runtime.kernel_binary import CompiledKernel, LaunchError, PackedArguments, load_kernel, save_kernel

# EF_AMDGPU_MACH_AMDGCN_* from LLVM's ELF.h, restated so the test does not just trust codegen/elf.py.
EXPECTED_AMDGPU_MACH = {"gfx90a": 0x3F, "gfx942": 0x4C, "gfx1100": 0x41}
RUNTIME_PARAMS = [("x_ptr", "*fp16"), ("scale_ptr", "*fp32"), ("out_ptr", "*fp16"),
                  ("n_cols", "i32"), ("row_stride", "i64"), ("alpha", "fp32")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> KernelCache:
    return KernelCache(tmp_path_factory.mktemp("kernel-cache"))


def build_probe(target_name: str, cache: KernelCache, **options) -> CompiledKernel:
    return compile_kernel(_probe.scale_rows_kernel, get_target(target_name), _probe.SIGNATURE, _probe.CONSTEXPRS,
                          name="scale_rows", cache=cache, **options)


@pytest.mark.skipif(not _probe_gluon.GLUON_SHARED_SCATTER, reason="this triton's Gluon has no shared-memory scatter")
def test_gluon_kernels_build_through_compile_kernel(cache):
    """A Gluon kernel (explicit layouts, a shared-memory tile and its scatter) compiles through the same path as
    the others into an sm_90 code object with its launch metadata."""
    kernel = compile_kernel(_probe_gluon.scatter_tile_kernel, get_target("h100"), _probe_gluon.SCATTER_TILE_SIGNATURE,
                            _probe_gluon.SCATTER_TILE_CONSTEXPRS, name="scatter_tile", cache=cache,
                            num_warps=_probe_gluon.SCATTER_TILE_WARPS)
    c = _probe_gluon.SCATTER_TILE_CONSTEXPRS
    assert read_elf_arch(kernel.binary) == ("cuda", "sm_90") and kernel.symbol in function_symbols(kernel.binary)
    assert kernel.shared_memory_bytes >= c["ROWS"] * c["COLUMNS"] * 2            # the fp16 tile
    assert [p.name for p in kernel.params] == list(_probe_gluon.SCATTER_TILE_SIGNATURE)
    assert "st.shared.b16" in kernel.ptx                                         # the scattered entries


def elf_header_fields(data: bytes) -> tuple[int, int, int]:
    """(e_machine, e_flags, EI_ABIVERSION), read independently of codegen/elf.py."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a little-endian ELF64 file"
    return struct.unpack_from("<H", data, 18)[0], struct.unpack_from("<I", data, 48)[0], data[8]


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_code_object_is_elf_for_the_target(target_name, cache):
    target = TARGETS[target_name]
    kernel = build_probe(target_name, cache)
    machine, flags, abi_version = elf_header_fields(kernel.binary)
    if target.vendor == "cuda":
        assert machine == EM_CUDA == 190
        sm = flags & 0xFF if abi_version <= 7 else (flags >> 8) & 0xFF
        assert sm == target.compute_capability
        assert re.search(rf"^\.target sm_{target.compute_capability}a?\b", kernel.ptx, re.MULTILINE)
        assert re.search(rf"\.entry {kernel.symbol}\(", kernel.ptx)
    else:
        assert machine == EM_AMDGPU == 224
        assert flags & 0xFF == EXPECTED_AMDGPU_MACH[target.arch]
        assert kernel.ptx is None
    assert read_elf_arch(kernel.binary) == (target.vendor, target.arch)
    assert kernel.symbol == "scale_rows_kernel" and kernel.symbol in function_symbols(kernel.binary)
    assert (kernel.vendor, kernel.arch, kernel.warp_size) == (target.vendor, target.arch, target.warp_size)


@pytest.mark.parametrize("target_name", ["h100", "mi300x"])
def test_launch_abi_drops_constexprs_and_appends_scratch(target_name, cache):
    kernel = build_probe(target_name, cache)
    assert [(p.name, p.type) for p in kernel.params] == RUNTIME_PARAMS      # BLOCK is gone
    assert [p.divisible_by_16 for p in kernel.params] == [True] * 3 + [False] * 3
    assert [s.name for s in kernel.scratch] == ["global_scratch", "profile_scratch"]
    assert all(s.bytes_per_program == 0 for s in kernel.scratch)           # passed as null pointers
    assert kernel.num_warps == 4 and kernel.num_ctas == 1 and kernel.constexprs == {"BLOCK": 256}
    assert kernel.block_threads == TARGETS[target_name].warp_size * 4


def test_nvidia_ptxas_choice_changes_the_elf_layout_not_the_arch(cache):
    portable = build_probe("h100", cache)                          # CUDA 12 ptxas: ELF ABI 7, SM in bits 0-7
    native = build_probe("h100", cache, nvidia_ptxas="triton")    # triton 3.9 picks CUDA 13 ptxas for sm_90
    assert "ptxas 12." in portable.toolchain and elf_header_fields(portable.binary)[2] == 7
    assert read_elf_arch(native.binary) == ("cuda", "sm_90")
    if "ptxas 13." in native.toolchain:
        assert elf_header_fields(native.binary)[2] == 8


def test_cache_hits_on_disk_and_second_target_reuses_shared_arch(tmp_path):
    first = KernelCache(tmp_path)
    built = build_probe("h100", first)
    build_probe("h200", first)                                    # same arch: a hit, no compile
    assert (first.misses, first.hits) == (1, 1)
    again = KernelCache(tmp_path)                                 # a new process would see the same files
    assert build_probe("h100", again).binary == built.binary and again.hits == 1
    build_probe("a100", again)                                    # another arch compiles
    assert again.misses == 1


def test_compiled_kernel_json_round_trip(tmp_path, cache):
    for target_name in ("h100", "mi300x"):
        kernel = build_probe(target_name, cache)
        meta = json.loads(json.dumps(kernel.to_json()))
        assert "binary" not in meta and meta["code_object"] == kernel.code_object_member
        assert CompiledKernel.from_json(meta, kernel.binary, kernel.ptx) == kernel
        save_kernel(kernel, tmp_path / target_name)
        assert load_kernel(tmp_path / target_name, kernel.name) == kernel
    with pytest.raises(BundleError, match="sha256"):
        CompiledKernel.from_json(meta, kernel.binary[:-1] + bytes([kernel.binary[-1] ^ 1]), None)


def test_signature_errors_name_the_kernel(cache):
    target = get_target("a100")
    with pytest.raises(CompileError, match="scale_rows_kernel.*'alpha' has no type"):
        compile_kernel(_probe.scale_rows_kernel, target, {k: v for k, v in _probe.SIGNATURE.items() if k != "alpha"},
                       _probe.CONSTEXPRS, cache=cache)
    with pytest.raises(CompileError, match="constexpr argument 'BLOCK'"):
        compile_kernel(_probe.scale_rows_kernel, target, _probe.SIGNATURE, {}, cache=cache)
    with pytest.raises(CompileError, match="no argument"):
        compile_kernel(_probe.scale_rows_kernel, target, {**_probe.SIGNATURE, "beta": "fp32"}, _probe.CONSTEXPRS,
                       cache=cache)


def test_arguments_pack_into_the_slots_the_driver_reads(cache):
    kernel = build_probe("h100", cache)
    packed = PackedArguments(kernel)
    packed.fill([0x1000, 0x2000, 0x3000, -5, 1 << 40, 0.5], [0, 0])
    slot_addresses = ctypes.cast(packed.address, ctypes.POINTER(ctypes.c_void_p))   # the void** the driver gets
    values = [ctypes.c_uint64.from_address(slot_addresses[i]).value for i in range(packed.count)]
    assert values[:3] == [0x1000, 0x2000, 0x3000]
    assert values[3] == (-5) & 0xFFFFFFFF                         # i32, two's complement in the low 4 bytes
    assert values[4] == 1 << 40                                   # i64
    assert values[5] == struct.unpack("<I", struct.pack("<f", 0.5))[0]
    assert values[6:] == [0, 0]                                   # global_scratch, profile_scratch
    with pytest.raises(LaunchError, match="'x_ptr'.*not 16-byte aligned"):
        packed.fill([0x1002, 0x2000, 0x3000, 1, 1, 1.0], [0, 0])
    with pytest.raises(LaunchError, match="'n_cols'.*out of range"):
        packed.fill([0x1000, 0x2000, 0x3000, 1 << 31, 1, 1.0], [0, 0])
    with pytest.raises(LaunchError, match="takes 6 arguments"):
        packed.fill([0x1000], [0, 0])


def test_elf_reader_rejects_what_is_not_a_gpu_code_object():
    with pytest.raises(ValueError, match="not an ELF"):
        read_elf_arch(b"PK\x03\x04" + bytes(100))


@pytest.mark.parametrize("expr,expected", [
    (48, True), (8, False), ("4096 * capacity", True), ("seq * 12288", True), ("seq * 12", False), ("rows", False),
    ("cdiv(rows, 16)", False), ("16 * a + 32", True), ("16 * a + 3", False), ("capacity * 64 - 16 * seq", True)])
def test_size_expressions_provably_multiples_of_16(expr, expected):
    assert always_multiple_of(expr, 16) is expected


def test_launch_hints_strides_that_are_multiples_of_16_whatever_the_sizes():
    """A cache stride such as "4096 * capacity" is hinted divisible like a static 4096 (as Triton's JIT would
    see it at run time), so loads through it vectorise; "rows" and odd products are not."""
    from fdpp.codegen.kernels.rotary import rotary_kernel
    from fdpp.codegen.launch_specs import _Builder

    builder = _Builder()
    builder.launch(rotary_kernel, ("rows",), [("x_ptr", "*fp16", "x"), ("a", "i32", "4096 * capacity"),
                                              ("b", "i32", "seq * 12"), ("c", "i32", "rows"), ("d", "i32", 64),
                                              ("e", "i32", 0)], {})
    (spec,) = builder.out.specs.values()
    assert spec.divisible_by_16 == ("x_ptr", "a", "d")


def test_dependent_launch_is_refused_where_it_cannot_work(cache):
    from fdpp.codegen.kernels.rms_norm import rms_norm_kernel
    signature = {"x_ptr": "*fp16", "residual_ptr": "*fp16", "weight_ptr": "*fp16", "bias_ptr": "*fp16",
                 "out_ptr": "*fp16", "new_residual_ptr": "*fp16", "hidden": "i32", "x_row_stride": "i32",
                 "residual_row_stride": "i32", "eps": "fp32"}
    constexprs = {"HAS_RESIDUAL": False, "HAS_BIAS": False, "BLOCK_H": 64, "OUT_ROWS": 1}
    with pytest.raises(CompileError, match="sm_90 or later"):           # no griddepcontrol before Hopper
        compile_kernel(rms_norm_kernel, get_target("a100"), signature, constexprs, dependent_launch=True, cache=cache)
    with pytest.raises(CompileError, match="taking GRID_DEPENDENCY"):   # a kernel without the wait
        build_probe("h100", cache, dependent_launch=True)
    with pytest.raises(CompileError, match="pass dependent_launch"):    # flag and code could disagree
        compile_kernel(rms_norm_kernel, get_target("h100"), signature, {**constexprs, "GRID_DEPENDENCY": True},
                       cache=cache)
    kernel = compile_kernel(rms_norm_kernel, get_target("h100"), signature, constexprs, dependent_launch=True,
                            cache=cache)
    assert kernel.programmatic_dependent_launch and kernel.constexprs["GRID_DEPENDENCY"] is True
