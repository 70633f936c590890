"""Dense linear kernels (CUDA-core GEMV, tensor-core GEMM) against reference_ops.linear."""

import pytest
import torch

pytest.importorskip("triton")

from fdpp.codegen.kernels import linear
from fdpp.codegen.kernels.testing import assert_close, interpreter_fallback, poisoned_allocations, random_tensor

# without a GPU: in-process under TRITON_INTERPRET=1, else every test here is run again in a child process
_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]
# (N, K): a square hidden, an MLP-like widening, a narrowing with K not a multiple of any block
WEIGHT_SHAPES = [(64, 64), (576, 96), (96, 577)]


def _inputs(m, n, k, dtype, with_bias, seed):
    torch.manual_seed(seed)
    x = random_tensor((m, k), dtype, DEVICE)
    weight = random_tensor((n, k), dtype, DEVICE, scale=k ** -0.5)
    bias = random_tensor((n,), dtype, DEVICE) if with_bias else None
    return x, weight, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("n,k", WEIGHT_SHAPES)
@pytest.mark.parametrize("m", [1, 3, 7])
def test_gemv(m, n, k, with_bias, dtype):
    x, weight, bias = _inputs(m, n, k, dtype, with_bias, seed=10)
    with poisoned_allocations():
        out = linear.gemv(x, weight, bias, block_m=4)     # M = 7 takes two row blocks
    assert_close(out, linear.linear_reference(x, weight, bias), "gemv")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("n,k", WEIGHT_SHAPES)
@pytest.mark.parametrize("m", [1, 7, 97])
def test_gemm(m, n, k, with_bias, dtype):
    x, weight, bias = _inputs(m, n, k, dtype, with_bias, seed=11)
    with poisoned_allocations():
        out = linear.gemm(x, weight, bias, block_m=32, group_m=2)    # M = 97: four M tiles in two groups
    assert_close(out, linear.linear_reference(x, weight, bias), "gemm")


@pytest.mark.parametrize("n,k,spread,block_n", [(576, 96, 37, 16), (576, 96, 36, 16), (96, 577, 5, 32),
                                                 (64, 64, 64, 16)])
@pytest.mark.parametrize("m", [1, 97])
def test_gemm_spread_runs_cover_every_feature_once(m, n, k, spread, block_n):
    """spread programs per M tile, each owning a run of N // spread or one more features (runs of 15 and 16,
    exactly 16, 19 and 20, one): every output written once, by its own run."""
    x, weight, bias = _inputs(m, n, k, torch.float16, True, seed=14)
    with poisoned_allocations():
        out = linear.gemm(x, weight, bias, block_m=32, block_n=block_n, block_k=32, group_m=2, spread=spread)
    assert_close(out, linear.linear_reference(x, weight, bias), "gemm spread")


def test_gemm_spread_refuses_runs_wider_than_block_n():
    with pytest.raises(ValueError, match="block_n 16 must hold one"):
        linear.gemm(torch.ones(2, 32, device=DEVICE), torch.ones(100, 32, device=DEVICE), block_n=16, spread=6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epilogue", ["residual", "gated", "gated+residual"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("kernel, config, m", [
    (linear.gemv, {"block_m": 4, "block_n": 4, "block_k": 64}, 7),
    (linear.gemm, {"block_m": 16, "block_n": 32, "block_k": 32}, 7),
    (linear.gemm, {"block_m": 64, "block_n": 64, "block_k": 64}, 97),
    (linear.gemm, {"block_m": 16, "block_n": 16, "block_k": 32, "spread": 7}, 7),
], ids=["gemv", "flat_gemm", "gemm64", "flat_gemm_spread"])
def test_fused_epilogues(kernel, config, m, with_bias, epilogue, dtype):
    """Residual add and the gated activation over a stacked (gate; up) weight, against fused_linear."""
    n, k = 96, 577
    gated = "silu" if "gated" in epilogue else None
    x, weight, bias = _inputs(m, 2 * n if gated else n, k, dtype, with_bias, seed=13)
    residual = random_tensor((m, n), dtype, DEVICE) if "residual" in epilogue else None
    with poisoned_allocations():
        out = kernel(x, weight, bias, residual=residual, gated=gated, **config)
    assert_close(out, linear.fused_linear_reference(x, weight, bias, residual, gated), kernel.__name__)


@pytest.mark.parametrize("kernel", [linear.gemv, linear.gemm])
def test_linear_keeps_leading_dims_and_row_strides(kernel):
    torch.manual_seed(12)
    wide = random_tensor((3, 7, 200), torch.float32, DEVICE)
    x = wide[..., :96]                                        # rows with a stride, no copy
    weight = random_tensor((64, 96), torch.float32, DEVICE)
    with poisoned_allocations():
        out = kernel(x, weight)
    assert_close(out, linear.linear_reference(x, weight), kernel.__name__)


def test_gemm_refuses_mixed_dtypes():
    with pytest.raises(ValueError, match="share a dtype"):
        linear.gemm(torch.ones(2, 16), torch.ones(16, 16, dtype=torch.float16))
