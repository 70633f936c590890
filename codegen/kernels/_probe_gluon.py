"""A probe of Gluon's shared-memory scatter (Triton 3.9 here has it; the GPU machine's 3.6 does not), which a
Flash-LLM-style sparse kernel needs: nonzeros stored into a zeroed shared-memory tile, then read as dense. Built
on the CPU machine by scripts/prebuild_probe.py and run on a GPU by scripts/gpu_check_launcher.py, not used by any
model yet.

scatter_tile: out[r, columns[r, e]] = values[r, e] for each program's ROWS rows, zero elsewhere.
"""

from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    GLUON_SHARED_SCATTER = hasattr(gl.shared_memory_descriptor, "scatter")
except ImportError:
    GLUON_SHARED_SCATTER = False

SCATTER_TILE_SIGNATURE = {"values_ptr": "*fp16", "columns_ptr": "*i32", "out_ptr": "*fp16"}
SCATTER_TILE_CONSTEXPRS = {"ROWS": 64, "ENTRIES": 32, "COLUMNS": 128}
SCATTER_TILE_WARPS = 4      # the layouts below spread rows over 4 warps

if GLUON_SHARED_SCATTER:
    @gluon.jit
    def scatter_tile_kernel(
        values_ptr,         # [rows, ENTRIES] fp16: each row's entries
        columns_ptr,        # [rows, ENTRIES] int32: their columns, distinct within a row, < COLUMNS
        out_ptr,            # [rows, COLUMNS] fp16, contiguous: the dense rows
        ROWS: gl.constexpr, ENTRIES: gl.constexpr, COLUMNS: gl.constexpr,
    ):
        """Grid (rows / ROWS,): the program's tile zeroed in shared memory, its entries scattered in (one warp
        a chunk of 32 entries), read back in a vector-friendly layout and stored."""
        entry_layout: gl.constexpr = gl.BlockedLayout([1, 1], [1, 32], [4, 1], [1, 0])
        tile_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        first = gl.program_id(0) * ROWS
        rows = gl.expand_dims(gl.arange(0, ROWS, layout=gl.SliceLayout(1, entry_layout)), 1)      # [ROWS, 1]
        entries = gl.expand_dims(gl.arange(0, ENTRIES, layout=gl.SliceLayout(0, entry_layout)), 0)  # [1, ENTRIES]
        at = (first + rows) * ENTRIES + entries
        values = gl.load(values_ptr + at)
        columns = gl.load(columns_ptr + at)
        tile = gl.allocate_shared_memory(gl.float16, [ROWS, COLUMNS], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        tile.store(gl.zeros([ROWS, COLUMNS], gl.float16, tile_layout))
        gl.barrier()
        tile.scatter(values, columns, 1)
        gl.barrier()
        dense = tile.load(tile_layout)
        out_rows = gl.expand_dims(gl.arange(0, ROWS, layout=gl.SliceLayout(1, tile_layout)), 1)
        out_columns = gl.expand_dims(gl.arange(0, COLUMNS, layout=gl.SliceLayout(0, tile_layout)), 0)
        gl.store(out_ptr + (first + out_rows) * COLUMNS + out_columns, dense)
