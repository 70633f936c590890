"""Dense linear layers, x [M, K] @ W[N, K]^T (+ bias), float32 accumulation: the two ends of the heuristic
dataflow (DESIGN.md §5).

- gemv: CUDA cores, for a few rows of x. Each program owns BLOCK_N output features and runs the whole K
  loop; all M rows share each weight tile, so the weights cross memory once.
- gemm: tensor cores (tl.dot), tiled over M and N with grouped ordering for L2 reuse. With BLOCK_M = 16
  and a small N tile it is the flat GEMM of FlashDecoding++ §4 (M padded to 16, K loop in the block,
  num_stages double-buffering the loads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import as_rows, block_for, dot_exact, require, require_float
from fdpp.runtime.reference_ops import linear as linear_reference

__all__ = ["gemv", "gemm", "linear_reference"]


@triton.jit
def gemv_kernel(
    x_ptr,              # [M, K] activations, unit stride along K
    weight_ptr,         # [N, K] weight (nn.Linear layout), unit stride along K
    bias_ptr,           # [N] bias (read only when HAS_BIAS)
    out_ptr,            # [M, N] output, contiguous
    M, N, K,            # problem size
    x_row_stride,       # elements between rows of x
    weight_row_stride,  # elements between rows of the weight
    HAS_BIAS: tl.constexpr,  # add the bias
    BLOCK_M: tl.constexpr,   # rows of x per program (grid axis 1 covers M)
    BLOCK_N: tl.constexpr,   # output features per program (grid axis 0 covers N)
    BLOCK_K: tl.constexpr,   # reduction chunk of the K loop
):
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    feature_ok = features < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * x_row_stride                    # [BLOCK_M, 1]
    weight_rows = weight_ptr + features.to(tl.int64)[:, None] * weight_row_stride  # [BLOCK_N, 1]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        k = k_start + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(weight_rows + k[None, :], mask=feature_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)                         # [BLOCK_M, BLOCK_N]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + features, mask=feature_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * N + features[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & feature_ok[None, :])


@triton.jit
def gemm_kernel(
    x_ptr,              # [M, K] activations, unit stride along K
    weight_ptr,         # [N, K] weight (nn.Linear layout), unit stride along K, same dtype as x
    bias_ptr,           # [N] bias (read only when HAS_BIAS)
    out_ptr,            # [M, N] output, contiguous
    M, N, K,            # problem size
    x_row_stride,       # elements between rows of x
    weight_row_stride,  # elements between rows of the weight
    HAS_BIAS: tl.constexpr,  # add the bias
    BLOCK_M: tl.constexpr,   # tile rows (>= 16 for tl.dot)
    BLOCK_N: tl.constexpr,   # tile columns (>= 16)
    BLOCK_K: tl.constexpr,   # reduction chunk (>= 16)
    GROUP_M: tl.constexpr,   # M tiles per group of the launch order, so neighbours share weight tiles in L2
):
    # grouped ordering: walk GROUP_M tiles down M before moving along N
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * tiles_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % tiles_per_group) % group_rows
    tile_n = (pid % tiles_per_group) // group_rows

    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    features = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    feature_ok = features < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * x_row_stride                      # [BLOCK_M, 1]
    weight_columns = weight_ptr + features.to(tl.int64)[None, :] * weight_row_stride  # [1, BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        k = k_start + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)                # [BM, BK]
        w = tl.load(weight_columns + k[:, None], mask=k_ok[:, None] & feature_ok[None, :], other=0.0)    # [BK, BN]
        acc = dot_exact(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + features, mask=feature_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * N + features[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & feature_ok[None, :])


def _prepare(kernel_name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    require_float(kernel_name, x=x, weight=weight)
    require(weight.dim() == 2 and x.shape[-1] == weight.shape[1], kernel_name,
            f"x [..., {x.shape[-1]}] does not fit weight {tuple(weight.shape)} ([N, K])")
    n_features = weight.shape[0]
    require(bias is None or bias.shape == (n_features,), kernel_name, f"bias must be [{n_features}]")
    rows = as_rows(x, x.shape[-1])
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    out = torch.empty((rows.shape[0], n_features), dtype=x.dtype, device=x.device)
    bias_arg = bias.contiguous() if bias is not None else weight      # never read when HAS_BIAS is False
    return rows, weight, bias_arg, out


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         block_m: int | None = None, block_n: int = 32, block_k: int = 64,
         num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T + bias -> [..., N], for small M (decode).

    Config: block_m (default min(next power of two of M, 8)), block_n, block_k, num_warps, num_stages.
    """
    rows, weight, bias_arg, out = _prepare("gemv", x, weight, bias)
    (m, k), n = rows.shape, weight.shape[0]
    block_m = block_m or min(block_for(m), 8)
    if out.numel():
        grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
        gemv_kernel[grid](rows, weight, bias_arg, out, m, n, k, rows.stride(0), weight.stride(0),
                          HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                          num_warps=num_warps, num_stages=num_stages)
    return out.view(*x.shape[:-1], n)


def gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         block_m: int | None = None, block_n: int = 64, block_k: int = 32, group_m: int = 8,
         num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T + bias -> [..., N] on tensor cores; x and weight share one dtype.

    Config: block_m (default 16 for M <= 16 (flat GEMM), else 64), block_n, block_k, group_m,
    num_warps, num_stages.
    """
    require(x.dtype == weight.dtype, "gemm", f"x ({x.dtype}) and weight ({weight.dtype}) must share a dtype")
    rows, weight, bias_arg, out = _prepare("gemm", x, weight, bias)
    (m, k), n = rows.shape, weight.shape[0]
    block_m = block_m or (16 if m <= 16 else 64)
    require(min(block_m, block_n, block_k) >= 16, "gemm", "tl.dot needs every block size >= 16")
    if out.numel():
        grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
        gemm_kernel[grid](rows, weight, bias_arg, out, m, n, k, rows.stride(0), weight.stride(0),
                          HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                          GROUP_M=group_m, num_warps=num_warps, num_stages=num_stages)
    return out.view(*x.shape[:-1], n)
