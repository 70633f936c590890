"""Import an ONNX decoder LM into ir.Graph: the same IR the torch frontend produces for the same model.

Made for what `torch.onnx.export(wrapper, (input_ids,), dynamo=True, dynamic_shapes=...)` writes for a
Hugging Face causal LM wrapped to return logits only (torch 2.13, onnxscript 0.7; opsets 18 to 23, with
or without the exporter's optimizer):

- Sizes are computed inside the graph (Shape -> Slice -> Concat -> Reshape). They are evaluated here over
  the symbols batch and seq (the input's two dims, whatever their dim_params are called) and land in attrs
  as the torch frontend's Dims. Types come from that evaluation, not from the file's value_info, which
  leaves the exporter's own decompositions untyped.
- Linear weights are constant-folded into transposed initializers named `val_N`. The node's metadata
  (`pkg.torch.onnx.fx_node`) names the aten.linear's weight placeholder, the graph's metadata (the export
  signature) that placeholder's state-dict name: the weight comes back as [N, K] under that name.
  `MatMul(x, Transpose(W))`, `Gemm(transB=1)` and a bias `Add` after a MatMul become one LINEAR.
- Where the exporter decomposes an aten op that the IR has as one op, the op is raised back at its last
  ONNX node, every piece checked; what the raise leaves behind is dead and dropped:
  scaled_dot_product_attention (scaled MatMul, Add mask, Softmax, IsNaN-Where, MatMul) -> SDPA (with the
  additive mask the file computes); diff with prepend (Concat, two Slices, Sub) -> DIFF;
  x * Sigmoid(x) -> SILU; Reciprocal(Sqrt(x)) -> RSQRT.
- Opset 23's fused ops go the other way: Attention becomes SDPA, RMSNormalization and RotaryEmbedding are
  written out as Hugging Face computes them, for the passes to fuse as they do the torch frontend's IR.
  Equal nodes are made once (the exporter repeats cos(freqs) for every RotaryEmbedding).
- Weight keys are state-dict names without the wrapper's attribute: the module path of the first
  `transformers.` class in the nodes' `namespace` metadata ("m." for `self.m = model`) is cut. The
  exporter merges equal initializers, so equal weights (freshly initialised norms, say) share one key.

Every ONNX op goes through `_OPS` (compiler/onnx/op_table.py); an op missing there stops the import with
UnsupportedOpError naming the ONNX node and the model source line. A tokenizer.json beside the .onnx file
is read by `tokenizer_json_beside`, for the driver to put in the bundle. The parts live in compiler/onnx/
(its __init__ lists them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fdpp.compiler.errors import CompileError
from fdpp.compiler.ir import Graph

try:
    import onnx
except ImportError:  # only .onnx sources need it; import_onnx says so
    onnx = None
else:
    from fdpp.compiler.onnx.importer import _Importer   # the subpackage imports onnx unguarded


def import_onnx(path: Path, options: Any = None) -> Graph:
    """ONNX file -> ir.Graph with its weights (a DictWeightStore keyed by state-dict names).

    `options` (CompileOptions) is taken for the driver's sake; the envelope is applied by later passes."""
    if onnx is None:
        raise CompileError("importing .onnx files needs the onnx package: pip install onnx")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf and external-data errors come in many types
        raise CompileError(f"cannot read the ONNX file {path}: {str(e).strip().splitlines()[0]}") from None
    return _Importer(model.graph).run()


def tokenizer_json_beside(path: Path) -> str | None:
    """The text of a tokenizer.json in the .onnx file's folder, if there is one."""
    candidate = Path(path).parent / "tokenizer.json"
    return candidate.read_text() if candidate.is_file() else None
