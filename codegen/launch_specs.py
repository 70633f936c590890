"""Launch specs: for each plan step and kernel choice, which Triton kernels to compile and how to launch them.

A launch is data the runtime can follow without Triton: the compiled kernel's key, a grid of size
expressions and the argument list, each argument a tensor reference, an int size expression or a float.
Size expressions (runtime/dims.py) are over `batch`, `seq`, `rows` (= batch*seq) and `capacity` (the KV
cache's sequence capacity). Tensor references name plan buffers, weights (`@name`), this layer's cache
(`k_cache`, `v_cache`) or a per-launch workspace (`ws:name`).

The grid formulas and block sizes follow the kernels' Python wrappers in codegen/kernels; the whole-plan
test runs both through the Triton interpreter, so a spec that drifts from its kernel fails in CI.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from fdpp.codegen.kernels.activation import ACTIVATION_CODES, activation_kernel
from fdpp.codegen.kernels.attention_decode import attention_decode_kernel, combine_chunk
from fdpp.codegen.kernels.attention_prefill import attention_prefill_kernel
from fdpp.codegen.kernels.chunked_csr_linear import (DENSIFY_BLOCK_K, DENSIFY_CHUNKS, INTERLEAVE_BLOCK_K,
                                                     chunked_csr_linear_kernel, default_chunked_csr_config,
                                                     densify_kernel, interleave_rows_kernel)
from fdpp.codegen.kernels.chunked_csr_xshared import (XSHARED_SIGNATURE, chunked_csr_xshared_kernel,
                                                      default_xshared_config, xshared_constexprs, xshared_grid,
                                                      xshared_row_blocks)
from fdpp.codegen.kernels.embedding import gather_rows_kernel
from fdpp.codegen.kernels.kv_cache import write_kv_kernel
from fdpp.codegen.kernels.layer_norm import layer_norm_kernel
from fdpp.codegen.kernels.linear import gemm_kernel, gemv_kernel
from fdpp.codegen.kernels.rms_norm import rms_norm_kernel
from fdpp.codegen.kernels.rotary import rotary_kernel
from fdpp.codegen.kernels.sparse_linear import (bitmap_linear_kernel, default_num_warps, default_split_k,
                                                sum_splits_kernel, tiled_csl_linear_kernel)
from fdpp.compiler.errors import CompileError
from fdpp.runtime.dims import always_multiple_of
from fdpp.runtime.reference_ops import linear_operands
from fdpp.runtime.schema import KernelChoice, OpKind, Step
from fdpp.runtime.sparse_formats import PARTS

TRITON_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
DTYPE_NAME = {short: name for name, short in TRITON_DTYPE.items()}
# Kernel choices the runtime runs through torch rather than a compiled kernel (vendor libraries, views).
TORCH_KERNELS = frozenset({"tc_gemm", "elementwise", "view"})


def _pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@dataclass(frozen=True)
class KernelSpec:
    """One compiled specialisation: the jit function, its runtime argument types and constexprs."""

    fn: Any
    signature: tuple[tuple[str, str], ...]     # (runtime argument, triton type) in order
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int = 4
    num_stages: int = 2
    divisible_by_16: tuple[str, ...] = ()       # pointers, and int arguments that are static multiples of 16

    @property
    def key(self) -> str:
        blob = json.dumps([self.fn.__name__, self.signature, self.constexprs, self.num_warps, self.num_stages,
                           self.divisible_by_16])
        return f"{self.fn.__name__}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class StepLaunches:
    specs: dict[str, KernelSpec] = field(default_factory=dict)     # key -> spec
    launches: list[dict] = field(default_factory=list)


class _Builder:
    """Collects one step's launches; `arg` entries are (name, triton type, value reference)."""

    def __init__(self):
        self.out = StepLaunches()

    def launch(self, fn, grid, args: list[tuple[str, str, Any]], constexprs: dict, num_warps=4, num_stages=2,
               workspace: dict | None = None) -> None:
        # Like Triton's JIT, tell the compiler which ints are multiples of 16 (strides, N, K): without it,
        # loads along a row cannot be vectorised and a memory-bound kernel runs at half speed (seen on an
        # H200). Static values qualify, and size expressions that are multiples of 16 whatever the sizes
        # (e.g. a cache stride "4096 * capacity"); the launcher checks the assumption at every launch.
        divisible = tuple(name for name, ty, value in args
                          if ty.startswith("*") or (isinstance(value, (int, str)) and value != 0
                                                    and always_multiple_of(value, 16)))
        spec = KernelSpec(fn, tuple((name, ty) for name, ty, _ in args), tuple(sorted(constexprs.items())),
                          num_warps, num_stages, divisible)
        self.out.specs[spec.key] = spec
        encoded = []
        for _, ty, value in args:
            if ty.startswith("*"):
                encoded.append(["t", value])
            elif ty == "fp32":
                encoded.append(["f", float(value)])
            else:
                encoded.append(["i", value])
        record = {"kernel": spec.key, "grid": [str(g) if not isinstance(g, int) else g for g in grid],
                  "args": encoded}
        if workspace:
            record["workspace"] = workspace
        self.out.launches.append(record)


