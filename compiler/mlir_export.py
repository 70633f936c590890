"""`fdcc compile --emit-mlir FILE`: the model's traced graph as MLIR in torch-mlir's torch dialect.

The graph is the one the torch frontend imports (torch.export of the logits function, batch and sequence
length dynamic), lowered by torch-mlir's FX importer to the torch backend contract. It is written for
inspection and for other MLIR tools; fdpp's own compile does not read it. Weights of more than
`_INLINE_ELEMENTS` elements keep their `dense_resource<...>` reference but their blob is left out of the
file's resource section (the file still parses): the bundle holds them, and a 7B model's weights printed
as MLIR text would be tens of gigabytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from fdpp.compiler.errors import CompileError
from fdpp.compiler.frontend_torch import export_model
from fdpp.compiler.options import CompileOptions
from fdpp.compiler.sources import resolve_source

_INLINE_ELEMENTS = 4096          # norms and biases stay readable; matrices are elided
_NEEDS_TORCH_MLIR = ("--emit-mlir needs torch-mlir: pip install fdpp[mlir] "
                     "(torch-mlir wheels exist only for some torch versions)")


def emit_mlir(source: str, path: Path, options: CompileOptions, say: Callable[[str], None]) -> Path:
    """Trace SOURCE as `fdcc compile` does and write it to `path` as torch-dialect MLIR."""
    try:
        from torch_mlir import fx
        from torch_mlir.extras.fx_decomp_util import get_decomposition_table
    except ImportError:
        raise CompileError(_NEEDS_TORCH_MLIR) from None
    loaded = resolve_source(source, options.weights, options.seed, getattr(torch, options.dtype))
    if loaded.model is None:
        raise CompileError("--emit-mlir exports a PyTorch model; for an .onnx file use torch-mlir's ONNX "
                           "importer instead (python -m torch_mlir.tools.import_onnx)")
    if any(p.is_meta for p in loaded.model.parameters()):
        raise CompileError("--emit-mlir needs the model's weights; --weights random makes them only while "
                           "writing the bundle (pass a model directory, a .gguf file or a cached built-in)")
    say(f"  tracing {loaded.description} for MLIR")
    try:
        program = export_model(loaded.model, options.max_batch, options.max_seq_len)
        program = program.run_decompositions(get_decomposition_table())
        # torch-mlir looks buffers up in the state dict alone, and non-persistent ones (rotary inv_freq) are
        # in the program's constants; they go in after the decompositions, whose checks refuse them there
        for name in program.graph_signature.inputs_to_buffers.values():
            if name not in program.state_dict and name in program.constants:
                program.state_dict[name] = program.constants[name]
        module = fx.export_and_import(program, output_type="torch", decomposition_table={}, func_name="forward")
    except CompileError:
        raise
    except Exception as e:  # torch-mlir raises many types; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"torch-mlir could not import the traced graph: {first}") from e
    path = Path(path)
    with path.open("w") as f:
        module.operation.print(file=f, large_elements_limit=_INLINE_ELEMENTS,
                               large_resource_limit=_INLINE_ELEMENTS * 8)   # hex characters of float32
    say(f"  wrote {path} ({path.stat().st_size / 1e3:.0f} kB of MLIR, torch dialect)")
    return path
