"""Perplexity of a loaded model over a token sequence, in non-overlapping windows."""

from __future__ import annotations

import math
from typing import Callable

import torch


def perplexity(logits_fn: Callable[[list[list[int]]], torch.Tensor], ids: list[int], window: int) -> float:
    """exp(mean NLL) of predicting ids[1:], scoring each window [i, i+window) on its own.

    logits_fn: token ids [1, n] -> float logits [1, n, vocab]. The first token of every window is
    context only, so windows never see across their start (the same cut Hugging Face gets when called
    with the same windows).
    """
    if len(ids) < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    total_nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window]
        if len(chunk) < 2:
            break
        logits = logits_fn([chunk])[0].float()                    # [n, vocab]
        targets = torch.tensor(chunk[1:], device=logits.device)
        nll = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="sum")
        total_nll += float(nll)
        count += len(chunk) - 1
    return math.exp(total_nll / count)