@dataclass(frozen=True)
class StepContext:
    step: Step
    dtype: str                                  # triton dtype of activations and float weights
    shape_of: Callable[[str], tuple]            # input reference -> shape (ints and size expressions)
    row_stride_of: Callable[[str], object] | None = None   # input reference -> elements between its rows

    def shape(self, index: int) -> tuple:
        return self.shape_of(self.step.inputs[index])

    def row_stride(self, index: int):
        """Elements between rows of input `index`: its own width, or the viewed buffer's for a SLICE view."""
        ref = self.step.inputs[index]
        return self.row_stride_of(ref) if self.row_stride_of else self.shape_of(ref)[-1]

    def ref(self, index: int) -> str:
        return self.step.inputs[index]

    def has_input(self, index: int) -> bool:
        return len(self.step.inputs) > index


def _static(value, what: str, step: Step) -> int:
    if not isinstance(value, int):
        raise CompileError(f"step {step.output}: {what} must be a static size, got {value!r}")
    return value


# Kernel choices that can write their output interleaved (config out_rows_together: each column's rows side by
# side, the x layout of chunked_csr_linear), so that the chunked-CSR linear reading it needs no interleave launch.
INTERLEAVED_OUTPUT_KERNELS = frozenset({"rms_norm", "layer_norm", "decode_attention_split_kv",
                                        "decode_attention_unified", "chunked_csr_gemv", "chunked_csr_xshared"})


def _out_rows(c: StepContext, choice: KernelChoice) -> dict:
    """The OUT_ROWS constexpr of a kernel that can write its output interleaved for the chunked-CSR linear that
    reads it: config out_rows_together (set by passes/interleave_sparse_inputs.py), else 1 (row-major)."""
    together = choice.config.get("out_rows_together", 1)
    if together not in (1, 2, 4, 8):
        raise CompileError(f"step {c.step.output}: out_rows_together must be 1, 2, 4 or 8, got {together}")
    return {"OUT_ROWS": together}


def _embedding(b: _Builder, c: StepContext, choice: KernelChoice) -> None:
    width_dims = c.shape(0)[1:]
    if c.step.op is OpKind.POSITION_LOOKUP and c.step.attrs.get("seq_axis") != 1:
        raise CompileError(f"step {c.step.output}: position_lookup with seq_axis {c.step.attrs['seq_axis']} "
                           f"has no GPU kernel")
    width = math.prod(_static(d, "table width", c.step) for d in width_dims)
    block = min(_pow2(width), 1024)
    dt = c.dtype
    b.launch(gather_rows_kernel, ("rows", f"cdiv({width}, {block})"), [
        ("table_ptr", f"*{dt}", c.ref(0)), ("index_ptr", "*i64", c.ref(1)), ("out_ptr", f"*{dt}", "out"),
        ("width", "i32", width), ("table_row_stride", "i32", width)], {"BLOCK_W": block})


def _row_norm(b: _Builder, c: StepContext, choice: KernelChoice) -> None:
    hidden = _static(c.shape(0)[-1], "hidden size", c.step)
    has_bias = c.step.op is OpKind.LAYER_NORM and c.has_input(2)
    kernel = rms_norm_kernel if c.step.op is OpKind.RMS_NORM else layer_norm_kernel
    dt, x, w = c.dtype, c.ref(0), c.ref(1)
    b.launch(kernel, ("rows",), [
        ("x_ptr", f"*{dt}", x), ("residual_ptr", f"*{dt}", x), ("weight_ptr", f"*{dt}", w),
        ("bias_ptr", f"*{dt}", c.ref(2) if has_bias else w), ("out_ptr", f"*{dt}", "out"),
        ("new_residual_ptr", f"*{dt}", x), ("hidden", "i32", hidden), ("x_row_stride", "i32", hidden),
        ("residual_row_stride", "i32", hidden), ("eps", "fp32", c.step.attrs["eps"])],
        {"HAS_RESIDUAL": False, "HAS_BIAS": has_bias, "BLOCK_H": _pow2(hidden), **_out_rows(c, choice)})


def _linear(b: _Builder, c: StepContext, choice: KernelChoice) -> None:
    """A dense LINEAR: inputs (x, weight, bias?, residual?); attrs gated (activation over a stacked (gate; up)
    weight) and residual (the last input is added) are fused into the kernel's epilogue."""
    if "sparse" in c.step.attrs:
        _sparse_linear(b, c, choice)
        return
    rows_w, k = (_static(d, "weight shape", c.step) for d in c.shape(1))
    n = rows_w // 2 if c.step.attrs.get("gated") else rows_w
    bias, residual = linear_operands(c.step.attrs, list(c.step.inputs[2:]))
    args, epilogue = _dense_operands(c, c.ref(1), c.dtype, n, k, bias, residual)
    if choice.kernel == "gemv":
        # defaults from the H200 tune (docs/perf): a few output features per program and long K chunks, so
        # thousands of programs stream the weights
        block_m = min(_pow2(choice.max_rows), 4)
        cfg = {"block_n": 4, "block_k": 512, "num_warps": 4, **choice.config}
        block_n, block_k = cfg["block_n"], cfg["block_k"]
        b.launch(gemv_kernel, (f"cdiv({n}, {block_n})", f"cdiv(rows, {block_m})"), args,
                 {**epilogue, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k},
                 num_warps=cfg["num_warps"], num_stages=2)
    elif choice.kernel == "flat_gemm":
        # block_m 16: the flat GEMM (M padded to 16); larger for many rows, where it is a plain tensor-core GEMM
        # that keeps the fused epilogues
        _gemm(b, c, args, epilogue, n, {"block_m": 16, "block_n": 64, "block_k": 64, **choice.config})
    elif choice.kernel != "tc_gemm":
        raise CompileError(f"step {c.step.output}: no launch spec for linear kernel {choice.kernel!r}")


