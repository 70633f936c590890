"""A compiled kernel as data: its code object and its launch ABI, readable without triton or the compiler.

The compiler side (`codegen/build.py`) produces a `CompiledKernel`; the bundle stores its `to_json()` next to
the code object (`kernels/<name>.cubin|hsaco`, plus `<name>.ptx` on NVIDIA); the launchers
(`runtime/cuda_launcher.py`, `runtime/hip_launcher.py`) read it back and call the driver API directly.

The ABI is triton's (checked in triton 3.6 and 3.9, NVIDIA and AMD): the kernel's parameters in source order
with constexprs removed, then two trailing pointers that triton appends to every kernel, `global_scratch` and
`profile_scratch`. Each scratch buffer is `bytes_per_program * programs * num_ctas` bytes, or a null pointer
when its size is 0 (the usual case). The block has `warp_size * num_warps` threads in x.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fdpp.runtime.errors import BundleError, FdppError

METADATA_VERSION = 1

# triton scalar type -> (C type in the kernel's prototype, bytes). Pointers are "*<elem>" and take 8 bytes.
SCALAR_TYPES: dict[str, tuple[str, int]] = {
    "i1": ("int8_t", 1), "u1": ("uint8_t", 1),
    "i8": ("int8_t", 1), "i16": ("int16_t", 2), "i32": ("int32_t", 4), "i64": ("int64_t", 8),
    "u8": ("uint8_t", 1), "u16": ("uint16_t", 2), "u32": ("uint32_t", 4), "u64": ("uint64_t", 8),
    "fp16": ("half", 2), "bf16": ("bfloat16", 2), "fp32": ("float", 4), "fp64": ("double", 8),
}
SCRATCH_NAMES = ("global_scratch", "profile_scratch")


class LaunchError(FdppError, RuntimeError):
    """A kernel that cannot be loaded or launched; the message names the kernel."""


@dataclass(frozen=True)
class KernelParam:
    """One runtime parameter of the kernel, in launch order."""

    name: str
    type: str                   # triton type: "*fp16" (pointer to fp16), "i32", "fp32", ...
    divisible_by_16: bool = False  # compiled assuming the address (pointer) or value (int) is a multiple of 16

    @property
    def is_pointer(self) -> bool:
        return self.type.startswith("*")

    @property
    def c_type(self) -> str:
        return "void*" if self.is_pointer else SCALAR_TYPES[self.type][0]


@dataclass(frozen=True)
class ScratchBuffer:
    """A trailing pointer triton appends; null when `bytes_per_program` is 0."""

    name: str                   # "global_scratch" | "profile_scratch"
    bytes_per_program: int
    align: int

    def bytes_for(self, programs: int, num_ctas: int) -> int:
        return self.bytes_per_program * programs * num_ctas


@dataclass(frozen=True)
class CompiledKernel:
    """One specialisation of one kernel for one GPU architecture. `binary` is the cubin or hsaco."""

    name: str                   # unique within a bundle; names the member files
    symbol: str                 # the entry point's name inside the code object
    vendor: str                 # "cuda" | "hip"
    arch: str                   # "sm_90" | "gfx942" ...
    binary: bytes = field(repr=False)
    ptx: str | None = field(repr=False)  # NVIDIA: lets a newer GPU of the same vendor JIT the kernel
    num_warps: int
    warp_size: int
    shared_memory_bytes: int    # dynamic shared memory (NVIDIA) / LDS (AMD) to request at launch
    params: tuple[KernelParam, ...]
    scratch: tuple[ScratchBuffer, ...]
    num_ctas: int = 1           # cluster size in x (NVIDIA Hopper+); 1 means no cluster launch
    cooperative: bool = False   # needs a cooperative-grid launch
    programmatic_dependent_launch: bool = False
    constexprs: dict[str, Any] = field(default_factory=dict)  # the specialisation, for `fdcc inspect`
    toolchain: str = ""         # "triton 3.9.0, ptxas 12.9", to explain a load failure on an old driver

    @property
    def code_object_kind(self) -> str:
        return "cubin" if self.vendor == "cuda" else "hsaco"

    @property
    def code_object_member(self) -> str:
        return f"{self.name}.{self.code_object_kind}"

    @property
    def ptx_member(self) -> str | None:
        return f"{self.name}.ptx" if self.ptx is not None else None

    @property
    def block_threads(self) -> int:
        return self.warp_size * self.num_warps

    def to_json(self) -> dict:
        """Metadata only; the code object and PTX are separate members named by `*_member`."""
        return {
            "metadata_version": METADATA_VERSION,
            "name": self.name, "symbol": self.symbol, "vendor": self.vendor, "arch": self.arch,
            "code_object": self.code_object_member,
            "code_object_sha256": hashlib.sha256(self.binary).hexdigest(),
            "ptx": self.ptx_member,
            "num_warps": self.num_warps, "warp_size": self.warp_size,
            "shared_memory_bytes": self.shared_memory_bytes,
            "params": [{"name": p.name, "type": p.type, "divisible_by_16": p.divisible_by_16}
                       for p in self.params],
            "scratch": [{"name": s.name, "bytes_per_program": s.bytes_per_program, "align": s.align}
                        for s in self.scratch],
            "num_ctas": self.num_ctas, "cooperative": self.cooperative,
            "programmatic_dependent_launch": self.programmatic_dependent_launch,
            "constexprs": self.constexprs, "toolchain": self.toolchain,
        }

    @classmethod
    def from_json(cls, meta: dict, binary: bytes, ptx: str | None = None) -> CompiledKernel:
        """Inverse of `to_json`; checks the code object against its recorded sha256."""
        name = meta.get("name", "?")
        if meta.get("metadata_version") != METADATA_VERSION:
            raise BundleError(f"kernel '{name}': metadata version {meta.get('metadata_version')!r} is not "
                              f"{METADATA_VERSION}; rebuild the bundle with this fdpp version")
        try:
            if hashlib.sha256(binary).hexdigest() != meta["code_object_sha256"]:
                raise BundleError(f"kernel '{name}': code object does not match its sha256; the bundle is corrupted")
            if (meta["ptx"] is None) != (ptx is None):
                raise BundleError(f"kernel '{name}': PTX member {'missing' if ptx is None else 'unexpected'}")
            params = tuple(KernelParam(p["name"], p["type"], p["divisible_by_16"]) for p in meta["params"])
            for p in params:
                if not p.is_pointer and p.type not in SCALAR_TYPES:
                    raise BundleError(f"kernel '{name}': parameter '{p.name}' has unknown type '{p.type}'")
            return cls(
                name=meta["name"], symbol=meta["symbol"], vendor=meta["vendor"], arch=meta["arch"],
                binary=binary, ptx=ptx, num_warps=meta["num_warps"], warp_size=meta["warp_size"],
                shared_memory_bytes=meta["shared_memory_bytes"], params=params,
                scratch=tuple(ScratchBuffer(s["name"], s["bytes_per_program"], s["align"]) for s in meta["scratch"]),
                num_ctas=meta["num_ctas"], cooperative=meta["cooperative"],
                programmatic_dependent_launch=meta["programmatic_dependent_launch"],
                constexprs=meta["constexprs"], toolchain=meta["toolchain"])
        except KeyError as missing:
            raise BundleError(f"kernel '{name}': metadata misses field {missing}") from None


def save_kernel(kernel: CompiledKernel, directory: Path) -> list[Path]:
    """Write `<name>.json`, the code object and the PTX into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{kernel.name}.json", directory / kernel.code_object_member]
    paths[0].write_text(json.dumps(kernel.to_json(), indent=1, sort_keys=True))
    paths[1].write_bytes(kernel.binary)
    if kernel.ptx is not None:
        paths.append(directory / kernel.ptx_member)
        paths[-1].write_text(kernel.ptx)
    return paths


