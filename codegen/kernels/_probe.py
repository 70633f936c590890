"""Two tiny kernels that exercise the launch ABI; used by the cross-compilation tests and
scripts/gpu_check_launcher.py, not by any model.

scale_rows: out[r, c] = x[r, c] * scale[r] * alpha. Pointers of two element types, an i32, an i64, an fp32
scalar and a constexpr, so a wrong packing of any of them shows as wrong numbers.
copy_tiles (sm_90+): a copy through device-side tensor descriptors (TMA), which makes triton ask for a
global_scratch buffer (256 bytes per program on sm_90), so the launcher's scratch handling is exercised;
with large tiles it also needs more than 48 KiB of shared memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def scale_rows_kernel(
    x_ptr,          # *fp16 [rows, n_cols], rows `row_stride` elements apart
    scale_ptr,      # *fp32 [rows]
    out_ptr,        # *fp16 [rows, n_cols], contiguous
    n_cols,         # i32
    row_stride,     # i64: elements between rows of x, to exercise a 64-bit scalar
    alpha,          # fp32
    BLOCK: tl.constexpr,  # columns per program; >= n_cols
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * row_stride + cols, mask=mask).to(tl.float32)
    scale = tl.load(scale_ptr + row)
    tl.store(out_ptr + row * n_cols + cols, (x * scale * alpha).to(tl.float16), mask=mask)


# The runtime parameters in order (constexprs go to CONSTEXPRS); what codegen.build.compile_kernel takes.
SIGNATURE = {"x_ptr": "*fp16", "scale_ptr": "*fp32", "out_ptr": "*fp16",
             "n_cols": "i32", "row_stride": "i64", "alpha": "fp32"}
CONSTEXPRS = {"BLOCK": 256}


def scale_rows_reference(x: torch.Tensor, scale: torch.Tensor, alpha: float) -> torch.Tensor:
    """The torch meaning of the kernel; x [rows, n_cols] fp16, scale [rows] fp32."""
    return (x.float() * scale[:, None] * alpha).to(torch.float16)


@triton.jit
def copy_tiles_kernel(
    x_ptr,          # *fp16 [rows, cols], contiguous; cols * 2 bytes a multiple of 16 (TMA)
    out_ptr,        # *fp16 [rows, cols], contiguous
    rows,           # i32
    cols,           # i32
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    source = tl.make_tensor_descriptor(x_ptr, shape=[rows, cols], strides=[cols, 1],
                                       block_shape=[BLOCK_ROWS, BLOCK_COLS])
    target = tl.make_tensor_descriptor(out_ptr, shape=[rows, cols], strides=[cols, 1],
                                       block_shape=[BLOCK_ROWS, BLOCK_COLS])
    row, col = tl.program_id(0) * BLOCK_ROWS, tl.program_id(1) * BLOCK_COLS
    target.store([row, col], source.load([row, col]))


COPY_TILES_SIGNATURE = {"x_ptr": "*fp16", "out_ptr": "*fp16", "rows": "i32", "cols": "i32"}
COPY_TILES_CONSTEXPRS = {"BLOCK_ROWS": 32, "BLOCK_COLS": 64}
# 64 KiB tiles: above the 48 KiB a kernel gets without opting in to more dynamic shared memory
COPY_TILES_LARGE_CONSTEXPRS = {"BLOCK_ROWS": 128, "BLOCK_COLS": 256}