def _dense_operands(c: StepContext, weight: str, weight_dtype: str, n: int, k: int, bias, residual):
    """gemv_kernel's and gemm_kernel's arguments for a LINEAR reading `weight` ([N or 2N, K], contiguous) and
    their epilogue constexprs (bias, residual, the gated activation from the step's attrs)."""
    gated = c.step.attrs.get("gated")
    dt = c.dtype
    args = [("x_ptr", f"*{dt}", c.ref(0)), ("weight_ptr", f"*{weight_dtype}", weight),
            ("bias_ptr", f"*{dt}", bias or weight), ("residual_ptr", f"*{dt}", residual or c.ref(0)),
            ("out_ptr", f"*{dt}", "out"), ("M", "i32", "rows"), ("N", "i32", n), ("K", "i32", k),
            ("x_row_stride", "i32", c.row_stride(0)), ("weight_row_stride", "i32", k)]
    epilogue = {"HAS_BIAS": bias is not None, "HAS_RESIDUAL": residual is not None, "GATED": bool(gated),
                "ACTIVATION": ACTIVATION_CODES[gated] if gated else 0}
    return args, epilogue


def _gemm(b: _Builder, c: StepContext, args: list, epilogue: dict, n: int, config: dict) -> None:
    """The gemm_kernel launch over N output features. Config: block_m, block_n, block_k, num_stages (default 3),
    num_warps (4), spread (0; profiles may set it: that many programs per block_m rows, each owning a run of
    about N / spread features, so the grid can match the multiprocessors)."""
    cfg = {"num_stages": 3, "num_warps": 4, "spread": 0, **config}
    block_m, block_n, block_k, spread = cfg["block_m"], cfg["block_n"], cfg["block_k"], cfg["spread"]
    if spread and block_n < -(-n // spread):
        raise CompileError(f"step {c.step.output}: flat_gemm spread {spread} gives runs of up to "
                           f"{-(-n // spread)} of {n} features; block_n {block_n} must hold one")
    programs_n = spread if spread else f"cdiv({n}, {block_n})"
    b.launch(gemm_kernel, (f"cdiv(rows, {block_m}) * {programs_n}",), args,
             {**epilogue, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8,
              "SPREAD": spread},
             num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


# Sparse linear kernel choices (passes/sparse_choice.py): their format and whether they use tensor cores.
SPARSE_KERNELS = {"bitmap_gemv": ("bitmap", False), "bitmap_gemm": ("bitmap", True),
                  "tiled_csl_gemv": ("tiled_csl", False), "tiled_csl_gemm": ("tiled_csl", True),
                  "chunked_csr_gemv": ("chunked_csr", False), "chunked_csr_gemm": ("chunked_csr", True),
                  "chunked_csr_xshared": ("chunked_csr", False)}


def _sparse_parts(c: StepContext, meta: dict) -> dict[str, str]:
    """The encoded weight's parts by name (inputs 1.. in PARTS order), their shapes checked against meta."""
    fmt, (np_, kp), (tile_n, tile_k) = meta["format"], meta["padded_shape"], meta["tile"]
    parts = dict(zip(PARTS[fmt], (c.ref(1 + i) for i in range(len(PARTS[fmt])))))
    tiles = (np_ // tile_n) * (kp // tile_k)
    expected = {"bits": (np_, kp // 32), "tile_offsets": (tiles + (1 if fmt == "bitmap" else 2),)}
    for index, part in enumerate(PARTS[fmt], start=1):
        shape = tuple(_static(d, f"{part} shape", c.step) for d in c.shape(index))
        if part in expected and shape != expected[part]:
            raise CompileError(f"step {c.step.output}: {fmt} part {part} ({c.ref(index)}) has shape {shape}, "
                               f"but the encoding's padded shape {tuple(meta['padded_shape'])} and tile "
                               f"{tuple(meta['tile'])} need {expected[part]}")
    return parts


def _sparse_linear(b: _Builder, c: StepContext, choice: KernelChoice) -> None:
    """A LINEAR reading an encoded weight (attrs["sparse"] = SparseWeight.meta()): inputs (x, part...,
    bias?, residual?); the gated and residual epilogues only in the chunked-CSR kernel.
    Config keys (defaults per kernel when absent): block_m, num_warps, num_stages, split_k, entry_chunk
    (Tiled-CSL). split_k > 1 adds a float32 [split_k, rows, N] workspace and a summing launch."""
    meta = c.step.attrs["sparse"]
    fmt, tensor_cores = SPARSE_KERNELS.get(choice.kernel, (None, None))
    if fmt != meta["format"]:
        readers = ", ".join(name for name, (reads, _) in SPARSE_KERNELS.items() if reads == meta["format"])
        raise CompileError(f"step {c.step.output}: kernel {choice.kernel!r} cannot read a {meta['format']} weight "
                           f"(its kernels: {readers})")
    parts = _sparse_parts(c, meta)
    if fmt == "chunked_csr":
        _chunked_csr_linear(b, c, choice, meta, parts)
        return
    if c.step.attrs.get("gated") or c.step.attrs.get("residual"):
        raise CompileError(f"step {c.step.output}: the {fmt} kernels have no gated or residual epilogue "
                           f"(only chunked_csr's has)")
    (n, k), (np_, kp), tile = meta["shape"], meta["padded_shape"], tuple(meta["tile"])
    row_blocks, tiles_k = np_ // tile[0], kp // tile[1]
    bias_index = 1 + len(PARTS[fmt])
    has_bias = c.has_input(bias_index)
    dt, wdt = c.dtype, TRITON_DTYPE[meta["dtype"]]
    block_m = min(_pow2(choice.max_rows, 16), 64) if tensor_cores else min(_pow2(choice.max_rows), 4)
    cfg = {"block_m": block_m, "num_warps": default_num_warps(tile, tensor_cores), "num_stages": 2,
           "entry_chunk": 1024, **choice.config}
    cfg.setdefault("split_k", default_split_k(row_blocks, tiles_k, cfg["num_warps"]))
    split_k, block_m = cfg["split_k"], cfg["block_m"]
    partial = {"partial": {"shape": [split_k, "rows", n], "dtype": "float32"}} if split_k > 1 else {}
    out = [("out_ptr", "*fp32", "ws:partial") if partial else ("out_ptr", f"*{dt}", "out")]
    bias = [("bias_ptr", f"*{dt}", c.ref(bias_index) if has_bias else c.ref(0))]   # never read without a bias
    sizes = [("M", "i32", "rows"), ("N", "i32", n), ("K", "i32", k), ("x_row_stride", "i32", k)]
    grid = (row_blocks, split_k, f"cdiv(rows, {block_m})")
    constexprs = {"HAS_BIAS": has_bias and split_k == 1, "BLOCK_M": block_m, "SPLIT_K": split_k,
                  "TENSOR_CORES": tensor_cores}
    if fmt == "bitmap":
        b.launch(bitmap_linear_kernel, grid, [
            ("x_ptr", f"*{dt}", c.ref(0)), ("bits_ptr", "*i32", parts["bits"]),
            ("values_ptr", f"*{wdt}", parts["values"]),
            ("tile_offsets_ptr", "*i32", parts["tile_offsets"]), *bias, *out, *sizes,
            ("words_per_row", "i32", kp // 32), ("tiles_k", "i32", tiles_k)],
            {**constexprs, "TILE_N": tile[0], "TILE_K": tile[1]}, num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"], workspace=partial)
    else:
        scratch = {"scratch": {"shape": [f"{row_blocks * split_k} * cdiv(rows, {block_m})", tile[0] * tile[1]],
                               "dtype": meta["dtype"]}}
        b.launch(tiled_csl_linear_kernel, grid, [
            ("x_ptr", f"*{dt}", c.ref(0)), ("entries_ptr", "*i32", parts["entries"]),
            ("tile_offsets_ptr", "*i32", parts["tile_offsets"]), *bias, *out, ("scratch_ptr", f"*{wdt}", "ws:scratch"),
            *sizes, ("tiles_k", "i32", tiles_k)],
            {**constexprs, "ENTRY_CHUNK": cfg["entry_chunk"]}, num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"], workspace={**scratch, **partial})
    if partial:
        _sum_splits(b, partial, bias, dt, n, split_k, has_bias)


def _sum_splits(b: _Builder, partial: dict, bias: list, dt: str, n: int, split_k: int, has_bias: bool) -> None:
    """The launch that adds a split-K kernel's float32 partial sums (+ bias) into the output."""
    block_n = min(_pow2(n), 1024)
    b.launch(sum_splits_kernel, ("rows", f"cdiv({n}, {block_n})"), [
        ("partial_ptr", "*fp32", "ws:partial"), *bias, ("out_ptr", f"*{dt}", "out"), ("M", "i32", "rows"),
        ("N", "i32", n), ("splits", "i32", split_k)], {"HAS_BIAS": has_bias, "BLOCK_N": block_n},
        workspace=partial)


def _chunked_csr_linear(b: _Builder, c: StepContext, choice: KernelChoice, meta: dict, parts: dict[str, str]) -> None:
    """A LINEAR over a chunked-CSR weight: inputs (x, values, offsets, bases, bias?, residual?), with the gated
    (weight (gate; up)) and residual epilogues fused as in the dense kernels. chunked_csr_gemv runs on CUDA cores
    over the encoding; chunked_csr_gemm (many rows) over a dense copy (_densified_gemm).
    Config keys as default_chunked_csr_config returns; rows R > 1 first interleaves x's rows into a
    [cdiv(rows, R), K, R] workspace, unless x_interleaved says x's producer wrote x so; out_rows_together writes
    the output interleaved for the next chunked-CSR linear (both set by passes/interleave_sparse_inputs.py);
    split_k > 1 adds a float32 [split_k, rows, N] workspace and a summing launch."""
    (n, k), (chunks, chunk) = meta["shape"], meta["tile"]
    for part, shape in {"values": (n, chunks * chunk), "offsets": (n, chunks * chunk), "bases": (n, chunks)}.items():
        index = 1 + PARTS["chunked_csr"].index(part)
        got = tuple(_static(d, f"{part} shape", c.step) for d in c.shape(index))
        if got != shape:
            raise CompileError(f"step {c.step.output}: chunked_csr part {part} ({c.ref(index)}) has shape {got}, "
                               f"but {chunks} chunks of {chunk} over weight shape {tuple(meta['shape'])} need {shape}")
    bias_ref, residual_ref = linear_operands(c.step.attrs, list(c.step.inputs[1 + len(PARTS["chunked_csr"]):]))
    gated = c.step.attrs.get("gated")
    out_n = n // 2 if gated else n
    dt, wdt = c.dtype, TRITON_DTYPE[meta["dtype"]]
    if choice.kernel == "chunked_csr_gemm":
        _densified_gemm(b, c, choice, parts, (n, k), (chunks, chunk), wdt, bias_ref, residual_ref)
        return
    if choice.kernel == "chunked_csr_xshared":
        _chunked_csr_xshared(b, c, choice, parts, (n, k), (chunks, chunk), wdt, bias_ref, residual_ref)
        return
    cfg = {**default_chunked_csr_config(n, chunks, choice.max_rows), **choice.config}
    split_k, together, block_n = cfg["split_k"], cfg["rows"], cfg["block_n"]
    if together not in (1, 2, 4, 8):
        raise CompileError(f"step {c.step.output}: chunked_csr rows must be 1, 2, 4 or 8, got {together}")
    if split_k > 1 and (gated or residual_ref):
        raise CompileError(f"step {c.step.output}: the gated and residual epilogues need split_k 1, got {split_k}")
    if gated and block_n % 2:
        raise CompileError(f"step {c.step.output}: a gated chunked_csr program needs an even block_n, got {block_n}")
    out_rows = _out_rows(c, choice)
    if out_rows["OUT_ROWS"] > 1 and split_k > 1:
        raise CompileError(f"step {c.step.output}: an interleaved output needs split_k 1, got {split_k}")
    if cfg.get("x_interleaved") and together == 1:
        raise CompileError(f"step {c.step.output}: x_interleaved needs rows > 1")
    block_f = block_n // 2 if gated else block_n
    partial = {"partial": {"shape": [split_k, "rows", out_n], "dtype": "float32"}} if split_k > 1 else {}
    out = [("out_ptr", "*fp32", "ws:partial") if partial else ("out_ptr", f"*{dt}", "out")]
    bias = [("bias_ptr", f"*{dt}", bias_ref or c.ref(0))]                     # never read without a bias
    residual = [("residual_ptr", f"*{dt}", residual_ref or c.ref(0))]         # nor without a residual
    x, x_block_stride, interleaved = _interleaved_x(b, c, k, together, bool(cfg.get("x_interleaved")))
    b.launch(chunked_csr_linear_kernel, (f"cdiv({out_n}, {block_f})", split_k, f"cdiv(rows, {together})"), [
        ("x_ptr", f"*{dt}", x), ("values_ptr", f"*{wdt}", parts["values"]),
        ("offsets_ptr", "*u8", parts["offsets"]), ("bases_ptr", "*i32", parts["bases"]), *bias, *residual, *out,
        ("M", "i32", "rows"), ("N", "i32", out_n), ("x_block_stride", "i32", x_block_stride),
        ("chunks_per_row", "i32", chunks)],
        {"HAS_BIAS": bias_ref is not None and split_k == 1, "HAS_RESIDUAL": residual_ref is not None,
         "GATED": bool(gated), "ACTIVATION": ACTIVATION_CODES[gated] if gated else 0, "ROWS": together,
         "BLOCK_N": block_n, "BLOCK_F": block_f,
         "CHUNKS": cfg["chunks"], "CHUNK": chunk, "SPLIT_K": split_k, "VECTOR": cfg["vector"],
         "PREFETCH": cfg["prefetch"], **out_rows},
        num_warps=cfg["num_warps"], num_stages=1, workspace={**interleaved, **partial})
    if partial:
        _sum_splits(b, partial, bias, dt, out_n, split_k, bias_ref is not None)


def _interleaved_x(b: _Builder, c: StepContext, k: int, together: int, written_so: bool) -> tuple[str, Any, dict]:
    """x for a CUDA-core chunked-CSR kernel gathering `together` rows at once: (reference, elements between its
    blocks of rows, workspace). As is for one row; as its producer wrote it (written_so: each column's rows side
    by side); else a launch that interleaves it into a workspace first."""
    x, x_block_stride = c.ref(0), c.row_stride(0)
    if written_so:
        return x, k * together, {}
    if together == 1:
        return x, x_block_stride, {}
    dt = c.dtype
    interleaved = {"x_interleaved": {"shape": [f"cdiv(rows, {together})", k, together], "dtype": DTYPE_NAME[dt]}}
    b.launch(interleave_rows_kernel, (f"cdiv(rows, {together})", f"cdiv({k}, {INTERLEAVE_BLOCK_K})"), [
        ("x_ptr", f"*{dt}", x), ("out_ptr", f"*{dt}", "ws:x_interleaved"), ("M", "i32", "rows"),
        ("K", "i32", k), ("x_row_stride", "i32", x_block_stride)],
        {"ROWS": together, "BLOCK_K": INTERLEAVE_BLOCK_K}, workspace=interleaved)
    return "ws:x_interleaved", k * together, interleaved


def _chunked_csr_xshared(b: _Builder, c: StepContext, choice: KernelChoice, parts: dict[str, str],
                         shape: tuple[int, int], tile: tuple[int, int], wdt: str, bias_ref, residual_ref) -> None:
    """chunked_csr_xshared: the CUDA-core chunked-CSR linear with x staged in shared memory (a Gluon kernel, 1-8
    rows of x gathered together; codegen/kernels/chunked_csr_xshared.py), with the gated, residual and bias
    epilogues and the output interleaved for the next chunked-CSR linear. Config keys as default_xshared_config
    returns, plus multiprocessors (the target's, for the persistent grid; passes/sparse_choice.py records it),
    x_interleaved and out_rows_together (passes/interleave_sparse_inputs.py)."""
    (n, k), (chunks, chunk) = shape, tile
    where = f"step {c.step.output}: chunked_csr_xshared"
    if chunked_csr_xshared_kernel is None:
        import triton
        raise CompileError(f"{where} needs a Triton whose Gluon has the shared-memory gather (3.9 has it; this is "
                           f"{triton.__version__}); compile where it is, or without that kernel choice")
    if c.dtype != "fp16" or wdt != "fp16" or chunk != 32:
        raise CompileError(f"{where} reads float16 x and a float16 encoding of 32-entry chunks, got x {c.dtype}, "
                           f"weight {wdt}, chunk {chunk}")
    gated = c.step.attrs.get("gated")
    out_n = n // 2 if gated else n
    cfg = {**default_xshared_config(n, k, choice.max_rows), **choice.config}
    if "multiprocessors" not in cfg:
        raise CompileError(f"{where}: the choice's config names no multiprocessors (the dataflow records the target's)")
    together = cfg["rows"]
    try:
        constexprs = xshared_constexprs(k, cfg, has_bias=bias_ref is not None, has_residual=residual_ref is not None,
                                        activation=ACTIVATION_CODES[gated] if gated else None,
                                        out_rows=_out_rows(c, choice)["OUT_ROWS"])
    except ValueError as error:
        raise CompileError(f"step {c.step.output}: {error}") from None
    x, x_block_stride, interleaved = _interleaved_x(b, c, k, together, bool(cfg.get("x_interleaved")))
    if together == 1 and x_block_stride != k:
        raise CompileError(f"{where} reads one row of x at a time from rows of {k} contiguous values; x's rows are "
                           f"{x_block_stride} apart (a view): use chunked_csr_gemv for this step")
    values = {"x_ptr": x, "values_ptr": parts["values"], "offsets_ptr": parts["offsets"], "bases_ptr": parts["bases"],
              "bias_ptr": bias_ref or c.ref(0), "residual_ptr": residual_ref or c.ref(0),   # never read without them
              "out_ptr": "out", "M": "rows", "N": out_n, "chunks_per_row": chunks,
              "row_blocks": xshared_row_blocks(out_n, bool(gated), cfg)}
    b.launch(chunked_csr_xshared_kernel, (xshared_grid(out_n, bool(gated), cfg, cfg["multiprocessors"]),
                                          f"cdiv(rows, {together})"),
             [(name, kind, values[name]) for name, kind in XSHARED_SIGNATURE.items()],   # the kernel's order
             constexprs, num_warps=cfg["num_warps"], num_stages=1, workspace=interleaved)


def _densified_gemm(b: _Builder, c: StepContext, choice: KernelChoice, parts: dict[str, str], shape: tuple[int, int],
                    tile: tuple[int, int], wdt: str, bias_ref, residual_ref) -> None:
    """chunked_csr_gemm, for many rows of x (prefill): the weight written out dense into a workspace
    (densify_kernel: the encoded bytes read, the dense ones written), then the tensor-core GEMM with the
    linear's fused epilogues over it (gemm_kernel, 64-row tiles). The workspace lives for the step only."""
    (n, k), (chunks, chunk) = shape, tile
    out_n = n // 2 if c.step.attrs.get("gated") else n
    dense = {"dense_weight": {"shape": [n, k], "dtype": DTYPE_NAME[wdt]}}
    b.launch(densify_kernel, (n,), [
        ("values_ptr", f"*{wdt}", parts["values"]), ("offsets_ptr", "*u8", parts["offsets"]),
        ("bases_ptr", "*i32", parts["bases"]), ("out_ptr", f"*{wdt}", "ws:dense_weight"), ("K", "i32", k),
        ("chunks_per_row", "i32", chunks)], {"CHUNK": chunk, "CHUNKS": DENSIFY_CHUNKS, "BLOCK_K": DENSIFY_BLOCK_K},
        workspace=dense)
    args, epilogue = _dense_operands(c, "ws:dense_weight", wdt, out_n, k, bias_ref, residual_ref)
    # 64 x 64 x 64 tiles over 3 stages: 48 KB of shared memory, under every target's limit (AMD's LDS: 64 KB)
    _gemm(b, c, args, epilogue, out_n, {"block_m": 64, "block_n": 64, "block_k": 64, **choice.config})


def _launch_rotary(b: _Builder, c: StepContext, index: int, out: str, head_dim: int, cos: str, sin: str,
                   workspace: dict | None = None) -> None:
    """Rotate input `index` of the step ([B, S, H*D], row stride from the plan) into `out` (contiguous rows)."""
    width = _static(c.shape(index)[-1], "rotary width", c.step)
    heads = width // head_dim
    block_heads = min(_pow2(heads), 16)
    dt = c.dtype
    b.launch(rotary_kernel, ("rows", f"cdiv({heads}, {block_heads})"), [
        ("x_ptr", f"*{dt}", c.ref(index)), ("out_ptr", f"*{dt}", out), ("cos_ptr", f"*{dt}", cos),
        ("sin_ptr", f"*{dt}", sin), ("positions_ptr", "*i64", "positions"), ("seq_len", "i32", "seq"),
        ("n_heads", "i32", heads), ("x_stride_batch", "i32", f"seq * {c.row_stride(index)}"),
        ("x_stride_seq", "i32", c.row_stride(index)),
        ("x_stride_head", "i32", head_dim), ("out_stride_batch", "i32", f"seq * {width}"),
        ("out_stride_seq", "i32", width), ("cos_stride_batch", "i32", f"seq * {head_dim}"),
        ("cos_stride_seq", "i32", head_dim), ("positions_stride_batch", "i32", 0)],
        {"HEAD_DIM": head_dim, "BLOCK_HALF": _pow2(head_dim // 2), "BLOCK_HEADS": block_heads,
         "BY_POSITION": False}, workspace=workspace)


def _rotary(b: _Builder, c: StepContext, choice: KernelChoice) -> None:
    _launch_rotary(b, c, 0, "out", c.step.attrs["head_dim"], c.ref(1), c.ref(2))


def _rotary_into_workspace(b: _Builder, c: StepContext, index: int, name: str, width: int,
                           head_dim: int) -> tuple[str, int]:
    """An attention step's input `index` (q or k) rotated with its cos/sin (inputs 4, 5) into workspace `name`
    [rows, width]; returns (its ref, its row stride)."""
    _launch_rotary(b, c, index, f"ws:{name}", head_dim, c.ref(4), c.ref(5),
                   workspace={name: {"shape": ["rows", width], "dtype": DTYPE_NAME[c.dtype]}})
    return f"ws:{name}", width


def _write_kv(b: _Builder, c: StepContext, kv_heads: int, head_dim: int, k: str, k_row_stride) -> None:
    """The prompt's keys (`k`, rows k_row_stride apart) and values (input 2) into the cache at positions."""
    dt = c.dtype
    block_heads = min(_pow2(kv_heads), 16)
    b.launch(write_kv_kernel, ("rows", f"cdiv({kv_heads}, {block_heads})"), [
        ("k_ptr", f"*{dt}", k), ("v_ptr", f"*{dt}", c.ref(2)), ("k_cache_ptr", f"*{dt}", "k_cache"),
        ("v_cache_ptr", f"*{dt}", "v_cache"), ("positions_ptr", "*i64", c.ref(3)), ("seq_len", "i32", "seq"),
        ("n_kv_heads", "i32", kv_heads), ("k_stride_batch", "i32", f"seq * {k_row_stride}"),
        ("k_stride_seq", "i32", k_row_stride), ("v_stride_batch", "i32", f"seq * {c.row_stride(2)}"),
        ("v_stride_seq", "i32", c.row_stride(2)),
        ("cache_stride_batch", "i32", f"{kv_heads * head_dim} * capacity"),
        ("cache_stride_head", "i32", f"{head_dim} * capacity"), ("cache_stride_seq", "i32", head_dim)],
        {"HEAD_DIM": head_dim, "BLOCK_D": _pow2(head_dim), "BLOCK_HEADS": block_heads})


def _unified(step: Step) -> tuple[float, float, float]:
    """(φ, safe_low, safe_high) of a unified-max attention step (calibrate_softmax's attr)."""
    softmax = step.attrs.get("softmax", {})
    if softmax.get("scheme") != "unified":
        raise CompileError(f"step {step.output}: a unified-max kernel was chosen without a calibrated phi")
    return float(softmax["phi"]), float(softmax["safe_range"][0]), float(softmax["safe_range"][1])


# Zeroed once per executor and left zero by every launch: per-(sequence, KV head) arrival counters, and the
# running count of rows the unified-max kernels recomputed (shared by every layer).
FALLBACKS = {"shape": [1], "dtype": "int32", "persistent": True}


def _attention(b: _Builder, c: StepContext, choice: KernelChoice) -> None:
    a = c.step.attrs
    heads, kv_heads, head_dim, scale = a["n_heads"], a["n_kv_heads"], a["head_dim"], a["scale"]
    group = heads // kv_heads
    dt = c.dtype
    cache_strides = [("cache_stride_batch", "i32", f"{kv_heads * head_dim} * capacity"),
                     ("cache_stride_head", "i32", f"{head_dim} * capacity"), ("cache_stride_seq", "i32", head_dim)]
    unified = choice.kernel in ("decode_attention_unified", "prefill_attention_unified")
    phi, safe_low, safe_high = _unified(c.step) if unified else (0.0, 0.0, 0.0)
    softmax_args = [("phi", "fp32", phi), ("safe_low", "fp32", safe_low), ("safe_high", "fp32", safe_high)]
    rotary = bool(a.get("rotary"))            # inputs (q, k, v, positions, cos, sin): q and k arrive unrotated
    if choice.kernel in ("decode_attention_split_kv", "decode_attention_unified"):
        # the decode kernel writes the step's key and value into the cache itself (WRITE_KV)
        splits, min_keys, block_n = (choice.config["splits"], choice.config["min_split_keys"],
                                     choice.config["block_n"])
        workspace = {"partial_out": {"shape": ["batch", heads, splits, head_dim], "dtype": "float32"},
                     "partial_max": {"shape": ["batch", heads, splits], "dtype": "float32"},
                     "partial_sum": {"shape": ["batch", heads, splits], "dtype": "float32"},
                     "arrivals": {"shape": ["batch", kv_heads], "dtype": "int32", "persistent": True},
                     "softmax_fallbacks": FALLBACKS}
        b.launch(attention_decode_kernel, ("batch", kv_heads, splits), [
            ("q_ptr", f"*{dt}", c.ref(0)), ("k_cache_ptr", f"*{dt}", "k_cache"), ("v_cache_ptr", f"*{dt}", "v_cache"),
            ("positions_ptr", "*i64", c.ref(3)), ("out_ptr", f"*{dt}", "out"),
            ("partial_out_ptr", "*fp32", "ws:partial_out"), ("partial_max_ptr", "*fp32", "ws:partial_max"),
            ("partial_sum_ptr", "*fp32", "ws:partial_sum"), ("arrivals_ptr", "*i32", "ws:arrivals"),
            ("fallbacks_ptr", "*i32", "ws:softmax_fallbacks"), ("new_k_ptr", f"*{dt}", c.ref(1)),
            ("new_v_ptr", f"*{dt}", c.ref(2)), ("cos_ptr", f"*{dt}", c.ref(4) if rotary else c.ref(0)),
            ("sin_ptr", f"*{dt}", c.ref(5) if rotary else c.ref(0)),          # read only when rotary
            ("new_k_stride_batch", "i32", c.row_stride(1)), ("new_v_stride_batch", "i32", c.row_stride(2)),
            ("rotary_stride_batch", "i32", head_dim), ("n_heads", "i32", heads),
            ("n_kv_heads", "i32", kv_heads), ("splits", "i32", splits), ("min_split_keys", "i32", min_keys),
            ("scale", "fp32", scale), *softmax_args, ("q_stride_batch", "i32", c.row_stride(0)),
            ("positions_stride", "i32", 1), *cache_strides],
            {"GROUP": group, "BLOCK_GROUP": _pow2(group, 16), "HEAD_DIM": head_dim, "BLOCK_D": _pow2(head_dim, 16),
             "BLOCK_N": block_n, "BLOCK_SPLITS": _pow2(splits), "GROUP_P2": _pow2(group),
             "SPLIT_CHUNK": combine_chunk(group, splits), "UNIFIED": unified, "WRITE_KV": True, "ROTARY": rotary,
             **_out_rows(c, choice)},
            num_stages=choice.config.get("num_stages", 2), workspace=workspace)
    elif choice.kernel in ("prefill_attention", "prefill_attention_unified"):
        q, q_row_stride, k, k_row_stride = c.ref(0), c.row_stride(0), c.ref(1), c.row_stride(1)
        if rotary:        # the prompt's q and k rotated first, into workspaces of this step
            q, q_row_stride = _rotary_into_workspace(b, c, 0, "q_rotated", heads * head_dim, head_dim)
            k, k_row_stride = _rotary_into_workspace(b, c, 1, "k_rotated", kv_heads * head_dim, head_dim)
        _write_kv(b, c, kv_heads, head_dim, k, k_row_stride)
        b.launch(attention_prefill_kernel, ("cdiv(seq, 64)", f"batch * {heads}"), [
            ("q_ptr", f"*{dt}", q), ("k_ptr", f"*{dt}", "k_cache"), ("v_ptr", f"*{dt}", "v_cache"),
            ("positions_ptr", "*i64", c.ref(3)), ("out_ptr", f"*{dt}", "out"),
            ("fallbacks_ptr", "*i32", "ws:softmax_fallbacks"), ("seq_len", "i32", "seq"),
            ("n_heads", "i32", heads), ("scale", "fp32", scale), *softmax_args,
            ("q_stride_batch", "i32", f"seq * {q_row_stride}"), ("q_stride_seq", "i32", q_row_stride),
            ("kv_stride_batch", "i32", f"{kv_heads * head_dim} * capacity"),
            ("kv_stride_head", "i32", f"{head_dim} * capacity"), ("kv_stride_seq", "i32", head_dim)],
            {"GROUP": group, "HEAD_DIM": head_dim, "BLOCK_D": _pow2(head_dim, 16), "BLOCK_M": 64, "BLOCK_N": 64,
             "KEYS_IN_CACHE": True, "UNIFIED": unified}, num_stages=2, workspace={"softmax_fallbacks": FALLBACKS})
    else:
        raise CompileError(f"step {c.step.output}: no launch spec for attention kernel {choice.kernel!r}")


def _activation(b: _Builder, c: StepContext, choice: KernelChoice) -> None:
    gated = c.step.op is OpKind.GATED_ACT
    kind = c.step.attrs["activation" if gated else "kind"]
    columns = _static(c.shape(0)[-1], "activation width", c.step)
    block = min(_pow2(columns), 1024)
    dt = c.dtype
    up = c.ref(1) if gated else c.ref(0)
    b.launch(activation_kernel, ("rows", f"cdiv({columns}, {block})"), [
        ("x_ptr", f"*{dt}", c.ref(0)), ("up_ptr", f"*{dt}", up), ("out_ptr", f"*{dt}", "out"),
        ("n_columns", "i32", columns), ("x_row_stride", "i32", columns), ("up_row_stride", "i32", columns)],
        {"KIND": ACTIVATION_CODES[kind], "GATED": gated, "BLOCK": block})


_SPECS: dict[OpKind, Callable[[_Builder, StepContext, KernelChoice], None]] = {
    OpKind.EMBEDDING: _embedding, OpKind.POSITION_LOOKUP: _embedding, OpKind.RMS_NORM: _row_norm,
    OpKind.LAYER_NORM: _row_norm, OpKind.LINEAR: _linear, OpKind.ROTARY: _rotary, OpKind.ATTENTION: _attention,
    OpKind.GATED_ACT: _activation, OpKind.ACTIVATION: _activation,
}


def step_launches(step: Step, choice: KernelChoice, dtype: str, shape_of: Callable[[str], tuple],
                  row_stride_of: Callable[[str], object] | None = None) -> StepLaunches:
    """The kernels to compile and the launches to record for one step under one kernel choice."""
    if choice.config.get("out_rows_together", 1) != 1 and choice.kernel not in INTERLEAVED_OUTPUT_KERNELS:
        raise CompileError(f"step {step.output}: kernel {choice.kernel!r} cannot write an interleaved output "
                           f"(out_rows_together); only {sorted(INTERLEAVED_OUTPUT_KERNELS)} can")
    if choice.kernel in TORCH_KERNELS or step.op not in _SPECS:
        return StepLaunches()
    builder = _Builder()
    _SPECS[step.op](builder, StepContext(step, TRITON_DTYPE[dtype], shape_of, row_stride_of), choice)
    return builder.out
