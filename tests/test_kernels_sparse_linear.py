"""Sparse linear kernels (bitmap, Tiled-CSL, chunked CSR: runtime/sparse_formats.py) against reference_ops.linear
on the decoded weight and a float64 product; their launch specs run as recorded; their cross-compilation."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
import triton
import triton.language as tl

from fdpp.codegen.aot import jit_launchers
from fdpp.codegen.kernels import chunked_csr_linear, sparse_linear
from fdpp.codegen.kernels.testing import (TOLERANCE, assert_close, interpreter_fallback, poisoned_allocations,
                                          random_tensor, relative_error)
from fdpp.codegen.launch_specs import step_launches
from fdpp.compiler.errors import CompileError
from fdpp.runtime.dims import evaluate_dim, evaluate_shape
from fdpp.runtime.reference_ops import fused_linear
from fdpp.runtime.reference_ops import linear as linear_reference
from fdpp.runtime.schema import KernelChoice, OpKind, Step
from fdpp.runtime.sparse_formats import (PARTS, SparseWeight, decode, encode_bitmap, encode_chunked_csr,
                                         encode_tiled_csl)
from helpers import rows_of_interleaved

# without a GPU: in-process under TRITON_INTERPRET=1, else every test here is run again in a child process
_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def _weight(n: int, k: int, density: float, dtype, seed: int) -> torch.Tensor:
    """Random normal [N, K] with about `density` of it kept (kept values are never zero)."""
    torch.manual_seed(seed)
    kept = torch.rand(n, k) < density
    return (random_tensor((n, k), F32, "cpu", scale=k ** -0.5) * kept).to(dtype)


def _on_device(weight: SparseWeight) -> SparseWeight:
    tensors = {part: t.to(DEVICE) for part, t in weight.tensors.items()}
    return SparseWeight(weight.format, weight.shape, weight.padded_shape, weight.tile, weight.nnz, weight.dtype,
                        tensors)


def _encode(weight: torch.Tensor, fmt: str) -> SparseWeight:
    encoders = {"bitmap": lambda w: encode_bitmap(w, (16, 64)), "tiled_csl": encode_tiled_csl,
                "chunked_csr": encode_chunked_csr}
    return _on_device(encoders[fmt](weight))


def _check(out: torch.Tensor, x: torch.Tensor, encoded: SparseWeight, bias, what: str) -> None:
    """Against the decoded weight through reference_ops.linear, and against a float64 product."""
    weight = decode(encoded.meta(), {part: t.cpu() for part, t in encoded.tensors.items()}).to(DEVICE)
    assert_close(out, linear_reference(x, weight.to(x.dtype), bias), what)
    exact = x.double() @ weight.double().T + (bias.double() if bias is not None else 0)
    assert relative_error(out, exact) <= TOLERANCE[x.dtype], f"{what}: against float64"


def _inputs(m: int, k: int, n: int, dtype, with_bias: bool, seed: int):
    torch.manual_seed(seed)
    x = random_tensor((m, k), dtype, DEVICE)
    return x, (random_tensor((n,), dtype, DEVICE) if with_bias else None)


# (tile, M, density, bias, tensor cores, split_k, dtype) for W [40, 96]: N and K not tile multiples; every value
# of each axis appears on both paths; split_k 3 over 2 K tiles leaves one split without tiles
BITMAP_CASES = [
    ((16, 64), 1, 0.3, False, False, 1, F16), ((16, 64), 1, 0.3, True, False, 2, F16),
    ((16, 64), 3, 0.3, True, False, 1, F32), ((16, 64), 3, 1.0, False, False, 2, F16),
    ((16, 64), 17, 0.3, True, False, 2, F16), ((16, 64), 3, 0.0, True, False, 1, F16),
    ((8, 32), 3, 0.3, True, False, 3, F16), ((16, 64), 1, 0.3, False, True, 1, F16),
    ((16, 64), 17, 0.3, True, True, 2, F16), ((16, 64), 17, 1.0, False, True, 1, F32),
    ((16, 64), 3, 0.0, False, True, 2, F16), ((32, 128), 17, 0.3, True, True, 1, F32),
    ((16, 64), 1, 1.0, True, True, 3, F32), ((16, 64), 3, 0.3, True, False, 2, BF16),
    pytest.param((16, 64), 17, 0.3, False, True, 2, BF16, marks=pytest.mark.skipif(
        DEVICE == "cpu", reason="the interpreter's tl.dot mishandles bfloat16 (the dense gemm's too)")),
]


@pytest.mark.parametrize("tile,m,density,with_bias,tensor_cores,split_k,dtype", BITMAP_CASES)
def test_bitmap_linear(tile, m, density, with_bias, tensor_cores, split_k, dtype):
    n, k = 40, 96
    encoded = _on_device(encode_bitmap(_weight(n, k, density, dtype, seed=20), tile))
    x, bias = _inputs(m, k, n, dtype, with_bias, seed=21)
    with poisoned_allocations():
        out = sparse_linear.sparse_linear(x, encoded, bias, tensor_cores=tensor_cores, split_k=split_k)
    _check(out, x, encoded, bias, f"bitmap {tile} M={m} density={density}")


# (M, density, bias, tensor cores, split_k, entry_chunk, dtype) for W [130, 70]: 2 x 2 tiles, mostly padding
TILED_CSL_CASES = [
    (1, 0.3, False, False, 1, 256, F16), (1, 0.3, True, False, 2, 64, F16), (3, 1.0, True, False, 2, 1024, F16),
    (3, 0.0, False, False, 1, 256, F16), (17, 0.3, True, False, 3, 256, F16), (1, 0.3, True, True, 2, 256, F16),
    (17, 0.3, False, True, 2, 64, F16), (17, 1.0, True, True, 1, 1024, F16), (3, 0.0, True, True, 2, 256, F16),
    (17, 0.3, True, False, 2, 256, BF16),
    pytest.param(17, 0.3, True, True, 2, 256, BF16, marks=pytest.mark.skipif(
        DEVICE == "cpu", reason="the interpreter's tl.dot mishandles bfloat16 (the dense gemm's too)")),
]


@pytest.mark.parametrize("m,density,with_bias,tensor_cores,split_k,entry_chunk,dtype", TILED_CSL_CASES)
def test_tiled_csl_linear(m, density, with_bias, tensor_cores, split_k, entry_chunk, dtype):
    n, k = 130, 70
    encoded = _on_device(encode_tiled_csl(_weight(n, k, density, dtype, seed=30)))
    x, bias = _inputs(m, k, n, dtype, with_bias, seed=31)
    with poisoned_allocations():
        out = sparse_linear.sparse_linear(x, encoded, bias, tensor_cores=tensor_cores, split_k=split_k,
                                          entry_chunk=entry_chunk)
    _check(out, x, encoded, bias, f"tiled_csl M={m} density={density}")


# (M, density, bias, split_k, block_n, chunks, rows, dtype) for W [37, 600]: at density 0.02 chunks are cut by
# their 256-column reach, not by their 32 entries; M 9 in programs of 8 rows gathered together leaves 7 rows
# of the second past M; rows 1 gathers each row alone; split_k 3 leaves a split idle
CHUNKED_CSR_CASES = [
    (1, 0.3, False, 1, 4, 8, 1, F16), (1, 0.3, True, 2, 8, 4, 1, F16), (3, 1.0, True, 1, 4, 4, 4, F16),
    (3, 0.0, False, 2, 4, 8, 2, F16), (9, 0.3, True, 3, 16, 4, 8, F16), (2, 0.02, True, 1, 4, 4, 2, F16),
    (3, 0.3, True, 2, 4, 4, 4, BF16), (5, 0.5, True, 1, 8, 4, 8, BF16), (4, 0.5, True, 1, 8, 4, 4, F32),
    (9, 0.3, False, 1, 4, 4, 8, F32), (3, 0.3, True, 1, 4, 4, 1, F16),
]


@pytest.mark.parametrize("m,density,with_bias,split_k,block_n,chunks,rows,dtype", CHUNKED_CSR_CASES)
def test_chunked_csr_linear(m, density, with_bias, split_k, block_n, chunks, rows, dtype):
    n, k = 37, 600
    encoded = _encode(_weight(n, k, density, dtype, seed=35), "chunked_csr")
    x, bias = _inputs(m, k, n, dtype, with_bias, seed=36)
    with poisoned_allocations():
        out = sparse_linear.sparse_linear(x, encoded, bias, split_k=split_k, block_n=block_n, chunks=chunks,
                                          rows=rows)
    _check(out, x, encoded, bias, f"chunked_csr M={m} density={density} rows={rows}")


# (M, rows, gated activation, residual, bias, dtype) for W [2 x 19, 600] or [19, 600]: an odd N, so the last
# gated program has a gate row without a feature; rows None takes the defaults (at M = 1 a program of one
# gate and one up row)
CHUNKED_CSR_EPILOGUE_CASES = [
    (1, 1, "silu", True, False, F16), (1, None, "silu", False, True, F32), (3, 4, "silu", False, True, F16), (9, 8, "gelu_tanh", True, True, F32),
    (2, 2, None, True, True, BF16), (5, 8, None, True, False, F16),
]


@pytest.mark.parametrize("m,rows,gated,with_residual,with_bias,dtype", CHUNKED_CSR_EPILOGUE_CASES)
def test_chunked_csr_epilogues_match_fused_linear(m, rows, gated, with_residual, with_bias, dtype):
    n, k = 19, 600
    rows_w = 2 * n if gated else n
    weight = _weight(rows_w, k, 0.3, dtype, seed=38)
    encoded = _encode(weight, "chunked_csr")
    x, bias = _inputs(m, k, rows_w, dtype, with_bias, seed=39)
    residual = random_tensor((m, n), dtype, DEVICE) if with_residual else None
    config = {"rows": rows, "block_n": 4, "chunks": 4} if rows else {}      # None: the wrapper's defaults
    with poisoned_allocations():
        out = sparse_linear.sparse_linear(x, encoded, bias, residual=residual, gated=gated, **config)
    what = f"chunked_csr M={m} rows={rows} gated={gated} residual={with_residual}"
    w = weight.to(DEVICE)
    assert_close(out, fused_linear(x, w, bias, residual, gated), what)
    exact = fused_linear(x.double(), w.double(), None if bias is None else bias.double(),
                         None if residual is None else residual.double(), gated)
    assert relative_error(out, exact) <= TOLERANCE[x.dtype], f"{what}: against float64"


def test_chunked_csr_epilogues_refuse_split_k():
    encoded = _encode(_weight(8, 64, 0.5, F16, seed=41), "chunked_csr")
    x, _ = _inputs(2, 64, 8, F16, False, seed=42)
    with pytest.raises(ValueError, match="chunked_csr_linear: the gated and residual epilogues need split_k 1"):
        sparse_linear.sparse_linear(x, encoded, gated="silu", split_k=2)


def test_interleave_rows_puts_each_columns_rows_side_by_side():
    x = random_tensor((5, 700), F16, DEVICE)[:, :600]                                         # row stride 700
    out = chunked_csr_linear.interleave_rows(x, 4)                                             # [2, 600, 4]
    expected = torch.zeros(8, 600, dtype=F16, device=DEVICE)
    expected[:5] = x
    torch.testing.assert_close(out, expected.view(2, 4, 600).transpose(1, 2), rtol=0, atol=0)


@pytest.mark.parametrize("m,together", [(1, 2), (2, 2), (3, 4), (5, 8), (8, 8)])
def test_chunked_csr_writes_and_reads_x_interleaved(m, together):
    """A gated chunked-CSR linear writing its output interleaved (out_rows_together, for down_proj after it)
    gives the row-major run's values; one reading x already interleaved by its producer (x_interleaved) gives the
    values of the run that interleaves x itself, and never reads x's own values."""
    n, k = 19, 600
    encoded = _encode(_weight(2 * n, k, 0.3, F16, seed=43), "chunked_csr")
    x, _ = _inputs(m, k, 2 * n, F16, False, seed=44)
    parts = [encoded.tensors[part] for part in PARTS["chunked_csr"]]
    plain = chunked_csr_linear.chunked_csr_linear(x, *parts, encoded.shape, gated="silu")
    with poisoned_allocations():
        interleaved = chunked_csr_linear.chunked_csr_linear(x, *parts, encoded.shape, gated="silu",
                                                            out_rows_together=together)
    assert interleaved.shape == (-(-m // together), n, together)
    assert torch.equal(rows_of_interleaved(interleaved, m), plain)
    rows = chunked_csr_linear.default_chunked_csr_config(2 * n, parts[2].shape[1], m)["rows"]
    if rows > 1:
        ready = chunked_csr_linear.interleave_rows(x, rows)
        read = chunked_csr_linear.chunked_csr_linear(torch.full_like(x, float("nan")), *parts, encoded.shape,
                                                     gated="silu", x_interleaved=ready)
        assert torch.equal(read, plain)


@pytest.mark.parametrize("n,k,density", [(7, 600, 0.3), (40, 96, 0.0), (33, 1000, 1.0), (5, 3000, 0.05)])
def test_densify_writes_the_chunked_csr_weight_out_dense(n, k, density):
    """Every position of the dense copy (zeros included: the output starts as NaN), and no padding entry
    overwrites the nonzero at its chunk's base."""
    weight = _weight(n, k, density, F16, seed=47)
    encoded = _encode(weight, "chunked_csr")
    with poisoned_allocations():
        dense = chunked_csr_linear.densify(*[encoded.tensors[part] for part in PARTS["chunked_csr"]], encoded.shape)
    assert torch.equal(dense, weight.to(DEVICE))


def test_chunked_csr_refuses_misshapen_interleaved_x_and_split_interleaved_out():
    encoded = _encode(_weight(8, 64, 0.5, F16, seed=45), "chunked_csr")
    parts = [encoded.tensors[part] for part in PARTS["chunked_csr"]]
    x, _ = _inputs(3, 64, 8, F16, False, seed=46)
    with pytest.raises(ValueError, match=r"chunked_csr_linear: x_interleaved must be a contiguous torch.float16 "
                                         r"\(1, 64, 4\)"):
        chunked_csr_linear.chunked_csr_linear(x, *parts, encoded.shape, x_interleaved=x)
    with pytest.raises(ValueError, match="chunked_csr_linear: out_rows_together must be 1, 2, 4 or 8, and 1 with "
                                         "split_k > 1; got 4"):
        chunked_csr_linear.chunked_csr_linear(x, *parts, encoded.shape, split_k=2, out_rows_together=4)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl", "chunked_csr"])
def test_sparse_linear_keeps_leading_dims_and_row_strides(fmt):
    weight = _weight(48, 64, 0.5, F16, seed=40)
    encoded = _encode(weight, fmt)
    torch.manual_seed(41)
    x = random_tensor((2, 3, 100), F16, DEVICE)[..., :64]                 # rows with a stride, no copy
    with poisoned_allocations():
        out = sparse_linear.sparse_linear(x, encoded)
    assert out.shape == (2, 3, 48)
    _check(out.reshape(6, 48), x.reshape(6, 64), encoded, None, fmt)


@triton.jit
def _popcount_kernel(v_ptr, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, sparse_linear.popcount(tl.load(v_ptr + offsets)))


def test_popcount_counts_every_bit_of_negative_words_too():
    torch.manual_seed(50)
    words = torch.randint(-2 ** 31, 2 ** 31 - 1, (256,), dtype=torch.int32)
    words[:4] = torch.tensor([0, -1, -2 ** 31, 1], dtype=torch.int32)
    out = torch.empty_like(words, device=DEVICE)
    _popcount_kernel[(1,)](words.to(DEVICE), out, BLOCK=256)
    expected = [bin(int(w) & 0xFFFFFFFF).count("1") for w in words]
    assert out.cpu().tolist() == expected


def test_wrappers_refuse_bad_inputs_naming_the_kernel():
    bitmap = encode_bitmap(_weight(40, 96, 0.5, F16, seed=60), (16, 64))
    bits, values, offsets = (bitmap.tensors[p] for p in PARTS["bitmap"])
    x = torch.ones(2, 96, dtype=F16)
    args = (bitmap.shape, bitmap.padded_shape, bitmap.tile)
    with pytest.raises(ValueError, match=r"bitmap_linear: x \[\.\.\., 95\] does not fit"):
        sparse_linear.bitmap_linear(x[:, :95], bits, values, offsets, *args)
    with pytest.raises(ValueError, match="bitmap_linear: bits must be int32"):
        sparse_linear.bitmap_linear(x, bits[:, :1].contiguous(), values, offsets, *args)
    with pytest.raises(ValueError, match="bitmap_linear: tile_offsets must be int32"):
        sparse_linear.bitmap_linear(x, bits, values, offsets.long(), *args)
    with pytest.raises(ValueError, match="bitmap_linear: tensor cores need"):
        sparse_linear.bitmap_linear(x.float(), bits, values, offsets, *args, tensor_cores=True)
    with pytest.raises(ValueError, match="bitmap_linear: tl.dot needs block_m >= 16"):
        sparse_linear.bitmap_linear(x, bits, values, offsets, *args, tensor_cores=True, block_m=8)
    with pytest.raises(ValueError, match="bitmap_linear: bias must be"):
        sparse_linear.bitmap_linear(x, bits, values, offsets, *args, bias=torch.ones(41, dtype=F16))
    csl = encode_tiled_csl(_weight(40, 96, 0.5, F16, seed=61))
    entries, csl_offsets = (csl.tensors[p] for p in PARTS["tiled_csl"])
    with pytest.raises(ValueError, match="tiled_csl_linear: Tiled-CSL holds 16-bit weights"):
        sparse_linear.tiled_csl_linear(x, entries, csl_offsets, csl.shape, csl.padded_shape, weight_dtype=F32)
    with pytest.raises(ValueError, match="tiled_csl_linear: padded shape"):
        sparse_linear.tiled_csl_linear(x, entries, csl_offsets, csl.shape, (130, 128))
    with pytest.raises(ValueError, match="tiled_csl_linear: split_k must be >= 1"):
        sparse_linear.tiled_csl_linear(x, entries, csl_offsets, csl.shape, csl.padded_shape, split_k=-1)
    with pytest.raises(ValueError, match="sparse_linear: unknown sparse format 'coo'"):
        sparse_linear.sparse_linear(x, SparseWeight("coo", (40, 96), (40, 96), (1, 1), 0, "float16"))


# --- launch specs ----------------------------------------------------------------------------------------

def _sparse_step(encoded: SparseWeight, kernel: str, max_rows: int, config: dict, with_bias: bool):
    """A LINEAR reading `w` encoded (as encode_sparse_weights leaves it), its choice, and its tensors by reference."""
    n, k = encoded.shape
    parts = {f"@w.{encoded.format}.{part}": encoded.tensors[part] for part in PARTS[encoded.format]}
    tensors = {**parts, **({"@b": random_tensor((n,), F16, DEVICE)} if with_bias else {})}
    step = Step(OpKind.LINEAR, ("x", *tensors), "y", {"sparse": encoded.meta()}, out_shape=("batch", "seq", n))
    shapes = {"x": ("batch", "seq", k), **{ref: tuple(t.shape) for ref, t in tensors.items()}}
    return step, KernelChoice(max_rows, kernel, config), tensors, shapes.__getitem__


def _run_launches(built, tensors: dict, out: torch.Tensor, rows: int) -> None:
    """Follow recorded launches as the kernel executor does (grids and sizes evaluated, workspaces fresh)."""
    env = {"rows": rows, "batch": rows, "seq": 1}
    launchers = jit_launchers(built.specs)
    workspace = {name: torch.empty(evaluate_shape(spec["shape"], env), dtype=getattr(torch, spec["dtype"]),
                                   device=DEVICE)
                 for launch in built.launches for name, spec in launch.get("workspace", {}).items()}
    for launch in built.launches:
        refs = {"out": out, **{f"ws:{name}": t for name, t in workspace.items()}, **tensors}
        args = [refs[value] if kind == "t" else evaluate_dim(value, env) if kind == "i" else float(value)
                for kind, value in launch["args"]]
        launchers[launch["kernel"]](tuple(evaluate_dim(g, env) for g in launch["grid"]), *args)


@pytest.mark.parametrize("kernel,rows,config", [
    ("bitmap_gemv", 3, {}), ("bitmap_gemm", 17, {"split_k": 1}), ("tiled_csl_gemv", 3, {"split_k": 2}),
    ("tiled_csl_gemm", 17, {"block_m": 16, "entry_chunk": 128}), ("chunked_csr_gemv", 3, {"split_k": 2}),
    ("chunked_csr_gemv", 17, {"split_k": 1}), ("chunked_csr_gemv", 3, {"split_k": 2, "rows": 1}),
])
def test_launch_specs_run_as_recorded(kernel, rows, config):
    fmt = kernel.rsplit("_", 1)[0]
    weight = _weight(130, 136, 0.4, F16, seed=70)
    encoded = _encode(weight, fmt)
    torch.manual_seed(71)
    step, choice, tensors, shape_of = _sparse_step(encoded, kernel, 32, config, with_bias=True)
    built = step_launches(step, choice, "float16", shape_of)
    # chunked CSR over 32 rows interleaves 8 rows of x by default
    interleaved = fmt == "chunked_csr" and config.get("rows", 8) > 1
    main = built.launches[1 if interleaved else 0]
    split = main["grid"][1] > 1                                 # config, or the default for 3 x 3 tiles
    assert split == (config.get("split_k", 2) > 1)
    assert [launch["kernel"].split("-")[0] for launch in built.launches] == \
        (["interleave_rows_kernel"] if interleaved else []) + [f"{fmt}_linear_kernel"] + \
        (["sum_splits_kernel"] if split else [])
    x = random_tensor((rows, 136), F16, DEVICE)
    with poisoned_allocations():
        out = torch.empty((rows, 130), dtype=F16, device=DEVICE)
        _run_launches(built, {"x": x, **tensors}, out, rows)
    _check(out, x, encoded, tensors["@b"], kernel)


@pytest.mark.parametrize("rows", [3, 4])
def test_launch_specs_read_and_write_interleaved_rows(rows):
    """A chunked-CSR choice with x_interleaved launches no interleave kernel and reads x as its producer wrote it;
    with out_rows_together 4 it writes its output interleaved (OUT_ROWS), into a buffer the executor allocates so."""
    encoded = _encode(_weight(130, 136, 0.4, F16, seed=72), "chunked_csr")
    torch.manual_seed(73)
    step, choice, tensors, shape_of = _sparse_step(encoded, "chunked_csr_gemv", 4,
                                                   {"x_interleaved": True, "out_rows_together": 4}, with_bias=True)
    built = step_launches(step, choice, "float16", shape_of)
    assert [launch["kernel"].split("-")[0] for launch in built.launches] == ["chunked_csr_linear_kernel"]
    assert dict(next(iter(built.specs.values())).constexprs)["OUT_ROWS"] == 4
    x = random_tensor((rows, 136), F16, DEVICE)
    with poisoned_allocations():
        out = torch.empty((1, 130, 4), dtype=F16, device=DEVICE)
        _run_launches(built, {"x": chunked_csr_linear.interleave_rows(x, 4), **tensors}, out, rows)
    _check(rows_of_interleaved(out, rows), x, encoded, tensors["@b"], "chunked_csr_gemv, x and out interleaved")


@pytest.mark.parametrize("rows", [17, 70])
def test_densified_gemm_launches_run_as_recorded(rows):
    """chunked_csr_gemm: the weight written out dense into the step's workspace, then the tensor-core GEMM
    with the bias over it; no interleave launch."""
    encoded = _encode(_weight(130, 136, 0.4, F16, seed=74), "chunked_csr")
    torch.manual_seed(75)
    step, choice, tensors, shape_of = _sparse_step(encoded, "chunked_csr_gemm", 128, {}, with_bias=True)
    built = step_launches(step, choice, "float16", shape_of)
    assert [launch["kernel"].split("-")[0] for launch in built.launches] == ["densify_kernel", "gemm_kernel"]
    x = random_tensor((rows, 136), F16, DEVICE)
    with poisoned_allocations():
        out = torch.empty((rows, 130), dtype=F16, device=DEVICE)
        _run_launches(built, {"x": x, **tensors}, out, rows)
    _check(out, x, encoded, tensors["@b"], f"chunked_csr_gemm, {rows} rows")


def test_launch_specs_refuse_an_interleaved_output_where_the_kernel_has_none():
    encoded = _encode(_weight(40, 96, 0.5, F16, seed=81), "bitmap")
    step, choice, _, shape_of = _sparse_step(encoded, "bitmap_gemv", 4, {"out_rows_together": 4}, with_bias=False)
    with pytest.raises(CompileError, match="step y: kernel 'bitmap_gemv' cannot write an interleaved output"):
        step_launches(step, choice, "float16", shape_of)
    encoded = _encode(_weight(40, 96, 0.5, F16, seed=82), "chunked_csr")
    step, choice, _, shape_of = _sparse_step(encoded, "chunked_csr_gemv", 4, {"out_rows_together": 4, "split_k": 2},
                                             with_bias=False)
    with pytest.raises(CompileError, match="step y: an interleaved output needs split_k 1, got 2"):
        step_launches(step, choice, "float16", shape_of)


def test_launch_specs_refuse_a_kernel_of_another_format_and_misshapen_parts():
    encoded = encode_bitmap(_weight(40, 96, 0.5, F16, seed=80), (16, 64))
    step, choice, _, shape_of = _sparse_step(encoded, "tiled_csl_gemv", 4, {}, with_bias=False)
    with pytest.raises(CompileError, match="step y: kernel 'tiled_csl_gemv' cannot read a bitmap weight"):
        step_launches(step, choice, "float16", shape_of)
    step, choice, _, shape_of = _sparse_step(encoded, "bitmap_gemv", 4, {}, with_bias=False)
    wrong = {"@w.bitmap.bits": (48, 3)}
    with pytest.raises(CompileError, match=r"step y: bitmap part bits \(@w.bitmap.bits\) has shape \(48, 3\)"):
        step_launches(step, choice, "float16", lambda ref: wrong.get(ref) or shape_of(ref))


# --- cross-compilation ----------------------------------------------------------------------------------

_CROSS_COMPILE = """
import tempfile, torch
from fdpp.codegen.build import KernelCache, compile_kernel
from fdpp.codegen.elf import read_elf_arch
from fdpp.codegen.launch_specs import step_launches
from fdpp.compiler.targets import get_target
from fdpp.runtime.schema import KernelChoice, OpKind, Step
from fdpp.runtime.sparse_formats import PARTS, encode_bitmap, encode_chunked_csr, encode_tiled_csl
weight = torch.randn(256, 512).half()
specs = {}
for encoded in (encode_bitmap(weight, (16, 256)), encode_tiled_csl(weight), encode_chunked_csr(weight)):
    refs = [f"@w.{encoded.format}.{p}" for p in PARTS[encoded.format]]
    shapes = {"x": ("batch", "seq", 512), **{r: tuple(encoded.tensors[p].shape) for r, p in
                                             zip(refs, PARTS[encoded.format])}}
    step = Step(OpKind.LINEAR, ("x", *refs), "y", {"sparse": encoded.meta()}, out_shape=("batch", "seq", 256))
    for kernel, rows in (("_gemv", 4), ("_gemm", 64)):
        choice = KernelChoice(rows, encoded.format + kernel, {"split_k": 2})
        specs.update(step_launches(step, choice, "float16", shapes.__getitem__).specs)
cache = KernelCache(tempfile.mkdtemp())
for target in ("h100", "mi300x"):
    for key, spec in sorted(specs.items()):
        built = compile_kernel(spec.fn, get_target(target), dict(spec.signature), dict(spec.constexprs), name=key,
                               num_warps=spec.num_warps, num_stages=spec.num_stages,
                               divisible_by_16=spec.divisible_by_16, cache=cache)
        assert read_elf_arch(built.binary)[1] == get_target(target).arch, (target, key)
print(len(specs), "specs")
"""


def test_sparse_kernels_cross_compile_for_cuda_and_hip():
    # compiled kernels are built in a process of their own: this one may run Triton as the interpreter
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-c", _CROSS_COMPILE], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-3000:]
    # 2 formats x CUDA/tensor cores, chunked CSR and its interleaving of x's rows, the split-K sum, and chunked
    # CSR's prefill path (the dense copy and the GEMM over it)
    assert "9 specs" in child.stdout


def test_tune_keeps_the_fastest_correct_chunked_csr_config(monkeypatch):
    """`fdcc tune --sparsity`'s measurement on small shapes (plain and gated), with a stand-in timer that ranks
    configs by their chunks per step (more is faster): each candidate runs and is checked first, so a wrong one
    is never kept (the candidate with 32 chunks is broken here on purpose), rows past SPARSE_MAX_ROWS are not
    measured, and the entry records the fastest correct config, the default's time, the density and every
    candidate timed."""
    import fdpp.compiler.tune as tune

    monkeypatch.setattr(tune, "CHUNKED_CSR_GRID", {"block_n": (2,), "chunks": (4, 8, 32), "num_warps": (4,)})
    runner = tune._chunked_csr_runner

    def ranked(x, shape, gated, config):
        run = runner(x, shape, gated, config)
        wrong = lambda t: run(t) * 2                                           # noqa: E731
        chosen = wrong if config["chunks"] == 32 else lambda t: run(t)
        chosen.chunks = config["chunks"]
        return chosen

    def stand_in_timer(run, weights):
        run(weights[0])
        return 100.0 / run.chunks if hasattr(run, "chunks") else 1.0           # the vendor GEMM: 1 us

    monkeypatch.setattr(tune, "_chunked_csr_runner", ranked)
    said = []
    entries = tune.tune_chunked_csr([(48, 512, False), (64, 320, True)], [1, 16], 0.7, "float32", said.append,
                                    device=DEVICE, time_us=stand_in_timer)
    assert [(e["n"], e["k"], e["gated"], e["m"]) for e in entries] == [(48, 512, False, 1), (64, 320, True, 1)]
    for entry in entries:
        timed = {c["config"]["chunks"]: c["us"] for c in entry["candidates"]}
        assert timed == {8: 12.5, 4: 25.0}                                   # the wrong config was never timed
        assert entry["config"]["chunks"] == 8 and entry["us"] == 12.5 and entry["default_us"] == 12.5
        assert entry["vendor_us"] == 1.0 and entry["format"] == "chunked_csr"
        assert abs(entry["density"] - 0.3) < 0.01
    assert len(said) == 2 and "2/3 configs ran" in said[0]


def test_tune_sparse_configs_default_times_the_default_alone():
    """`fdcc tune --sparse-configs default` (grid False): each shape's and row count's candidates are the wrapper's
    default config alone, the first of the whole grid's."""
    import fdpp.compiler.tune as tune

    whole = tune.chunked_csr_candidates(4096, 64, 1)
    assert len(whole) > 1 and tune.chunked_csr_candidates(4096, 64, 1, grid=False) == whole[:1]
    assert tune.chunked_csr_candidates(22016, 64, 8, grid=False) == [
        chunked_csr_linear.default_chunked_csr_config(22016, 64, 8)]
