"""EncodeSparseWeights: re-encode each pruned weight the dataflow chose to store sparse (Tiled-CSL or bitmap).

The pruned weight is cast to the bundle dtype (so the encoded bits are exactly the bundle's weight), encoded
by runtime/sparse_formats.py (chunked CSR with each chunk's entries bank-spread, `spread_banks`, as
chunked_csr_xshared wants them; the L1 kernel measured the same at 1-2 rows and faster at 8), and the LINEAR is
rewired to read the encoding's parts as weights named `<param>.<format>.<part>`: inputs become (x, part, part,
..., [bias]) in the format's PARTS order, and the `sparse` attr holds the encoding's facts (format, shape,
padding, tile, nonzeros, density, bytes) that the kernels and executors need. Encoded tensors are held in memory
(they are smaller than the dense weights they replace); dense weights stay in the lazy store.

Needs: select_kernels (the `sparse_format` attr). Guarantees: no LINEAR with a sparse `sparse_format` reads a
dense weight.
"""

from __future__ import annotations

import torch

from fdpp.compiler.ir import Graph, GraphEditor, Node, Op, OverlayWeightStore, TensorType
from fdpp.passes.pass_manager import PassContext, PassResult
from fdpp.passes.weight_jobs import map_weights
from fdpp.runtime.sparse_formats import PARTS, SparseWeight, encode, tensor_name


def encode_sparse_weights(graph: Graph, ctx: PassContext) -> PassResult:
    dtype = getattr(torch, ctx.options.dtype)
    sparse = [node for node in graph.nodes if node.op is Op.LINEAR and node.attr("sparse_format")
              and node.attr("sparse_format")["format"] != "dense"]
    chosen: dict[str, tuple[str, tuple[int, int] | None]] = {}     # weight -> (format, tile), first linear's
    for node in sparse:
        decision = node.attr("sparse_format")
        chosen.setdefault(node.attr("pruned")["weight"],
                          (decision["format"], tuple(decision["tile"]) if decision["tile"] else None))
    if not sparse:
        return PassResult(graph, {})

    def encode_one(key: str) -> SparseWeight:
        fmt, tile = chosen[key]
        # chunked CSR always bank-spread, whatever the kernels and target: the weights of a multi-target compile
        # are written once, so they must not depend on the target
        return encode(graph.weights.get(key).to(dtype), fmt, tile, spread=fmt == "chunked_csr")
    encoded = dict(zip(chosen, map_weights(encode_one, chosen, ctx.counter("encoded weights"))))

    edit = GraphEditor(graph)
    tensors: dict[str, torch.Tensor] = {}
    params: dict[str, str] = {}                  # tensor name -> PARAM node name
    for node in sparse:
        fmt, key = node.attr("sparse_format")["format"], node.attr("pruned")["weight"]
        weight = encoded[key]
        if tensor_name(key, fmt, PARTS[fmt][0]) not in params:     # the weight's first linear adds its parts
            for part, tensor in weight.tensors.items():
                name = tensor_name(key, fmt, part)
                tensors[name] = tensor
                params[name] = edit.add(Node(name.replace(".", "_"), Op.PARAM, (), TensorType(
                    tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")), {"key": name}), before=node.name)
        parts = tuple(params[tensor_name(key, fmt, part)] for part in PARTS[fmt])
        edit.update(node.with_(inputs=(node.inputs[0], *parts, *node.inputs[2:]),
                               attrs={**node.attrs, "sparse": weight.meta()}))
    out = edit.commit().with_(weights=OverlayWeightStore(graph.weights, tensors))
    return PassResult(out, {f"encoded {fmt}": sum(1 for w in encoded.values() if w.format == fmt)
                            for fmt in PARTS})
