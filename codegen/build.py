"""Compile a triton kernel ahead of time for a `Target`, with no GPU present, into a `CompiledKernel`.

    kernel = compile_kernel(scale_rows_kernel, get_target("h200"), SIGNATURE, CONSTEXPRS, num_warps=4)

How triton's ahead-of-time API is used (same in triton 3.6 and 3.9):
- `ASTSource(fn, signature, constexprs, attrs)`: `signature` maps every argument name, in order, to a triton
  type ("*fp16", "i32", "fp32") or "constexpr"; `constexprs` maps names to values; `attrs` maps `(index,)` to
  `[["tt.divisibility", 16]]` for arguments compiled assuming 16-byte alignment (pointers) or a multiple of
  16 (ints). Divisibility keeps the argument in the ABI; the launcher checks the assumption.
- triton's JIT also turns an int argument equal to 1 into a constexpr, which removes it from the ABI. Here
  nothing is specialised implicitly: pass such a value in `constexprs` to get that.
- `triton.compile(src, target=GPUTarget(vendor, arch, warp_size), options=...)` runs the whole pipeline on the
  CPU: ptxas for NVIDIA comes with the triton wheel (backends/nvidia/bin), and the AMD backend links hsaco
  with the lld built into libtriton, so no CUDA or ROCm install is needed.

NVIDIA toolchain: triton 3.9 compiles sm_90 with its CUDA 13 ptxas ("ptxas-blackwell"), whose cubins use ELF
ABI version 8 and whose PTX is ISA 9.x, which older (CUDA 12) drivers cannot load or JIT. By default
(`nvidia_ptxas="cuda12"`) targets up to sm_90 are compiled with the CUDA 12 ptxas the same wheel ships, as
triton 3.6 does; `nvidia_ptxas="triton"` keeps triton's own choice.

Compiled kernels are cached on disk (`$FDPP_CACHE_DIR/kernels`, default ~/.cache/fdpp/kernels), keyed by
everything that changes the code object, so building a model for a second target recompiles only what
differs and building the same target twice compiles nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

try:    # Gluon kernels (explicit layouts and shared memory) compile through their own source class
    from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction
except ImportError:
    GluonASTSource = GluonJITFunction = None

from fdpp.compiler.errors import CompileError
from fdpp.compiler.targets import Target
from fdpp.runtime.kernel_binary import (
    SCALAR_TYPES, SCRATCH_NAMES, CompiledKernel, KernelParam, ScratchBuffer, load_kernel, save_kernel,
)

NvidiaPtxas = Literal["cuda12", "triton"]
# The newest arch the CUDA 12 ptxas in the triton wheel is pinned for; Blackwell keeps triton's choice.
_CUDA12_PTXAS_MAX_CAPABILITY = 90


class KernelCache:
    """Compiled kernels on disk, one directory per key; counts hits and misses for tests and logs."""

    def __init__(self, root: Path | None = None):
        default = Path(os.environ.get("FDPP_CACHE_DIR", Path.home() / ".cache" / "fdpp")) / "kernels"
        self.root = Path(root) if root is not None else default
        self.hits = 0
        self.misses = 0

    def load(self, key: str, name: str) -> CompiledKernel | None:
        entry = self.root / key
        if not (entry / f"{name}.json").is_file():
            self.misses += 1
            return None
        self.hits += 1
        return load_kernel(entry, name)

    def store(self, key: str, kernel: CompiledKernel) -> None:
        # Write beside the final place and rename, so a crash or a concurrent build never leaves half an entry.
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=self.root))
        save_kernel(kernel, staging)
        try:
            staging.rename(self.root / key)
        except OSError:  # another process stored the same key first; its entry is equally good
            shutil.rmtree(staging, ignore_errors=True)


def compile_kernel(
    fn: Any,
    target: Target,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
    divisible_by_16: Iterable[str] | None = None,
    nvidia_ptxas: NvidiaPtxas = "cuda12",
    dependent_launch: bool = False,
    cache: KernelCache | None = None,
) -> CompiledKernel:
    """Compile `fn` (a `@triton.jit` function) for `target`.

    `signature` gives the runtime arguments' triton types, `constexprs` the compile-time values; together they
    must name every argument of `fn` once. `divisible_by_16` names the arguments compiled assuming 16-byte
    alignment (None: every pointer). `name` (default: the function's name) names the bundle members.
    `dependent_launch` (sm_90 and later targets only) compiles a kernel that takes GRID_DEPENDENCY with it
    True and marks the code object for a programmatic dependent launch; otherwise such a kernel gets False.
    GRID_DEPENDENCY is set here, never passed in `constexprs`, so the flag and the code always agree.
    Returns a cached kernel when one with the same key exists; raises CompileError naming the kernel.
    """
    constexprs = dict(constexprs or {})
    name = name or fn.__name__
    if "GRID_DEPENDENCY" in constexprs:
        raise CompileError(f"kernel '{name}': pass dependent_launch, not a GRID_DEPENDENCY constexpr")
    if dependent_launch and not (takes_grid_dependency(fn) and target.dependent_launch):
        raise CompileError(f"kernel '{name}' cannot be launched as a programmatic dependent on {target.name}: "
                           f"that needs a kernel taking GRID_DEPENDENCY and an sm_90 or later target")
    if takes_grid_dependency(fn):
        constexprs["GRID_DEPENDENCY"] = dependent_launch
    full_signature = _triton_signature(fn, signature, constexprs)
    aligned = _aligned_params(fn, full_signature, divisible_by_16)
    attrs = {(fn.arg_names.index(arg),): [["tt.divisibility", 16]] for arg in aligned}
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True}
    cache = cache if cache is not None else KernelCache()

    with _toolchain(target, nvidia_ptxas) as (extra_options, toolchain):
        options.update(extra_options)
        key = _cache_key(fn, name, full_signature, constexprs, aligned, target, options, toolchain)
        cached = cache.load(key, name)
        if cached is not None:
            return cached
        source_class = GluonASTSource if GluonJITFunction and isinstance(fn, GluonJITFunction) else ASTSource
        source = source_class(fn, full_signature, constexprs=constexprs, attrs=attrs)
        gpu = GPUTarget(target.vendor, target.triton_arch, target.warp_size)
        try:
            compiled = triton.compile(source, target=gpu, options=options)
        except Exception as error:
            lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
            # Triton's message starts with the source position ("at 88:12:") and ends with the cause
            summary = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(error).__name__
            raise CompileError(f"triton failed to compile kernel '{name}' for {target.name} "
                               f"({target.arch}): {summary}") from error

    kernel = _to_compiled_kernel(compiled, name, target, full_signature, aligned, constexprs, toolchain,
                                 dependent_launch)
    cache.store(key, kernel)
    return kernel


def takes_grid_dependency(fn: Any) -> bool:
    """Whether the kernel declares GRID_DEPENDENCY, which by convention it passes to wait_for_producers as its
    first statement (tests/helpers.assert_kernels_wait_first checks every bundle kernel's PTX for that)."""
    return "GRID_DEPENDENCY" in fn.arg_names


def _triton_signature(fn: Any, signature: Mapping[str, str], constexprs: Mapping[str, Any]) -> dict[str, str]:
    """Every argument of `fn` in order, mapped to its triton type or "constexpr"; errors name the kernel."""
    kernel = fn.__name__
    arg_names = list(fn.arg_names)
    unknown = (set(signature) | set(constexprs)) - set(arg_names)
    if unknown:
        raise CompileError(f"kernel '{kernel}' has no argument(s) {sorted(unknown)}; it takes {arg_names}")
    for param in fn.params:
        if param.is_constexpr and param.name not in constexprs:
            raise CompileError(f"kernel '{kernel}': constexpr argument '{param.name}' needs a value in constexprs")
    result = {}
    for arg in arg_names:
        if arg in signature and arg in constexprs:
            raise CompileError(f"kernel '{kernel}': argument '{arg}' is both in the signature and a constexpr")
        if arg in constexprs:
            result[arg] = "constexpr"
            continue
        if arg not in signature:
            raise CompileError(f"kernel '{kernel}': argument '{arg}' has no type in the signature")
        kind = signature[arg]
        if not (kind.startswith("*") or kind in SCALAR_TYPES):
            raise CompileError(f"kernel '{kernel}': argument '{arg}' has unknown type '{kind}'; "
                               f"use '*<dtype>' or one of {sorted(SCALAR_TYPES)}")
        result[arg] = kind
    return result


def _aligned_params(fn: Any, full_signature: Mapping[str, str], divisible_by_16: Iterable[str] | None) -> list[str]:
    if divisible_by_16 is None:
        return [arg for arg, kind in full_signature.items() if kind.startswith("*")]
    aligned = list(divisible_by_16)
    for arg in aligned:
        kind = full_signature.get(arg)
        if kind is None or not (kind.startswith("*") or kind[0] in "iu"):
            raise CompileError(f"kernel '{fn.__name__}': divisible_by_16 names '{arg}', "
                               f"which is not a pointer or integer argument")
    return aligned


@contextlib.contextmanager
def _toolchain(target: Target, nvidia_ptxas: NvidiaPtxas) -> Iterator[tuple[dict, str]]:
    """Extra triton options and a one-line description of the toolchain, ptxas pinned while inside."""
    if target.vendor != "cuda":
        yield {}, f"triton {triton.__version__}"
        return
    from triton import knobs
    from triton.backends.nvidia import compiler as nvidia
    capability = target.compute_capability
    cuda12_ptxas = knobs.nvidia.ptxas
    with knobs.nvidia.scope():
        if nvidia_ptxas == "cuda12" and capability <= _CUDA12_PTXAS_MAX_CAPABILITY:
            knobs.nvidia.ptxas_blackwell = cuda12_ptxas.path
        ptxas = nvidia.get_ptxas(capability)
        # An explicit PTX version keeps triton's per-process caches (keyed by options) apart per ptxas.
        yield ({"ptx_version": nvidia.ptx_get_version(ptxas.version)},
               f"triton {triton.__version__}, ptxas {ptxas.version}")


def _cache_key(fn: Any, name: str, full_signature: Mapping[str, str], constexprs: Mapping[str, Any],
               aligned: list[str], target: Target, options: Mapping[str, Any], toolchain: str) -> str:
    text = json.dumps({
        "source": fn.cache_key, "name": name, "signature": full_signature,
        "constexprs": {k: repr(v) for k, v in sorted(constexprs.items())}, "aligned": sorted(aligned),
        "target": [target.vendor, target.arch, target.warp_size], "options": dict(sorted(options.items())),
        "toolchain": toolchain,
    }, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _to_compiled_kernel(compiled: Any, name: str, target: Target, full_signature: Mapping[str, str],
                        aligned: list[str], constexprs: Mapping[str, Any], toolchain: str,
                        dependent_launch: bool) -> CompiledKernel:
    """Read triton's metadata into fdpp's launch ABI, refusing features the fdpp launchers do not implement."""
    metadata = compiled.metadata
    where = f"kernel '{name}' for {target.name}"
    if getattr(metadata, "tensordesc_meta", None):
        raise CompileError(f"{where} uses tensor descriptors (TMA), which the fdpp launchers do not pass")
    if not hasattr(metadata, "profile_scratch_size"):
        raise CompileError(f"{where}: triton {triton.__version__} predates the profile_scratch argument; "
                           f"fdpp needs triton >= 3.5")
    warp_size = getattr(metadata, "warp_size", target.warp_size)
    if warp_size != target.warp_size:
        raise CompileError(f"{where}: triton compiled for warp size {warp_size}, the target has {target.warp_size}")
    return CompiledKernel(
        name=name, symbol=metadata.name, vendor=target.vendor, arch=target.arch,
        binary=bytes(compiled.asm[target.code_object_kind]),
        ptx=compiled.asm["ptx"] if target.vendor == "cuda" else None,
        num_warps=metadata.num_warps, warp_size=warp_size, shared_memory_bytes=metadata.shared,
        params=tuple(KernelParam(arg, kind, arg in aligned)
                     for arg, kind in full_signature.items() if kind != "constexpr"),
        # triton 3.6's AMD backend records no global_scratch size: it always passes a null pointer there.
        scratch=tuple(ScratchBuffer(scratch, getattr(metadata, f"{scratch}_size", 0),
                                    getattr(metadata, f"{scratch}_align", 1)) for scratch in SCRATCH_NAMES),
        num_ctas=getattr(metadata, "num_ctas", 1),
        cooperative=bool(getattr(metadata, "launch_cooperative_grid", False)),
        programmatic_dependent_launch=dependent_launch,
        constexprs={k: v if isinstance(v, (bool, int, float, str)) else repr(v) for k, v in constexprs.items()},
        toolchain=toolchain,
    )
