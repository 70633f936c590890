"""The KV cache: one preallocated key and value tensor per attention layer, up to the bundle's limits."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    keys: list[torch.Tensor]      # per layer: [batch, kv_heads, max_seq, head_dim]
    values: list[torch.Tensor]

    @staticmethod
    def allocate(layers: int, batch: int, kv_heads: int, max_seq: int, head_dim: int,
                 dtype: torch.dtype, device: str | torch.device) -> "KVCache":
        shape = (batch, kv_heads, max_seq, head_dim)
        return KVCache([torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
                       [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)])

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