def load_kernel(directory: Path, name: str) -> CompiledKernel:
    """Read back what `save_kernel` wrote."""
    meta_path = directory / f"{name}.json"
    if not meta_path.is_file():
        raise BundleError(f"kernel '{name}': no {meta_path}")
    meta = json.loads(meta_path.read_text())
    ptx = (directory / meta["ptx"]).read_text() if meta.get("ptx") else None
    return CompiledKernel.from_json(meta, (directory / meta["code_object"]).read_bytes(), ptx)


class PackedArguments:
    """The host-side `void**` array a driver launch takes, refilled in place for every launch.

    Every argument gets an 8-byte zero-filled slot: the driver copies only as many bytes as the parameter's
    size, little-endian, so one slot width serves every type. The driver copies the values during the launch
    call (also while a CUDA graph captures), so refilling the slots for the next launch is safe; one
    instance must not be shared between threads.
    """

    def __init__(self, kernel: CompiledKernel):
        self.kernel = kernel
        self.count = len(kernel.params) + len(kernel.scratch)
        self._slots = (ctypes.c_uint64 * self.count)()
        base = ctypes.addressof(self._slots)
        self._pointers = (ctypes.c_void_p * self.count)(*(base + 8 * i for i in range(self.count)))

    @property
    def address(self) -> int:
        """The `void**` to pass as kernelParams."""
        return ctypes.addressof(self._pointers)

    def fill(self, args: Sequence[Any], scratch_pointers: Sequence[int]) -> None:
        """Pack `args` (one per `kernel.params`) and the scratch pointers; errors name kernel and parameter."""
        params = self.kernel.params
        if len(args) != len(params):
            raise LaunchError(f"kernel '{self.kernel.name}' takes {len(params)} arguments "
                              f"({', '.join(p.name for p in params)}), got {len(args)}")
        for i, (param, value) in enumerate(zip(params, args)):
            self._slots[i] = _encode(self.kernel.name, param, value)
        for i, pointer in enumerate(scratch_pointers, start=len(params)):
            self._slots[i] = pointer


