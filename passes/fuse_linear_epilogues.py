"""FuseLinearEpilogues: fold what follows a linear into its kernel's epilogue, and linears that read the same
input into one GEMM (FlashDecoding++ §5's flat GEMM with fused epilogues; DESIGN.md §5).

- gated MLP: GATED_ACT(LINEAR(x, W_gate), LINEAR(x, W_up)) -> LINEAR(x, stack(W_gate, W_up)) {gated: act}:
  one GEMM over the stacked [2I, K] weight whose epilogue applies act(gate) * up, so the two projections and
  the activation are one launch that writes [.., I] once.
- residual: ADD(r, LINEAR(x, W)) -> LINEAR(x, W, r) {residual: True}: o_proj and down_proj add the residual
  stream in their epilogue instead of a separate add kernel.
- siblings: LINEAR(x, W_q), LINEAR(x, W_k), LINEAR(x, W_v) -> one LINEAR(x, stack(W_q, W_k, W_v)) and a SLICE
  view per projection, when every reader of the projections takes strided rows (rotary, attention) and each
  view starts 16-byte aligned. One launch streams all three weights, with N large enough to fill the GPU.

Stacked weights are new PARAMs named `<prefix><gate>+<up><suffix>` (e.g. model.layers.0.mlp.gate_proj+up_proj.weight),
read through a StackedWeightStore, so nothing is materialised before the bundle writer asks for it.

Pruned linears fuse too, all members of a fusion pruned alike or none: each output row is pruned on its own
(prune_weights compares scores within a row), so stacking pruned weights is pruning the stack, and the fused
LINEAR's `pruned` attr names the stacked weight with the members' density weighted by rows. Stacked q/k/v
need no epilogue, so any sparse format reads them; the gated and residual epilogues exist only in the
chunked-CSR sparse kernel, so pruned linears take them only when --sparse-format lets the dataflow choose
between dense and chunked CSR (auto, chunked_csr, dense).
Needs: fuse_gated_mlp (GATED_ACT nodes), prune_weights (the `pruned` attr). Guarantees: a LINEAR's inputs are
(x, weight, bias?, residual?), the residual last when attrs["residual"]; a gated LINEAR's weight (and bias) are
[2N, ...] with gate rows first.
"""

from __future__ import annotations

from fdpp.compiler.ir import Graph, GraphEditor, Node, Op, StackedWeightStore, TensorType
from fdpp.passes.pass_manager import PassContext, PassResult


def stacked_key(keys: list[str]) -> str:
    """One name for weights stacked along dim 0: their shared dotted prefix and suffix around the joined middles."""
    parts = [k.split(".") for k in keys]
    head = 0
    while all(len(p) > head + 1 and p[head] == parts[0][head] for p in parts):
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 and p[-1 - tail] == parts[0][-1 - tail] for p in parts):
        tail += 1
    middles = [".".join(p[head:len(p) - tail]) for p in parts]
    return ".".join(parts[0][:head] + ["+".join(middles)] + (parts[0][len(parts[0]) - tail:] if tail else []))


# --sparse-format values under which a pruned linear may take an epilogue (only chunked CSR's kernel has one)
EPILOGUE_SPARSE_FORMATS = ("auto", "chunked_csr", "dense")


def _plain_linear(graph: Graph, name: str) -> Node | None:
    """The LINEAR producing `name` if its epilogue is free to fuse into (not yet fused or encoded, PARAM
    weights; pruned or not)."""
    node = graph.node(name)
    if node.op is not Op.LINEAR or any(a in node.attrs for a in ("sparse", "gated", "residual")):
        return None
    if any(graph.node(i).op is not Op.PARAM for i in node.inputs[1:]):
        return None
    return node


# Readers that take a view's row stride from the plan (codegen/launch_specs.py), by op: input positions.
STRIDED_READERS = {Op.ROTARY: (0,), Op.ATTENTION: (0, 1, 2)}
VIEW_ALIGNMENT = 8           # elements: a view's first column stays 16-byte aligned in fp16 and fp32


def merged_pruning(graph: Graph, members: list[Node], weight_key: str) -> dict | None:
    """The `pruned` attr of the LINEAR that stacks `members`' weights as `weight_key`: None when none is
    pruned; KeyError when they are pruned differently (or some not at all), which rules the fusion out."""
    attrs = [m.attrs.get("pruned") for m in members]
    if all(a is None for a in attrs):
        return None
    if any(a is None for a in attrs) or len({(a["method"], a["sparsity"]) for a in attrs}) != 1:
        raise KeyError("members pruned differently")
    rows = [graph.node(m.inputs[1]).type.shape[0] for m in members]
    density = sum(a["density"] * r for a, r in zip(attrs, rows)) / sum(rows)
    return {**attrs[0], "density": density, "weight": weight_key}


