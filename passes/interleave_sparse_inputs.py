"""InterleaveSparseInputs: the kernel that produces a chunked-CSR linear's x writes it interleaved, so the linear
needs no interleave launch of its own.

For more than one row of x, the chunked-CSR kernel gathers every row of an entry's column in one load, from x
laid out with each column's R rows side by side ([cdiv(rows, R), K, R]; codegen/kernels/chunked_csr_linear.py).
Without this pass a separate launch writes that copy before every such linear, four per Llama layer. Here the
producer of x (the RMSNorm before q/k/v and gate/up, decode attention before o_proj, the gated chunked-CSR
gate/up before down_proj) writes x in that layout instead (codegen/kernels/_common.out_offsets).

Kernel choices are per row bucket and phase, so the pass works interval by interval. For each phase it cuts the
producer's and the linear's choice lists at the union of their bucket bounds (a chunked-CSR choice cut to a
smaller bucket keeps the config it had, resolved at its old bucket). Where the linear reads R > 1 rows together
and the producer's choice can write interleaved (codegen/launch_specs.INTERLEAVED_OUTPUT_KERNELS), the
producer's choice gets config `out_rows_together: R` and the linear's `x_interleaved: true`. When the two
phases' lists come out equal they stay one list of phase "any". Pairs it leaves alone: a producer read by
anything else, a graph output, a producer kernel that cannot write interleaved (prefill attention, dense
GEMMs), a chunked-CSR producer with split-K.

Needs: select_kernels (the `kernels` attr), encode_sparse_weights (the `sparse` attr). Guarantees: a choice
with x_interleaved reads x as its producer's choice for the same rows and phase writes it.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from fdpp.codegen.kernels.chunked_csr_linear import default_chunked_csr_config
from fdpp.codegen.kernels.chunked_csr_xshared import default_xshared_config
from fdpp.codegen.launch_specs import INTERLEAVED_OUTPUT_KERNELS
from fdpp.compiler.ir import Graph, GraphEditor, Node, Op
from fdpp.passes.pass_manager import PassContext, PassResult
from fdpp.runtime.schema import KernelChoice, pick_choice

# The CUDA-core chunked-CSR kernels, which gather x by blocks of rows and whose config defaults follow the bucket.
DEFAULT_CONFIG = {"chunked_csr_gemv": lambda n, k, chunks, rows: default_chunked_csr_config(n, chunks, rows),
                  "chunked_csr_xshared": lambda n, k, chunks, rows: default_xshared_config(n, k, rows)}
PHASES = ("decode", "prefill")


def _bounds(choices: list[KernelChoice], phase: str) -> set[int]:
    """The bucket bounds of the choices that run in `phase`."""
    return {c.max_rows for c in choices if c.phase in (phase, "any")}


def _resolved(node: Node, choice: KernelChoice) -> dict:
    """A CUDA-core chunked-CSR choice's whole config (its bucket's defaults under its own keys); others' config as
    is."""
    if choice.kernel not in DEFAULT_CONFIG:
        return dict(choice.config)
    n, k = node.attrs["sparse"]["shape"]
    chunks, _ = node.attrs["sparse"]["tile"]
    return {**DEFAULT_CONFIG[choice.kernel](n, k, chunks, choice.max_rows), **choice.config}


def _rows_together(node: Node, choice: KernelChoice) -> int:
    """Rows of x the linear's choice gathers together (1: it reads x as is)."""
    return _resolved(node, choice)["rows"] if choice.kernel in DEFAULT_CONFIG else 1


def _writes_interleaved(node: Node, choice: KernelChoice) -> bool:
    """Whether the producer's choice has a kernel that can store its output interleaved (not split-K)."""
    if choice.kernel not in INTERLEAVED_OUTPUT_KERNELS:
        return False
    return _resolved(node, choice).get("split_k", 1) == 1


def _cut(node: Node, choice: KernelChoice, max_rows: int, phase: str, extra: dict) -> KernelChoice:
    """`choice` for the bucket ending at max_rows in `phase`, with `extra` config; a chunked-CSR choice cut to a
    smaller bucket keeps its resolved config, whose defaults depend on the bucket."""
    config = _resolved(node, choice) if choice.kernel in DEFAULT_CONFIG and max_rows != choice.max_rows \
        else dict(choice.config)
    return replace(choice, max_rows=max_rows, phase=phase, config={**config, **extra})


