"""Next-token choice from logits [B, V]: greedy argmax, and sampling by the Gumbel-max trick.

Sampling adds Gumbel noise -log(-log(u)) to logits / temperature and takes the argmax, which draws from
softmax(logits / temperature) without a softmax, a sort or a cumulative sum: it is the argmax kernel with
noise. Top-k and top-p filtering run in torch in the wrapper (a sort over V, masking the rest to -inf)
before the kernel; a fused top-k/top-p kernel is future work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fdpp.codegen.kernels._common import block_for, require, require_float

__all__ = ["argmax", "sample", "argmax_reference", "sample_reference", "filter_top_k_top_p"]

# The uniform draw is clamped inside (0, 1) so the Gumbel noise stays finite.
_UNIFORM_LOW = tl.constexpr(1.0e-10)
_UNIFORM_HIGH = tl.constexpr(0.99999988)


@triton.jit
def argmax_kernel(
    logits_ptr,         # [B, V] logits, unit stride along V
    out_ptr,            # [B] int64 chosen token per row
    vocab,              # V
    row_stride,         # elements between rows of logits
    inverse_temperature,  # 1 / temperature (read only when SAMPLE)
    seed,               # random seed (read only when SAMPLE); the noise depends only on (seed, row, token)
    SAMPLE: tl.constexpr,    # add Gumbel noise: sample instead of taking the maximum
    BLOCK_V: tl.constexpr,   # vocabulary chunk per loop step
):
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_V)
    # each lane keeps its best value and the first token where it saw it; ties resolve to the lowest token
    best_value = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    best_token = tl.full((BLOCK_V,), 2147483647, dtype=tl.int32)
    for start in range(0, vocab, BLOCK_V):
        tokens = start + lanes
        in_vocab = tokens < vocab
        value = tl.load(logits_ptr + row * row_stride + tokens, mask=in_vocab, other=float("-inf")).to(tl.float32)
        if SAMPLE:
            uniform = tl.rand(seed, (row * vocab + tokens).to(tl.int32))
            uniform = tl.minimum(tl.maximum(uniform, _UNIFORM_LOW), _UNIFORM_HIGH)
            value = value * inverse_temperature - tl.log(-tl.log(uniform))
        better = in_vocab & ((value > best_value) | (best_token == 2147483647))
        best_value = tl.where(better, value, best_value)
        best_token = tl.where(better, tokens, best_token)
    top = tl.max(best_value, axis=0)
    chosen = tl.min(tl.where(best_value == top, best_token, 2147483647), axis=0)
    tl.store(out_ptr + row, chosen.to(tl.int64))


def _launch(logits, sample, inverse_temperature, seed, block_v, num_warps):
    kernel_name = "sample" if sample else "argmax"
    require_float(kernel_name, logits=logits)
    require(logits.dim() == 2 and logits.shape[1] > 0, kernel_name, f"logits must be [B, V], got {tuple(logits.shape)}")
    rows = logits if logits.stride(-1) == 1 else logits.contiguous()
    batch, vocab = rows.shape
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch:
        argmax_kernel[(batch,)](rows, out, vocab, rows.stride(0), float(inverse_temperature), int(seed),
                                SAMPLE=sample, BLOCK_V=block_v or min(block_for(vocab), 4096), num_warps=num_warps)
    return out


def argmax(logits: torch.Tensor, *, block_v: int | None = None, num_warps: int = 8) -> torch.Tensor:
    """logits [B, V] -> [B] int64, the first index of each row's maximum (as torch.argmax).

    Config: block_v (vocabulary chunk, default min(next power of two of V, 4096)), num_warps.
    """
    return _launch(logits, False, 1.0, 0, block_v, num_warps)


def argmax_reference(logits: torch.Tensor) -> torch.Tensor:
    # reference_ops has no sampling op (generation owns it); greedy decoding is torch.argmax.
    return torch.argmax(logits, dim=-1)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits [B, V] with everything outside the top-k tokens and outside the smallest set whose
    probability reaches top_p set to -inf (torch ops: a sort over V). Returns a new tensor."""
    logits = logits.float().clone()
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits.masked_fill_(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probabilities = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens strictly before it already reach top_p (the first always stays)
        drop_sorted = probabilities.cumsum(-1) - probabilities >= top_p
        logits.masked_fill_(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_reference(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, seed: int = 0) -> torch.Tensor:
    """The same distribution through torch.multinomial (same law, different draws)."""
    if temperature <= 0.0:
        return argmax_reference(logits)
    filtered = filter_top_k_top_p(logits, top_k, top_p)
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    return torch.multinomial(torch.softmax(filtered / temperature, dim=-1), 1, generator=generator).squeeze(-1)


def sample(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           seed: int = 0, block_v: int | None = None, num_warps: int = 8) -> torch.Tensor:
    """Draw one token per row of logits [B, V] from softmax(logits / temperature), after top-k / top-p
    filtering; temperature 0 is greedy. The same seed gives the same tokens. Config: as argmax."""
    if temperature <= 0.0:
        return argmax(logits, block_v=block_v, num_warps=num_warps)
    if top_k is not None or top_p is not None:
        logits = filter_top_k_top_p(logits, top_k, top_p)
    return _launch(logits, True, 1.0 / temperature, seed, block_v, num_warps)
