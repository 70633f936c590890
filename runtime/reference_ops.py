"""The meaning of every plan op, as plain torch: the CPU reference executor runs these, the compiler's
IR interpreter uses them for fused ops, and every GPU kernel is tested against them.

Numerics contract (DESIGN.md §3): inputs and outputs are in the activation dtype; reductions,
accumulation and softmax are done in float32 and the result is cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fdpp.runtime.sparse_formats import decode as decode_sparse
from fdpp.runtime.sparse_formats import split_operands


def embedding(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    # table: [V, H]; ids: [B, S] int64 -> [B, S, H]
    return table[ids]


def position_lookup(table: torch.Tensor, positions: torch.Tensor, seq_axis: int) -> torch.Tensor:
    """Rows of a per-position table (precomputed rotary cos/sin, learned position embeddings).

    table: [T, *rest]; positions: [B, S] -> table[positions] with the S axis moved to `seq_axis`.
    """
    if positions.numel() and int(positions.max()) >= table.shape[0]:
        raise ValueError(f"position {int(positions.max())} is past the bundle's table of {table.shape[0]}")
    out = table[positions]                                   # [B, S, *rest]
    return out.movedim(1, seq_axis) if seq_axis != 1 else out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [..., H]; weight: [H]. Same order of operations as Hugging Face's LlamaRMSNorm.
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * normed.to(x.dtype).float()).to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    b = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), b, eps).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # x: [..., K]; weight: [N, K] (nn.Linear layout); bias: [N] -> [..., N], float32 accumulation.
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.linear(x, weight, bias)
    b = bias.float() if bias is not None else None
    return F.linear(x.float(), weight.float(), b).to(x.dtype)


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, gated: str | None = None) -> torch.Tensor:
    """linear() with the epilogues the dataflow fuses into it, all in float32 with one rounding at the end.

    x [..., K]; weight [N, K], or [2N, K] = (gate; up) when `gated` names an activation; bias [N] or [2N];
    residual [..., N]. Returns act(x @ gate^T + b_gate) * (x @ up^T + b_up) when gated (else x @ W^T + b),
    plus residual: [..., N] in x's dtype.
    """
    y = F.linear(x.float(), weight.float(), bias.float() if bias is not None else None)
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = _ACTIVATIONS[gated](gate) * up
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


def linear_operands(attrs: dict, operands: list) -> tuple:
    """A dense LINEAR step's inputs after (x, weight) -> (bias, residual): residual is last when attrs say so.
    The one definition of that layout, for tensors and for input names alike."""
    residual = operands[-1] if attrs.get("residual") else None
    rest = operands[:-1] if residual is not None else operands
    return (rest[0] if rest else None), residual


def linear_step(x: torch.Tensor, weight: torch.Tensor, attrs: dict, operands: list[torch.Tensor]) -> torch.Tensor:
    """A dense LINEAR step of the plan or graph: x, weight, then (bias?, residual?) with the epilogues attrs name
    (fused_linear without epilogues is linear: the same float32 product, rounded once)."""
    bias, residual = linear_operands(attrs, operands)
    return fused_linear(x, weight, bias, residual, attrs.get("gated"))


def sparse_linear(x: torch.Tensor, operands: list[torch.Tensor], meta: dict, attrs: dict | None = None) -> torch.Tensor:
    """linear_step() with the weight given encoded: operands are (part..., bias?, residual?), the parts in
    sparse_formats.PARTS order; attrs as a LINEAR step's (gated, residual)."""
    parts, rest = split_operands(meta, operands)
    weight = decode_sparse(meta, parts)
    return linear_step(x, weight.to(x.dtype) if weight.dtype != x.dtype else weight, attrs or {}, rest)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int, layout: str) -> torch.Tensor:
    """Rotary embedding, rotate-half (GPT-NeoX / Llama) convention.

    layout "heads": x [B, H, S, D], cos/sin [B|1, S, D].
    layout "flat":  x [B, S, H*D],  cos/sin [B|1, S, D].
    """
    xf = x.float()
    c, s = cos.float(), sin.float()
    if layout == "heads":
        c, s = c.unsqueeze(1), s.unsqueeze(1)
        return (xf * c + _rotate_half(xf) * s).to(x.dtype)
    if layout != "flat":
        raise ValueError(f"rotary: unknown layout {layout!r}")
    b, seq, width = x.shape
    xh = xf.view(b, seq, width // head_dim, head_dim)         # [B, S, H, D]
    c, s = c.unsqueeze(2), s.unsqueeze(2)                      # [B|1, S, 1, D]
    return (xh * c + _rotate_half(xh) * s).reshape(b, seq, width).to(x.dtype)


_ACTIVATIONS = {
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}


def activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    return _ACTIVATIONS[kind](x.float()).to(x.dtype)


def gated_act(gate: torch.Tensor, up: torch.Tensor, kind: str) -> torch.Tensor:
    # act(gate) * up, the gated MLP's middle: [..., I] x [..., I] -> [..., I]
    return (_ACTIVATIONS[kind](gate.float()) * up.float()).to(gate.dtype)


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * b


def write_kv(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor) -> None:
    """k_cache[b, :, positions[b, s]] = k[b, s] split into heads, same for v; in place.

    k, v: [B, S, Hkv*D]; positions: [B, S]; caches: [B_cap, Hkv, T_cap, D]; values cast to the cache dtype.
    """
    batch, seq_len = positions.shape
    n_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    batch_index = torch.arange(batch, device=k.device)[:, None].expand(batch, seq_len)        # [B, S]
    # advanced indexing on dims 0 and 2 puts the indexed dims first: [B, S, Hkv, D]
    k_cache[batch_index, :, positions] = k.reshape(batch, seq_len, n_kv_heads, head_dim).to(k_cache.dtype)
    v_cache[batch_index, :, positions] = v.reshape(batch, seq_len, n_kv_heads, head_dim).to(v_cache.dtype)


def causal_scores(qh: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor, key_pos: torch.Tensor,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled scores of queries qh [B, Hq, S, D] against keys [B, Hkv, T, D] (KV head h // (Hq / Hkv) for query
    head h), float32, with the keys a query may not see (key position > its position) set to -inf.
    Returns (scores [B, Hq, S, T], visible [B, 1, S, T])."""
    keys = keys.float().repeat_interleave(qh.shape[1] // keys.shape[1], dim=1)          # [B, Hq, T, D]
    scores = torch.matmul(qh.float(), keys.transpose(-1, -2)) * scale                  # [B, Hq, S, T]
    visible = key_pos[:, None, None, :] <= positions[:, None, :, None]                 # [B, 1, S, T]
    return scores.masked_fill(~visible, float("-inf")), visible


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
              k_cache: torch.Tensor | None, v_cache: torch.Tensor | None, *,
              n_heads: int, n_kv_heads: int, head_dim: int, scale: float,
              unified: tuple[float, float, float] | None = None,
              fallbacks: torch.Tensor | None = None,
              rotary_tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Causal attention by position, with an optional KV cache, grouped-query heads.

    q: [B, S, Hq*D]; k, v: [B, S, Hkv*D]; positions: [B, S] int64, each token's place in its sequence.
    k_cache, v_cache: this layer's cache [B_cap, Hkv, T_cap, D], or None to attend within k, v only.
    With a cache, k and v are first written at positions[b, s]; then each query attends to every cached
    key whose position is <= its own. Prompts of different lengths are right-padded: a pad token only
    writes a cache slot that a later real token overwrites before anyone can read it.
    unified: (φ, safe_low, safe_high) computes the softmax with the unified max φ (runtime/unified_max.py):
    e^(s - φ) / Σ e^(s - φ) for rows whose max score is in [safe_low, safe_high]; the other rows take the
    ordinary softmax and are counted into `fallbacks` (int tensor [1]), as the kernels do.
    rotary_tables: (cos, sin) [B|1, S, D] to rotate q and k first (rotary, rotate-half, rounded to their dtype:
    the rotary op fused into the attention op), or None when q and k arrive rotated.
    Returns [B, S, Hq*D] in q's dtype; scores and softmax in float32.
    """
    if rotary_tables is not None:
        q, k = (rotary(x, *rotary_tables, head_dim, "flat") for x in (q, k))
    b, s, _ = q.shape
    qh = q.view(b, s, n_heads, head_dim).transpose(1, 2).float()          # [B, Hq, S, D]
    kh = k.view(b, s, n_kv_heads, head_dim).transpose(1, 2)               # [B, Hkv, S, D]
    vh = v.view(b, s, n_kv_heads, head_dim).transpose(1, 2)
    if k_cache is not None:
        write_kv(k, v, positions, k_cache, v_cache)
        length = int(positions.max()) + 1
        keys, values = k_cache[:b, :, :length], v_cache[:b, :, :length]       # [B, Hkv, T, D]
        key_pos = torch.arange(length, device=q.device)[None, :].expand(b, length)
    else:
        keys, values, key_pos = kh, vh, positions
    values = values.float().repeat_interleave(n_heads // n_kv_heads, dim=1)    # [B, Hq, T, D]
    scores, _ = causal_scores(qh, keys, positions, key_pos, scale)         # [B, Hq, S, T]
    probs = torch.softmax(scores, dim=-1)
    if unified is not None:
        phi, safe_low, safe_high = unified
        row_max = scores.amax(dim=-1, keepdim=True)                         # [B, Hq, S, 1]
        inside = (row_max >= safe_low) & (row_max <= safe_high)
        weights = torch.exp(scores - phi)
        probs = torch.where(inside, weights / weights.sum(dim=-1, keepdim=True), probs)
        if fallbacks is not None:
            fallbacks += int((~inside).sum())
    out = torch.matmul(probs, values)                                      # [B, Hq, S, D]
    return out.transpose(1, 2).reshape(b, s, n_heads * head_dim).to(q.dtype)


def slice_last(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    # x: [..., W] -> the view x[..., start:end] (rows keep x's stride: no copy)
    return x[..., start:end]


def reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x.reshape(shape)
