"""Experiment (GPU, Hopper): the flat GEMM with its tiles loaded by TMA (Triton tensor descriptors made on the
device) instead of per-thread cp.async, against the shipped flat GEMM and cuBLAS, timed the tune's way
(compiler/tune.py checked_time_us: checked against float32 torch first, then CUDA-graph replays over rotating
weights).

Why: o_proj [4096, 4096] reads its weight at ~80% of copy bandwidth with every config of the flat GEMM's grid
(docs/perf/2026-12-08-wide-grid.md), where a plain read with two programs a multiprocessor reached 85%. A TMA load
is one instruction a tile, issued by one thread, so the loop issues almost nothing while the copy engine streams;
whether that moves the per-multiprocessor read rate is what this measures.

    python3 scripts/exp_tma_flat_gemm.py --out $OUT/tma.jsonl                 # GPU
    TRITON_INTERPRET=1 python3 scripts/exp_tma_flat_gemm.py --check-cpu       # the kernel's sums, on the CPU

Plain linears only (no epilogue); M <= 16 (one 16-row tile of x).
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton
import triton.language as tl

SHAPES = {"o": (4096, 4096), "down": (4096, 11008), "qkv": (12288, 4096)}
GRID = {"block_n": (32, 64, 128), "block_k": (128, 256), "num_stages": (3, 4, 6), "num_warps": (4,)}


@triton.jit
def tma_flat_gemm_kernel(x_ptr, weight_ptr, out_ptr, M, N, K,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         NUM_STAGES: tl.constexpr):
    """out [M, N] = x [M, K] @ weight [N, K]^T, one program per BLOCK_N features, the K loop in the program; x's
    rows past M and the weight's past N load as zeros (TMA's out-of-bounds fill)."""
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(weight_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    first = tl.program_id(0) * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        x = x_desc.load([0, k])                 # [BLOCK_M, BLOCK_K]
        w = w_desc.load([first, k])             # [BLOCK_N, BLOCK_K]
        acc = tl.dot(x, w.T, acc)
    rows = tl.arange(0, BLOCK_M)
    features = first + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (features < N)[None, :]
    tl.store(out_ptr + rows[:, None] * N + features[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def _scratch(size: int, alignment: int, stream):
    """Triton's allocator for device-made tensor descriptors (global scratch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def tma_flat_gemm(x: torch.Tensor, weight: torch.Tensor, block_n: int, block_k: int, num_stages: int,
                  num_warps: int) -> torch.Tensor:
    """x [M <= 16, K] @ weight [N, K]^T -> [M, N] with TMA tile loads."""
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    tma_flat_gemm_kernel[(triton.cdiv(n, block_n),)](x, weight, out, m, n, k, BLOCK_M=16, BLOCK_N=block_n,
                                                      BLOCK_K=block_k, NUM_STAGES=num_stages, num_warps=num_warps)
    return out


def check_cpu() -> int:
    """Under TRITON_INTERPRET=1: the kernel against float64 on a small awkward shape."""
    triton.set_allocator(_scratch)
    torch.manual_seed(0)
    worst = 0.0
    for m, n, k in ((1, 96, 256), (5, 80, 512), (16, 64, 384)):
        x = torch.randn(m, k, dtype=torch.float16)
        w = torch.randn(n, k, dtype=torch.float16) * k ** -0.5
        out = tma_flat_gemm(x, w, block_n=32, block_k=128, num_stages=2, num_warps=4)
        ref = x.double() @ w.double().T
        worst = max(worst, float((out.double() - ref).norm() / ref.norm()))
    print(f"tma_flat_gemm under the interpreter: worst relative error {worst:.2e}")
    return 0 if worst < 2e-3 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON lines of every timing (GPU)")
    parser.add_argument("--rows", default="1,8,16")
    parser.add_argument("--shapes", default="o,down,qkv")
    parser.add_argument("--check-cpu", action="store_true")
    args = parser.parse_args()
    if args.check_cpu:
        return check_cpu()
    from fdpp.compiler import tune
    from fdpp.compiler.bench import copy_bandwidth_gbs
    triton.set_allocator(_scratch)
    multiprocessors = torch.cuda.get_device_properties(0).multi_processor_count
    bandwidth = copy_bandwidth_gbs("cuda")
    print(f"{torch.cuda.get_device_name()}: copy {bandwidth:.0f} GB/s, triton {triton.__version__}")
    with open(args.out, "w") as log:
        for name in args.shapes.split(","):
            n, k = SHAPES[name]
            weights = tune.rotating_weights(n, k, torch.float16)
            nbytes = n * k * 2
            for m in (int(v) for v in args.rows.split(",")):
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                reference = x.float() @ weights[0].float().T
                rows = []
                for kernel, config in tune._candidates(m, n, multiprocessors):
                    if kernel in ("tc_gemm", "flat_gemm"):
                        rows.append(("shipped", kernel, config,
                                     tune.time_candidate(kernel, config, x, weights, False, reference)))
                for values in itertools.product(*GRID.values()):
                    config = dict(zip(GRID, values))
                    run = (lambda w, c=config: tma_flat_gemm(x, w, **c))
                    rows.append(("tma", "tma_flat_gemm", config, tune.checked_time_us(run, weights, reference)))
                for grid, kernel, config, us in rows:
                    log.write(json.dumps({"shape": name, "m": m, "grid": grid, "kernel": kernel, "config": config,
                                          "us": us}) + "\n")
                    log.flush()
                timed = [r for r in rows if r[3] is not None]
                cublas = next(r[3] for r in timed if r[1] == "tc_gemm")
                best = {g: min((r for r in timed if r[0] == g), key=lambda r: r[3], default=None)
                        for g in ("shipped", "tma")}
                line = f"{name:5} M={m:<3} cuBLAS {cublas:6.2f} us"
                for g, r in best.items():
                    if r is None:
                        line += f" | {g}: none ran"
                        continue
                    share = nbytes / r[3] / 1e3 / bandwidth
                    line += f" | {g} {r[3]:6.2f} us {share:6.1%} x{cublas / r[3]:.3f} {r[2]}"
                print(line + f" | tma ran {sum(r[0] == 'tma' for r in timed)}/{sum(r[0] == 'tma' for r in rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
