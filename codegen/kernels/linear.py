"""Dense linear layers, x [M, K] @ W[N, K]^T (+ bias), float32 accumulation: the two ends of the heuristic
dataflow (DESIGN.md §5).

- gemv: CUDA cores, for a few rows of x. Each program owns BLOCK_N output features (a few, so the grid
  holds thousands of programs and the weights stream from every multiprocessor) and runs the whole K loop;
  all M rows share each weight tile, so the weights cross memory once.
- gemm: tensor cores (tl.dot), tiled over M and N with grouped ordering for L2 reuse. With BLOCK_M = 16
  and a small N tile it is the flat GEMM of FlashDecoding++ §4 (M padded to 16, K loop in the block,
  num_stages double-buffering the loads).

Both fuse the epilogues the dataflow asks for (runtime/reference_ops.fused_linear): bias, a gated
activation over a stacked (gate; up) weight, so the gated MLP's two GEMMs and its activation are one
launch, and a residual add (o_proj and down_proj write the residual stream directly).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import (as_rows, block_for, dot_exact, let_next_start, out_offsets, require,
                                          require_float, wait_for_producers)
from fdpp.codegen.kernels.activation import ACTIVATION_CODES, apply_activation
from fdpp.runtime.reference_ops import fused_linear as fused_linear_reference
from fdpp.runtime.reference_ops import linear as linear_reference

__all__ = ["gemv", "gemm", "spread_block_n", "linear_reference", "fused_linear_reference"]


@triton.jit
def linear_epilogue(acc, up, rows, features, bias_ptr, residual_ptr, out_ptr, M, N,
                    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GATED: tl.constexpr,
                    ACTIVATION: tl.constexpr, OUT_ROWS: tl.constexpr = 1):
    """acc [BLOCK_M, BLOCK_N] float32 (and up, the up half's acc, when GATED) -> out [M, N]:
    + bias, then act(gate) * up when GATED (bias [2N]: gate's then up's), then + residual [M, N].
    OUT_ROWS > 1: out interleaved by blocks of OUT_ROWS rows (_common.out_offsets; the residual stays row-major)."""
    feature_ok = features < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + features, mask=feature_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:
            up += tl.load(bias_ptr + N + features, mask=feature_ok, other=0.0).to(tl.float32)[None, :]
    if GATED:
        acc = apply_activation(acc, ACTIVATION) * up
    mask = (rows < M)[:, None] & feature_ok[None, :]
    offsets = rows.to(tl.int64)[:, None] * N + features[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(residual_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if OUT_ROWS > 1:
        offsets = out_offsets(rows.to(tl.int64)[:, None], features[None, :], N, OUT_ROWS)
    tl.store(out_ptr + offsets, acc, mask=mask)


@triton.jit
def gemv_kernel(
    x_ptr,              # [M, K] activations, unit stride along K
    weight_ptr,         # [N, K] weight (nn.Linear layout), unit stride along K; [2N, K] (gate; up) when GATED
    bias_ptr,           # [N] bias ([2N] when GATED; read only when HAS_BIAS)
    residual_ptr,       # [M, N] added last (read only when HAS_RESIDUAL)
    out_ptr,            # [M, N] output, contiguous
    M, N, K,            # problem size (N: output features)
    x_row_stride,       # elements between rows of x
    weight_row_stride,  # elements between rows of the weight
    HAS_BIAS: tl.constexpr,      # add the bias
    HAS_RESIDUAL: tl.constexpr,  # add residual to the result
    GATED: tl.constexpr,         # out = act(x @ gate^T) * (x @ up^T)
    ACTIVATION: tl.constexpr,    # activation code (activation.ACTIVATION_CODES) when GATED
    BLOCK_M: tl.constexpr,       # rows of x per program (grid axis 1 covers M)
    BLOCK_N: tl.constexpr,       # output features per program (grid axis 0 covers N)
    BLOCK_K: tl.constexpr,       # reduction chunk of the K loop
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
):
    wait_for_producers(GRID_DEPENDENCY, LET_NEXT_START=False)
    # products accumulate elementwise in [BLOCK_M, BLOCK_N, BLOCK_K] registers and are reduced over K once
    # after the loop, so the loop body is loads and FMAs only
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    feature_ok = features < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * x_row_stride                    # [BLOCK_M, 1]
    weight_rows = weight_ptr + features.to(tl.int64)[:, None] * weight_row_stride  # [BLOCK_N, 1]
    up_rows = weight_rows + N.to(tl.int64) * weight_row_stride                     # [BLOCK_N, 1]
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    up_acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        k = k_start + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        w_mask = feature_ok[:, None] & k_ok[None, :]
        w = tl.load(weight_rows + k[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc += x[:, None, :] * w[None, :, :]
        if GATED:
            u = tl.load(up_rows + k[None, :], mask=w_mask, other=0.0).to(tl.float32)
            up_acc += x[:, None, :] * u[None, :, :]
    let_next_start(GRID_DEPENDENCY)
    linear_epilogue(tl.sum(acc, axis=2), tl.sum(up_acc, axis=2), rows, features, bias_ptr, residual_ptr,
                    out_ptr, M, N, HAS_BIAS, HAS_RESIDUAL, GATED, ACTIVATION)


@triton.jit
def gemm_kernel(
    # operands, sizes and epilogue flags as gemv_kernel's; the weight has x's dtype (tl.dot operands)
    x_ptr, weight_ptr, bias_ptr, residual_ptr, out_ptr, M, N, K, x_row_stride, weight_row_stride,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GATED: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr,   # tile rows (>= 16 for tl.dot)
    BLOCK_N: tl.constexpr,   # tile columns (>= 16)
    BLOCK_K: tl.constexpr,   # reduction chunk (>= 16)
    GROUP_M: tl.constexpr,   # M tiles per group of the launch order, so neighbours share weight tiles in L2
    GRID_DEPENDENCY: tl.constexpr = False,  # launched as a programmatic dependent (wait_for_producers)
    SPREAD: tl.constexpr = 0,  # > 0: SPREAD programs per M tile, each owning a run of N // SPREAD or one more
                               # features (BLOCK_N >= cdiv(N, SPREAD)), so the grid can be a multiple of the
                               # multiprocessors however N divides; 0: one program per BLOCK_N features
):
    wait_for_producers(GRID_DEPENDENCY, LET_NEXT_START=False)
    # grouped ordering: walk GROUP_M tiles down M before moving along N
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = SPREAD if SPREAD else tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * tiles_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % tiles_per_group) % group_rows
    tile_n = (pid % tiles_per_group) // group_rows

    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if SPREAD:
        first, end = tile_n * N // SPREAD, (tile_n + 1) * N // SPREAD
        features = first + tl.arange(0, BLOCK_N)
        features = tl.where(features < end, features, N)    # the next run's features: past N, so masked out
    else:
        features = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    feature_ok = features < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * x_row_stride                      # [BM, 1]
    weight_columns = weight_ptr + features.to(tl.int64)[None, :] * weight_row_stride  # [1, BN]
    up_columns = weight_columns + N.to(tl.int64) * weight_row_stride                 # [1, BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        k = k_start + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)                # [BM, BK]
        w_mask = k_ok[:, None] & feature_ok[None, :]
        w = tl.load(weight_columns + k[:, None], mask=w_mask, other=0.0)                                  # [BK, BN]
        acc = dot_exact(x, w, acc)
        if GATED:
            u = tl.load(up_columns + k[:, None], mask=w_mask, other=0.0)                                  # [BK, BN]
            up_acc = dot_exact(x, u, up_acc)
    let_next_start(GRID_DEPENDENCY)
    linear_epilogue(acc, up_acc, rows, features, bias_ptr, residual_ptr, out_ptr, M, N,
                    HAS_BIAS, HAS_RESIDUAL, GATED, ACTIVATION)


def _prepare(kernel_name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             residual: torch.Tensor | None, gated: str | None):
    require_float(kernel_name, x=x, weight=weight)
    require(weight.dim() == 2 and x.shape[-1] == weight.shape[1], kernel_name,
            f"x [..., {x.shape[-1]}] does not fit weight {tuple(weight.shape)} ([N, K])")
    require(gated is None or gated in ACTIVATION_CODES, kernel_name,
            f"unknown activation {gated!r}; known: {sorted(ACTIVATION_CODES)}")
    require(not gated or weight.shape[0] % 2 == 0, kernel_name,
            f"a gated weight stacks gate and up ([2N, K]); got {weight.shape[0]} rows")
    n_features = weight.shape[0] // 2 if gated else weight.shape[0]
    require(bias is None or bias.shape == (weight.shape[0],), kernel_name, f"bias must be [{weight.shape[0]}]")
    require(residual is None or residual.shape == (*x.shape[:-1], n_features), kernel_name,
            f"residual must be [..., {n_features}], got {None if residual is None else tuple(residual.shape)}")
    rows = as_rows(x, x.shape[-1])
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    out = torch.empty((rows.shape[0], n_features), dtype=x.dtype, device=x.device)
    bias_arg = bias.contiguous() if bias is not None else weight      # never read when HAS_BIAS is False
    residual_arg = residual.reshape(-1, n_features).contiguous() if residual is not None else out
    epilogue = {"HAS_BIAS": bias is not None, "HAS_RESIDUAL": residual is not None, "GATED": bool(gated),
                "ACTIVATION": ACTIVATION_CODES[gated] if gated else 0}
    return rows, weight, bias_arg, residual_arg, out, epilogue


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         residual: torch.Tensor | None = None, gated: str | None = None,
         block_m: int | None = None, block_n: int = 4, block_k: int = 512,
         num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T + bias (+ residual [..., N]) -> [..., N], for small M (decode) on CUDA cores.

    gated: an activation name; the weight is then (gate; up) [2N, K] and the result act(x @ gate^T) * x @ up^T.
    Config: block_m (default min(next power of two of M, 4)), block_n, block_k, num_warps, num_stages.
    """
    rows, weight, bias_arg, residual_arg, out, epilogue = _prepare("gemv", x, weight, bias, residual, gated)
    (m, k), n = rows.shape, out.shape[1]
    block_m = block_m or min(block_for(m), 4)
    if out.numel():
        grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
        gemv_kernel[grid](rows, weight, bias_arg, residual_arg, out, m, n, k, rows.stride(0), weight.stride(0),
                          **epilogue, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                          num_warps=num_warps, num_stages=num_stages)
    return out.view(*x.shape[:-1], n)


def spread_block_n(n: int, spread: int) -> int:
    """The narrowest feature tile of a spread grid over n features: a power of two (>= 16, for tl.dot) that
    holds one program's run of up to cdiv(n, spread) features."""
    return block_for(triton.cdiv(n, spread), 16)


def gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         residual: torch.Tensor | None = None, gated: str | None = None,
         block_m: int | None = None, block_n: int = 64, block_k: int = 32, group_m: int = 8,
         num_warps: int = 4, num_stages: int = 3, spread: int = 0) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T + bias (+ residual) -> [..., N] on tensor cores; x and weight share one dtype.

    gated: as gemv. Config: block_m (default 16 for M <= 16 (flat GEMM), else 64), block_n, block_k, group_m,
    num_warps, num_stages, spread (> 0: that many programs per block_m rows of x, each owning N // spread or
    one more features, block_n >= cdiv(N, spread); 0: one program per block_n features).
    """
    require(x.dtype == weight.dtype, "gemm", f"x ({x.dtype}) and weight ({weight.dtype}) must share a dtype")
    rows, weight, bias_arg, residual_arg, out, epilogue = _prepare("gemm", x, weight, bias, residual, gated)
    (m, k), n = rows.shape, out.shape[1]
    block_m = block_m or (16 if m <= 16 else 64)
    require(min(block_m, block_n, block_k) >= 16, "gemm", "tl.dot needs every block size >= 16")
    require(spread >= 0 and (not spread or block_n >= triton.cdiv(n, spread)), "gemm",
            f"spread {spread} gives runs of up to {triton.cdiv(n, max(spread, 1))} of the {n} features; "
            f"block_n {block_n} must hold one")
    if out.numel():
        grid = (triton.cdiv(m, block_m) * (spread or triton.cdiv(n, block_n)),)
        gemm_kernel[grid](rows, weight, bias_arg, residual_arg, out, m, n, k, rows.stride(0), weight.stride(0),
                          **epilogue, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                          GROUP_M=group_m, SPREAD=spread, num_warps=num_warps, num_stages=num_stages)
    return out.view(*x.shape[:-1], n)