def _encode(kernel_name: str, param: KernelParam, value: Any) -> int:
    """One argument as the unsigned 64-bit pattern whose low bytes the kernel reads."""
    where = f"kernel '{kernel_name}', parameter '{param.name}' ({param.type})"
    if param.is_pointer:
        address = _address_of(value, where)
        if param.divisible_by_16 and address % 16:
            raise LaunchError(f"{where}: address {address:#x} is not 16-byte aligned, which the kernel assumes")
        return address
    kind = param.type
    if kind in ("fp16", "bf16", "fp32", "fp64"):
        return _float_bits(kind, float(value))
    integer = int(value)
    bits = SCALAR_TYPES[kind][1] * 8
    signed = kind.startswith("i") and kind != "i1"
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if kind in ("i1", "u1"):
        low, high = 0, 1
    if not low <= integer <= high:
        raise LaunchError(f"{where}: value {integer} is out of range")
    if param.divisible_by_16 and integer % 16:
        raise LaunchError(f"{where}: value {integer} is not a multiple of 16, which the kernel assumes")
    return integer & ((1 << bits) - 1)


def _address_of(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    device = getattr(value, "device", None)
    if device is not None and getattr(device, "type", "cuda") == "cpu":
        raise LaunchError(f"{where}: got a CPU tensor; the kernel needs GPU memory")
    try:
        return int(value.data_ptr())
    except AttributeError:
        raise LaunchError(f"{where}: expected a tensor, an int address or None, got {type(value).__name__}") from None


def _float_bits(kind: str, value: float) -> int:
    if kind == "fp16":
        return struct.unpack("<H", struct.pack("<e", value))[0]
    if kind == "fp64":
        return struct.unpack("<Q", struct.pack("<d", value))[0]
    bits32 = struct.unpack("<I", struct.pack("<f", value))[0]
    if kind == "fp32":
        return bits32
    # bf16: the top half of the fp32 pattern, rounded to nearest even
    return ((bits32 + 0x7FFF + ((bits32 >> 16) & 1)) >> 16) & 0xFFFF
