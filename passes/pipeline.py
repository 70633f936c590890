"""The one ordered list of passes. Each step has its reason; the order lives here and nowhere else."""

from __future__ import annotations

from fdpp.passes.calibrate_softmax import calibrate_softmax
from fdpp.passes.canonicalize import canonicalize
from fdpp.passes.encode_sparse_weights import encode_sparse_weights
from fdpp.passes.fold_position_tables import fold_position_tables
from fdpp.passes.fuse_attention import fuse_attention
from fdpp.passes.fuse_gated_mlp import fuse_gated_mlp
from fdpp.passes.fuse_linear_epilogues import fuse_linear_epilogues
from fdpp.passes.fuse_rms_norm import fuse_rms_norm
from fdpp.passes.fuse_rotary import fuse_rotary
from fdpp.passes.fuse_rotary_into_attention import fuse_rotary_into_attention
from fdpp.passes.insert_kv_cache import insert_kv_cache
from fdpp.passes.interleave_sparse_inputs import interleave_sparse_inputs
from fdpp.passes.pass_manager import PassFn
from fdpp.passes.prune_weights import prune_weights
from fdpp.passes.select_kernels import select_kernels

PIPELINE: list[tuple[str, PassFn]] = [
    # one spelling per computation, so that the patterns below match
    ("canonicalize", canonicalize),
    # fusions, innermost first: rotary sits inside attention's pattern
    ("fuse_rms_norm", fuse_rms_norm),
    ("fuse_rotary", fuse_rotary),
    ("fuse_attention", fuse_attention),
    ("fuse_gated_mlp", fuse_gated_mlp),
    # with masks gone, what depends on positions alone becomes tables indexed by `positions`
    ("fold_position_tables", fold_position_tables),
    # attention reads and writes the KV cache at those positions
    ("insert_kv_cache", insert_kv_cache),
    # Flash-LLM: unstructured pruning (magnitude or Wanda) of the linear weights, before the softmax is
    # calibrated so that φ fits the pruned model
    ("prune_weights", prune_weights),
    # FlashDecoding++'s unified max: φ per layer from the softmax inputs seen on calibration text
    ("calibrate_softmax", calibrate_softmax),
    # the gated MLP's two projections become one GEMM with the activation in its epilogue, q/k/v one GEMM read
    # through views, and residual adds move into the epilogue of the linear before them (after pruning, which
    # prunes row by row, so stacked pruned weights are pruned stacks; of the sparse kernels only chunked
    # CSR's has these epilogues)
    ("fuse_linear_epilogues", fuse_linear_epilogues),
    # q's and k's rotaries move into the attention op: its decode kernel rotates them as it loads q and
    # writes the step's key (two launches less per layer; prefill keeps the rotary kernel)
    ("fuse_rotary_into_attention", fuse_rotary_into_attention),
    # the heuristic dataflow binds each op to a kernel per row bucket for the target
    ("select_kernels", select_kernels),
    # pruned weights the dataflow stores sparse are re-encoded (Tiled-CSL or bitmap) and read as such
    ("encode_sparse_weights", encode_sparse_weights),
    # the kernel producing a chunked-CSR linear's x writes it with each column's rows side by side, as that
    # linear gathers them, instead of a separate interleave launch before it
    ("interleave_sparse_inputs", interleave_sparse_inputs),
]
