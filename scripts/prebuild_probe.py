"""Build the probe kernels for NVIDIA targets on this (GPU-less) machine, for scripts/gpu_check_launcher.py.

    python scripts/prebuild_probe.py out/probe_kernels [--targets h100,a100] [--nvidia-ptxas cuda12|triton]

Writes DIR/<arch>/scale_rows.{json,cubin,ptx} (and copy_tiles*.* for sm_90+, scatter_tile.* where this triton's
Gluon has a shared-memory scatter) plus DIR/BUILT_WITH, so a GPU box
with another triton version, or none, can load and run exactly these code objects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import triton

from fdpp.codegen.build import compile_kernel
from fdpp.codegen.kernels import _probe, _probe_gluon
from fdpp.compiler.targets import TARGETS, get_target
from fdpp.runtime.kernel_binary import save_kernel

_TMA_MIN_CAPABILITY = 90   # device-side tensor descriptors need Hopper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--targets", default=",".join(t.name for t in TARGETS.values() if t.vendor == "cuda"))
    parser.add_argument("--nvidia-ptxas", choices=["cuda12", "triton"], default="cuda12")
    args = parser.parse_args()
    built_for = set()
    for target in (get_target(name) for name in args.targets.split(",")):
        if target.arch in built_for:
            continue  # targets sharing an arch share code objects
        built_for.add(target.arch)
        directory = args.out_dir / target.arch
        kernels = [compile_kernel(_probe.scale_rows_kernel, target, _probe.SIGNATURE, _probe.CONSTEXPRS,
                                  name="scale_rows", nvidia_ptxas=args.nvidia_ptxas)]
        if target.vendor == "cuda" and target.compute_capability >= _TMA_MIN_CAPABILITY:
            kernels += [compile_kernel(_probe.copy_tiles_kernel, target, _probe.COPY_TILES_SIGNATURE, constexprs,
                                       name=name, nvidia_ptxas=args.nvidia_ptxas)
                        for name, constexprs in (("copy_tiles", _probe.COPY_TILES_CONSTEXPRS),
                                                 ("copy_tiles_large", _probe.COPY_TILES_LARGE_CONSTEXPRS))]
        if target.vendor == "cuda" and _probe_gluon.GLUON_SHARED_SCATTER:
            kernels.append(compile_kernel(_probe_gluon.scatter_tile_kernel, target, _probe_gluon.SCATTER_TILE_SIGNATURE,
                                          _probe_gluon.SCATTER_TILE_CONSTEXPRS, name="scatter_tile",
                                          num_warps=_probe_gluon.SCATTER_TILE_WARPS, nvidia_ptxas=args.nvidia_ptxas))
        for kernel in kernels:
            save_kernel(kernel, directory)
            print(f"{directory}/{kernel.code_object_member}: {kernel.toolchain}, "
                  f"shared {kernel.shared_memory_bytes} bytes, scratch {[(s.name, s.bytes_per_program) for s in kernel.scratch if s.bytes_per_program]}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "BUILT_WITH").write_text(f"triton {triton.__version__}, nvidia_ptxas={args.nvidia_ptxas}\n")


if __name__ == "__main__":
    main()