class _Fuser:
    def __init__(self, graph: Graph, epilogues_on_pruned: bool):
        self.graph = graph
        self.epilogues_on_pruned = epilogues_on_pruned
        self.edit = GraphEditor(graph)
        self.users = graph.users()
        self.stacks: dict[str, tuple[str, ...]] = {}
        self.counts = {"gated": 0, "residual": 0, "siblings": 0}
        self.consumed: set[str] = set()          # linears already fused into something

    def only_user(self, name: str, user: Node) -> bool:
        return [u.name for u in self.users[name]] == [user.name] and name not in self.graph.outputs

    def stacked_weight_key(self, linears: list[Node]) -> str:
        return stacked_key([self.graph.node(m.inputs[1]).attr("key") for m in linears])

    def stacked_param(self, params: list[str], before: str) -> str:
        keys = [self.graph.node(p).attr("key") for p in params]
        key = stacked_key(keys)
        self.stacks[key] = tuple(keys)
        shapes = [self.graph.node(p).type.shape for p in params]
        dtype = self.graph.node(params[0]).type.dtype
        return self.edit.add(Node(key.replace(".", "_").replace("+", "_"), Op.PARAM, (),
                                  TensorType((sum(s[0] for s in shapes), *shapes[0][1:]), dtype), {"key": key}),
                             before=before)

    def gated(self, node: Node) -> None:
        gate, up = (_plain_linear(self.graph, i) for i in node.inputs)
        if gate is None or up is None or gate.inputs[0] != up.inputs[0] or len(gate.inputs) != len(up.inputs):
            return
        if not (self.only_user(gate.name, node) and self.only_user(up.name, node)):
            return
        if self.graph.node(gate.inputs[1]).type != self.graph.node(up.inputs[1]).type:
            return
        try:
            pruned = merged_pruning(self.graph, [gate, up], self.stacked_weight_key([gate, up]))
        except KeyError:
            return
        if pruned and not self.epilogues_on_pruned:
            return
        params = [self.stacked_param([g, u], before=node.name) for g, u in zip(gate.inputs[1:], up.inputs[1:])]
        fused = Node(node.name + "_linear", Op.LINEAR, (gate.inputs[0], *params), node.type,
                     {"gated": node.attr("activation"), **({"pruned": pruned} if pruned else {})}, gate.source)
        self.edit.replace_uses(node.name, self.edit.add(fused, before=node.name))
        self.consumed |= {gate.name, up.name}
        self.counts["gated"] += 1

    def residual(self, node: Node) -> None:
        for residual, product in (node.inputs, node.inputs[::-1]):
            linear = _plain_linear(self.graph, product)
            if linear is None or not self.only_user(product, node) or self.graph.node(residual).type != node.type \
                    or linear.type != node.type or ("pruned" in linear.attrs and not self.epilogues_on_pruned):
                continue
            fused = linear.with_(name=linear.name + "_residual", inputs=(*linear.inputs, residual),
                                 attrs={**linear.attrs, "residual": True})
            self.edit.replace_uses(node.name, self.edit.add(fused, before=node.name))
            self.consumed.add(linear.name)
            self.counts["residual"] += 1
            return

    def strided_readers_only(self, name: str) -> bool:
        return name not in self.graph.outputs and all(
            u.op in STRIDED_READERS and all(i in STRIDED_READERS[u.op] for i, n in enumerate(u.inputs) if n == name)
            for u in self.users[name])

    def siblings(self, members: list[Node]) -> None:
        """Stack linears reading one x into one LINEAR and give each reader a SLICE view of its columns."""
        members = [m for m in members if m.name not in self.consumed and self.strided_readers_only(m.name)]
        if len(members) < 2 or len({len(m.inputs) for m in members}) != 1 \
                or len({self.graph.node(m.inputs[1]).type.shape[1:] for m in members}) != 1 \
                or len({(m.type.dtype, m.type.shape[:-1]) for m in members}) != 1:
            return
        widths = [m.type.shape[-1] for m in members]
        starts = [sum(widths[:i]) for i in range(len(widths))]
        if any(not isinstance(w, int) for w in widths) or any(s % VIEW_ALIGNMENT for s in starts):
            return
        try:
            pruned = merged_pruning(self.graph, members, self.stacked_weight_key(members))
        except KeyError:
            return
        first = members[0]
        params = [self.stacked_param([m.inputs[i] for m in members], before=first.name)
                  for i in range(1, len(first.inputs))]
        rank = len(first.type.shape)
        fused = self.edit.add(Node(first.name + "_fused", Op.LINEAR, (first.inputs[0], *params),
                                   TensorType((*first.type.shape[:-1], sum(widths)), first.type.dtype),
                                   {"pruned": pruned} if pruned else {}, first.source), before=first.name)
        for member, start, width in zip(members, starts, widths):
            view = Node(member.name + "_view", Op.SLICE, (fused,), member.type,
                        {"dim": rank - 1, "start": start, "end": start + width, "step": 1}, member.source)
            self.edit.replace_uses(member.name, self.edit.add(view, before=member.name))
        self.counts["siblings"] += 1


def fuse_linear_epilogues(graph: Graph, ctx: PassContext) -> PassResult:
    fuser = _Fuser(graph, ctx.options.sparse_format in EPILOGUE_SPARSE_FORMATS)
    for node in graph.nodes:
        if node.op is Op.GATED_ACT:
            fuser.gated(node)
        elif node.op is Op.ADD:
            fuser.residual(node)
    by_input: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if _plain_linear(graph, node.name) is not None:
            by_input.setdefault(node.inputs[0], []).append(node)
    for members in by_input.values():
        fuser.siblings(members)
    if not any(fuser.counts.values()):
        return PassResult(graph, fuser.counts)
    fused = fuser.edit.commit()
    return PassResult(fused.with_(weights=StackedWeightStore(graph.weights, fuser.stacks)), fuser.counts)
