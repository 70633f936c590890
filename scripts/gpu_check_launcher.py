"""Check runtime/cuda_launcher.py on an NVIDIA GPU: the probe kernels against torch, eagerly and in a CUDA graph.

    python scripts/gpu_check_launcher.py                              # compile here with the local triton
    python scripts/gpu_check_launcher.py --from-dir out/probe_kernels # code objects from prebuild_probe.py
    python scripts/gpu_check_launcher.py --from-dir DIR --arch sm_80  # another arch's build: exercises PTX JIT

With --from-dir nothing imports triton, which proves a bundle's kernels run where triton is absent or another
version. Prints one PASS/FAIL line per check and a last line PASS or FAIL; exits 1 on any failure.
Not part of CI: it needs a GPU and cuda-python.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Callable

import torch

from fdpp.runtime.cuda_launcher import CudaKernel, cuda_driver
from fdpp.runtime.kernel_binary import CompiledKernel, LaunchError, load_kernel

_TMA_MIN_CAPABILITY = 90
SCALE_ROWS_SHAPES = [(1, 1, 1), (7, 97, 128), (33, 256, 300), (54, 255, 255)]   # (rows, n_cols, row_stride)
COPY_TILES_SHAPES = [(1, 8), (32, 64), (97, 200), (300, 520)]                     # (rows, cols), cols % 8 == 0
KERNEL_NAMES = ("scale_rows", "copy_tiles", "copy_tiles_large", "scatter_tile")
SCATTER_TILE = {"ROWS": 64, "ENTRIES": 32, "COLUMNS": 128}     # codegen/kernels/_probe_gluon.py, restated
ALPHA = 0.37


def scale_rows_expected(x: torch.Tensor, scale: torch.Tensor, alpha: float) -> torch.Tensor:
    # The meaning of _probe.scale_rows_kernel, restated here so --from-dir runs without importing triton.
    return (x.float() * scale[:, None] * alpha).to(torch.float16)


def load_kernels(args: argparse.Namespace, arch: str) -> dict[str, CompiledKernel]:
    if args.from_dir is not None:
        directory = args.from_dir / (args.arch or arch)
        if not directory.is_dir():
            sys.exit(f"FAIL: no {directory}; build it with scripts/prebuild_probe.py")
        print(f"kernels from {directory} ({(args.from_dir / 'BUILT_WITH').read_text().strip()})")
        return {name: load_kernel(directory, name) for name in KERNEL_NAMES
                if (directory / f"{name}.json").is_file()}
    from fdpp.codegen.build import compile_kernel
    from fdpp.codegen.kernels import _probe
    from fdpp.compiler.targets import TARGETS
    matching = [t for t in TARGETS.values() if t.arch == (args.arch or arch)]
    if not matching:
        sys.exit(f"FAIL: no fdpp target has arch {args.arch or arch}; pass --arch")
    target = matching[0]
    kernels = {"scale_rows": compile_kernel(_probe.scale_rows_kernel, target, _probe.SIGNATURE, _probe.CONSTEXPRS,
                                            name="scale_rows", nvidia_ptxas=args.nvidia_ptxas)}
    if target.compute_capability >= _TMA_MIN_CAPABILITY:
        for name, constexprs in (("copy_tiles", _probe.COPY_TILES_CONSTEXPRS),
                                 ("copy_tiles_large", _probe.COPY_TILES_LARGE_CONSTEXPRS)):
            kernels[name] = compile_kernel(_probe.copy_tiles_kernel, target, _probe.COPY_TILES_SIGNATURE,
                                           constexprs, name=name, nvidia_ptxas=args.nvidia_ptxas)
    return kernels


def check_scale_rows(kernel: CudaKernel) -> str:
    for rows, n_cols, row_stride in SCALE_ROWS_SHAPES:
        x = torch.randn(rows, row_stride, device="cuda", dtype=torch.float16)[:, :n_cols]
        scale = torch.randn(rows, device="cuda")
        out = torch.full((rows, n_cols), float("nan"), device="cuda", dtype=torch.float16)  # poisoned
        kernel((rows,), x, scale, out, n_cols, row_stride, ALPHA)
        torch.testing.assert_close(out, scale_rows_expected(x, scale, ALPHA), rtol=1e-3, atol=1e-3)
    return f"{len(SCALE_ROWS_SHAPES)} shapes"


def check_scale_rows_graph(kernel: CudaKernel) -> str:
    rows, n_cols, row_stride = 33, 200, 256
    x = torch.randn(rows, row_stride, device="cuda", dtype=torch.float16)
    scale = torch.randn(rows, device="cuda")
    out = torch.empty(rows, n_cols, device="cuda", dtype=torch.float16)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernel((rows,), x, scale, out, n_cols, row_stride, ALPHA)
    for _ in range(3):  # new inputs in the captured buffers each replay
        x.copy_(torch.randn_like(x))
        scale.copy_(torch.randn_like(scale))
        out.fill_(float("nan"))
        graph.replay()
        torch.testing.assert_close(out, scale_rows_expected(x[:, :n_cols], scale, ALPHA), rtol=1e-3, atol=1e-3)
    return "3 replays"


def check_misaligned_pointer_refused(kernel: CudaKernel) -> str:
    x = torch.randn(4, 64, device="cuda", dtype=torch.float16)
    try:
        kernel((3,), x.view(-1)[1:], torch.ones(4, device="cuda"), x, 32, 64, ALPHA)
    except LaunchError as error:
        return f"refused: {error}"
    raise AssertionError("a 2-byte-offset pointer to a divisible_by_16 parameter was launched")


def copy_grid(kernel: CudaKernel, rows: int, cols: int) -> tuple[int, int]:
    # the tile sizes it was compiled with are recorded in its constexprs
    block_rows, block_cols = kernel.kernel.constexprs["BLOCK_ROWS"], kernel.kernel.constexprs["BLOCK_COLS"]
    return (-(-rows // block_rows), -(-cols // block_cols))


def check_copy_tiles(kernel: CudaKernel) -> str:
    for rows, cols in COPY_TILES_SHAPES:
        x = torch.randn(rows, cols, device="cuda", dtype=torch.float16)
        out = torch.full_like(x, float("nan"))
        kernel(copy_grid(kernel, rows, cols), x, out, rows, cols)
        torch.testing.assert_close(out, x, rtol=0, atol=0)
    scratch = [(s.name, s.bytes_per_program) for s in kernel.kernel.scratch if s.bytes_per_program]
    return f"{len(COPY_TILES_SHAPES)} shapes, shared {kernel.kernel.shared_memory_bytes} bytes, scratch {scratch}"


def check_scatter_tile(kernel: CudaKernel) -> str:
    """Gluon's shared-memory scatter (built where triton has it): dense rows from (value, column) entries."""
    rows, entries, columns = 4 * SCATTER_TILE["ROWS"], SCATTER_TILE["ENTRIES"], SCATTER_TILE["COLUMNS"]
    picked = torch.rand(rows, columns).argsort(dim=1)[:, :entries].to(torch.int32)        # distinct per row
    values = (torch.rand(rows, entries) + 0.5).half()                                     # no zeros
    expected = torch.zeros(rows, columns, dtype=torch.float16).scatter_(1, picked.long(), values)
    out = torch.full((rows, columns), float("nan"), device="cuda", dtype=torch.float16)
    kernel((rows // SCATTER_TILE["ROWS"],), values.cuda(), picked.cuda(), out)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)
    return f"{rows} rows, shared {kernel.kernel.shared_memory_bytes} bytes"


def check_copy_tiles_graph(kernel: CudaKernel) -> str:
    rows, cols = 97, 200
    x = torch.randn(rows, cols, device="cuda", dtype=torch.float16)
    out = torch.empty_like(x)
    kernel.reserve_scratch(copy_grid(kernel, rows, cols))   # the graph may not allocate
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernel(copy_grid(kernel, rows, cols), x, out, rows, cols)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    return "replayed with reserved scratch"


def run_check(name: str, check: Callable[[CudaKernel], str], kernel: CudaKernel) -> bool:
    try:
        detail = check(kernel)
        torch.cuda.synchronize()
        print(f"PASS {name}: {detail}")
        return True
    except Exception as error:  # report every check, not only the first failure
        print(f"FAIL {name}: {type(error).__name__}: {str(error).strip().splitlines()[0]}")
        traceback.print_exc(limit=3, file=sys.stderr)
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-dir", type=Path, help="directory written by scripts/prebuild_probe.py")
    parser.add_argument("--arch", help="load or build for this arch instead of the GPU's (e.g. sm_80)")
    parser.add_argument("--nvidia-ptxas", choices=["cuda12", "triton"], default="cuda12")
    args = parser.parse_args()
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    driver = cuda_driver()
    print(f"GPU {torch.cuda.get_device_name()} ({arch}), driver {driver.cuDriverGetVersion()[1]}, "
          f"torch {torch.__version__}")
    kernels = load_kernels(args, arch)
    results = []
    for name, compiled in kernels.items():
        try:
            loaded = CudaKernel(compiled)
        except LaunchError as error:
            print(f"FAIL load {name}: {error}")
            results.append(False)
            continue
        print(f"loaded {name} ({compiled.arch}, {compiled.toolchain}) from its {loaded.loaded_from}")
        if name == "scale_rows":
            results += [run_check("scale_rows", check_scale_rows, loaded),
                        run_check("scale_rows in a CUDA graph", check_scale_rows_graph, loaded),
                        run_check("misaligned pointer refused", check_misaligned_pointer_refused, loaded)]
        elif name == "scatter_tile":
            results.append(run_check(name, check_scatter_tile, loaded))
        elif major * 10 + minor >= _TMA_MIN_CAPABILITY:
            results += [run_check(name, check_copy_tiles, loaded),
                        run_check(f"{name} in a CUDA graph", check_copy_tiles_graph, loaded)]
    print(f"triton imported: {'triton' in sys.modules}")
    ok = bool(results) and all(results)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