def _merged(choices: list[KernelChoice]) -> list[KernelChoice]:
    """Neighbouring buckets with the same kernel and config as one (not chunked CSR, whose defaults depend on
    the bucket)."""
    out: list[KernelChoice] = []
    for c in choices:
        if out and c.kernel not in DEFAULT_CONFIG and (out[-1].kernel, out[-1].config) == (c.kernel, c.config):
            out[-1] = replace(out[-1], max_rows=c.max_rows)
        else:
            out.append(c)
    return out


def _pair(producer: Node, p_choices: list[KernelChoice], linear: Node, l_choices: list[KernelChoice],
          max_batch: int) -> tuple[list[KernelChoice], list[KernelChoice]] | None:
    """The two choice lists cut to common buckets and marked where the producer writes x interleaved, or None
    when no bucket of either phase interleaves. Decode steps have at most max_batch rows."""
    lists = {}
    interleaved = False
    for phase in PHASES:
        if not _bounds(p_choices, phase) or not _bounds(l_choices, phase):     # one of them never runs here
            lists[phase] = tuple([replace(c, phase=phase) for c in cs if c.phase in (phase, "any")]
                                 for cs in (p_choices, l_choices))
            continue
        bounds = _bounds(p_choices, phase) | _bounds(l_choices, phase)
        if phase == "decode":
            bounds = {b for b in bounds if b < max_batch} | {max_batch}
        p_new, l_new = [], []
        for rows in sorted(bounds):
            made, read = pick_choice(p_choices, rows, phase), pick_choice(l_choices, rows, phase)
            together = _rows_together(linear, read)
            fuse = together > 1 and _writes_interleaved(producer, made)
            interleaved |= fuse
            p_new.append(_cut(producer, made, rows, phase, {"out_rows_together": together} if fuse else {}))
            l_new.append(_cut(linear, read, rows, phase, {"x_interleaved": True} if fuse else {}))
        lists[phase] = (_merged(p_new), _merged(l_new))
    if not interleaved:
        return None

    def joined(index: int, node: Node) -> list[KernelChoice]:
        """One list of phase "any" when the prefill list also gives every decode row count what the decode
        choice runs (configs compared resolved, so a cut chunked-CSR choice equals the one it was cut from)."""
        decode, prefill = lists["decode"][index], lists["prefill"][index]
        same = all((d.kernel, _resolved(node, d)) == (p.kernel, _resolved(node, p))
                   for rows in range(1, max_batch + 1)
                   for d, p in [(pick_choice(decode, rows, "decode"), pick_choice(prefill, rows, "prefill"))])
        return [replace(c, phase="any") for c in prefill] if same else decode + prefill
    return joined(0, producer), joined(1, linear)


def interleave_sparse_inputs(graph: Graph, ctx: PassContext) -> PassResult:
    users = graph.users()
    kernels = {n.name: [KernelChoice(**c) for c in n.attrs["kernels"]] for n in graph.nodes if n.attrs.get("kernels")}
    fused = 0
    for linear in graph.nodes:
        if linear.op is not Op.LINEAR or linear.name not in kernels \
                or not any(c.kernel in DEFAULT_CONFIG for c in kernels[linear.name]):
            continue
        producer = graph.node(linear.inputs[0])
        if producer.name not in kernels or producer.name in graph.outputs \
                or [u.name for u in users[producer.name]] != [linear.name]:
            continue
        paired = _pair(producer, kernels[producer.name], linear, kernels[linear.name], ctx.options.max_batch)
        if paired is not None:
            kernels[producer.name], kernels[linear.name] = paired
            fused += 1
    if not fused:
        return PassResult(graph, {})
    edit = GraphEditor(graph)
    for node in graph.nodes:
        choices = tuple(asdict(c) for c in kernels.get(node.name, ()))
        if node.name in kernels and choices != tuple(node.attrs["kernels"]):
            edit.update(node.with_(attrs={**node.attrs, "kernels": choices}))
    return PassResult(edit.commit(), {"interleaved inputs": fused})
