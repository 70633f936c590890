"""FuseAttention: the head split, rotary, GQA repeat, SDPA and head merge around one attention -> ATTENTION.

Matches, for q, k and v, `linear [B,S,H*D] -> reshape [B,S,H,D] -> transpose(1,2) [-> ROTARY(heads)]`,
for k and v optionally Hugging Face's repeat_kv (`unsqueeze(2) -> expand -> reshape`), then
`SDPA(q, k, v, mask?)`, then `transpose(1,2) -> reshape [B,S,Hq*D]`.

Needs: canonicalized graph, FuseRotary run. Guarantees: the SDPA is causal — `is_causal`, or a mask
that depends only on shapes and that evaluates to the causal mask for several batch and sequence
sizes (checked here, never assumed); query heads a multiple of KV heads; the rotary moves to the flat
layout. The ATTENTION node computes runtime.reference_ops.attention. A `q * c` before the head split
(OPT's query scaling) folds into the scale.
"""

from __future__ import annotations

import torch

from fdpp.compiler.interpreter import evaluate
from fdpp.compiler.ir import Graph, GraphEditor, Node, Op, TensorType
from fdpp.passes.matching import constant_value, token_dependent
from fdpp.passes.pass_manager import PassContext, PassResult

_MASK_CHECK_SIZES = ((1, 2), (2, 5), (3, 9))       # (batch, seq) at which a mask must be causal


def _split_heads(graph: Graph, name: str) -> tuple[str, int, int, str | None] | None:
    """[ROTARY(heads)] <- transpose(1,2) <- reshape [B,S,H,D] <- flat: -> (flat, H, D, rotary node)."""
    node = graph.node(name)
    rotary = None
    if node.op is Op.ROTARY and node.attr("layout") == "heads":
        rotary, node = node.name, graph.node(node.inputs[0])
    if node.op is not Op.TRANSPOSE or {node.attr("dim0") % 4, node.attr("dim1") % 4} != {1, 2}:
        return None
    split = graph.node(node.inputs[0])
    if split.op is not Op.RESHAPE or split.type.rank != 4:
        return None
    flat = graph.node(split.inputs[0])
    b, s, h, d = split.type.shape
    if flat.type.rank != 3 or flat.type.shape[:2] != (b, s) or not isinstance(h, int) or not isinstance(d, int) \
            or flat.type.shape[2] != h * d:
        return None
    return flat.name, h, d, rotary


def _repeat_kv(graph: Graph, name: str) -> tuple[str, int]:
    """Strip HF's repeat_kv (unsqueeze(2) -> expand -> reshape); returns (source, repeat factor)."""
    merged = graph.node(name)
    if merged.op is not Op.RESHAPE:
        return name, 1
    expand = graph.node(merged.inputs[0])
    if expand.op is not Op.EXPAND or expand.type.rank != 5:
        return name, 1
    unsq = graph.node(expand.inputs[0])
    if unsq.op is not Op.UNSQUEEZE or unsq.attr("dim") != 2:
        return name, 1
    src = graph.node(unsq.inputs[0])
    b, hkv, rep, s, d = expand.type.shape
    if merged.type.shape != (b, hkv * rep, s, d) or src.type.shape != (b, hkv, s, d):
        return name, 1
    return src.name, rep


def _mask_is_causal(graph: Graph, mask: str, dependent: set[str]) -> bool:
    """True if the mask depends only on shapes and equals the causal mask at several sizes."""
    if mask in dependent:
        return False
    for batch, seq in _MASK_CHECK_SIZES:
        value = evaluate(graph, {}, {"batch": batch, "seq": seq}, [mask])[mask]
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        if value.dtype == torch.bool:
            allowed = value
        elif value.is_floating_point():  # additive: exactly 0 where allowed, very negative (or -inf) where not
            allowed = value == 0
            if not bool((allowed | (value <= torch.finfo(value.dtype).min / 2)).all()):
                return False
        else:
            return False
        if allowed.dim() != 4 or not torch.equal(allowed.expand(batch, allowed.shape[1], seq, seq),
                                                 causal.expand(batch, allowed.shape[1], seq, seq)):
            return False
    return True


def _merge_heads(graph: Graph, sdpa: Node, users: dict[str, list[Node]]) -> Node | None:
    """SDPA -> transpose(1,2) -> reshape [B,S,H*D]: returns the reshape node."""
    (t,) = users[sdpa.name] if len(users[sdpa.name]) == 1 else (None,)
    if t is None or t.op is not Op.TRANSPOSE or {t.attr("dim0") % 4, t.attr("dim1") % 4} != {1, 2}:
        return None
    (r,) = users[t.name] if len(users[t.name]) == 1 else (None,)
    if r is None or r.op is not Op.RESHAPE or r.type.rank != 3:
        return None
    b, h, s, d = sdpa.type.shape
    return r if r.type.shape == (b, s, h * d) else None


def _unscaled(graph: Graph, flat: str) -> tuple[str, float]:
    n = graph.node(flat)
    if n.op is Op.MUL:
        c = constant_value(graph, n.inputs[1])
        if c is not None and not isinstance(c, bool):
            return n.inputs[0], float(c)
    return flat, 1.0


def fuse_attention(graph: Graph, ctx: PassContext) -> PassResult:
    edit = GraphEditor(graph)
    users = graph.users()
    dependent = token_dependent(graph)
    changes = {"attention": 0, "mask_verified_causal": 0, "query_scale_folded": 0}
    layer = 0
    for n in graph.nodes:
        if n.op is not Op.SDPA:
            continue
        causal = n.attr("is_causal") and len(n.inputs) == 3
        if len(n.inputs) == 4 and not n.attr("is_causal"):
            causal = _mask_is_causal(graph, n.inputs[3], dependent)
            changes["mask_verified_causal"] += int(causal)
        q = _split_heads(graph, n.inputs[0])
        k_src, k_rep = _repeat_kv(graph, n.inputs[1])
        v_src, v_rep = _repeat_kv(graph, n.inputs[2])
        k, v = _split_heads(graph, k_src), _split_heads(graph, v_src)
        out = _merge_heads(graph, n, users)
        if not causal or q is None or k is None or v is None or out is None or v[3] is not None:
            continue
        (q_flat, hq, d, q_rot), (k_flat, hkv, dk, k_rot), (v_flat, hv, dv, _) = q, k, v
        if n.attr("enable_gqa"):
            k_rep = v_rep = hq // hkv
        if not (d == dk == dv and hkv == hv and k_rep == v_rep and hkv * k_rep == hq):
            continue
        if (q_rot is None) != (k_rot is None):
            continue
        q_flat, q_scale = _unscaled(graph, q_flat)
        changes["query_scale_folded"] += int(q_scale != 1.0)

        def flat_rotary(src: str, rotary: str | None) -> str:
            if rotary is None:
                return src
            r = graph.node(rotary)
            return edit.add(Node(f"{src}_rotary", Op.ROTARY, (src, r.inputs[1], r.inputs[2]), graph.node(src).type,
                                 {"head_dim": d, "layout": "flat"}, r.source), before=out.name)

        fused = Node(f"attention_{layer}", Op.ATTENTION,
                     (flat_rotary(q_flat, q_rot), flat_rotary(k_flat, k_rot), v_flat),
                     TensorType(out.type.shape, out.type.dtype),
                     {"n_heads": hq, "n_kv_heads": hkv, "head_dim": d, "scale": n.attr("scale") * q_scale},
                     n.source)
        edit.replace_uses(out.name, edit.add(fused, before=out.name))
        changes["attention"] += 1
        layer += 1
    return PassResult(edit.commit(), changes)
