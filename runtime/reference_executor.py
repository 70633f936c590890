"""The CPU reference executor: runs a plan step by step with runtime.reference_ops.

It is the meaning of a compiled bundle on machines without a GPU, and what GPU results are checked
against. Buffers are dropped after their last reader (the plan's memory plan), so peak memory stays a
few activations wide.
"""

from __future__ import annotations

from typing import Callable

import torch

from fdpp.runtime import reference_ops as ref
from fdpp.runtime.dims import evaluate_shape
from fdpp.runtime.kv_cache import KVCache
from fdpp.runtime.schema import WEIGHT_PREFIX, OpKind, Plan, Step
from fdpp.runtime.sparse_formats import decode as decode_sparse
from fdpp.runtime.sparse_formats import split_operands


def _attention(step: Step, args: list[torch.Tensor], cache: KVCache | None, env: dict) -> torch.Tensor:
    q, k, v, positions, *rotary_tables = args          # (cos, sin) when the rotary op is fused in
    layer = step.attrs["layer"]
    k_cache = cache.keys[layer] if cache is not None else None
    v_cache = cache.values[layer] if cache is not None else None
    a = step.attrs
    softmax = a.get("softmax", {})
    unified = ((softmax["phi"], *softmax["safe_range"]) if softmax.get("scheme") == "unified" else None)
    return ref.attention(q, k, v, positions, k_cache, v_cache, n_heads=a["n_heads"], n_kv_heads=a["n_kv_heads"],
                         head_dim=a["head_dim"], scale=a["scale"], unified=unified, fallbacks=env["fallbacks"],
                         rotary_tables=tuple(rotary_tables) or None)


def _linear(step: Step, args: list[torch.Tensor], cache: KVCache | None, env: dict) -> torch.Tensor:
    sparse = step.attrs.get("sparse")
    if sparse is None:
        return ref.linear_step(args[0], args[1], step.attrs, args[2:])
    _, rest = split_operands(sparse, args[1:])     # (x, part..., bias?, residual?): decoded at load
    return ref.linear_step(args[0], env["decoded"][step.output], step.attrs, rest)


_RUN: dict[OpKind, Callable] = {
    OpKind.EMBEDDING: lambda s, a, c, e: ref.embedding(*a),
    OpKind.POSITION_LOOKUP: lambda s, a, c, e: ref.position_lookup(*a, s.attrs["seq_axis"]),
    OpKind.RMS_NORM: lambda s, a, c, e: ref.rms_norm(*a, s.attrs["eps"]),
    OpKind.LAYER_NORM: lambda s, a, c, e: ref.layer_norm(a[0], a[1], a[2] if len(a) > 2 else None, s.attrs["eps"]),
    OpKind.LINEAR: _linear,
    OpKind.ROTARY: lambda s, a, c, e: ref.rotary(*a, s.attrs["head_dim"], s.attrs["layout"]),
    OpKind.ATTENTION: _attention,
    OpKind.GATED_ACT: lambda s, a, c, e: ref.gated_act(*a, s.attrs["activation"]),
    OpKind.ACTIVATION: lambda s, a, c, e: ref.activation(*a, s.attrs["kind"]),
    OpKind.ADD: lambda s, a, c, e: ref.add(*a),
    OpKind.MUL: lambda s, a, c, e: ref.mul(*a),
    OpKind.RESHAPE: lambda s, a, c, e: ref.reshape(a[0], evaluate_shape(s.attrs["shape"], e)),
    OpKind.SLICE: lambda s, a, c, e: ref.slice_last(a[0], s.attrs["start"], s.attrs["end"]),
}


class ReferenceExecutor:
    """Runs a Plan with torch references. `weights` are in the bundle's dtype (float ones in the
    activation dtype); activations are computed in that dtype with float32 accumulation."""

    def __init__(self, plan: Plan, weights: dict[str, torch.Tensor], device: str = "cpu"):
        self.plan = plan
        self.weights = {k: v.to(device) for k, v in weights.items()}
        self.device = device
        self._fallbacks = torch.zeros(1, dtype=torch.int64)
        # sparse-encoded weights (Tiled-CSL, bitmap) are decoded once, by the format's layout alone
        self._decoded: dict[str, torch.Tensor] = {}
        for step in plan.steps:
            if step.op is OpKind.LINEAR and "sparse" in step.attrs:
                parts, _ = split_operands(step.attrs["sparse"], [self.weights.get(name[len(WEIGHT_PREFIX):])
                                                                 for name in step.inputs[1:]])
                self._decoded[step.output] = decode_sparse(step.attrs["sparse"], parts).to(device)

    @property
    def softmax_fallbacks(self) -> int:
        """Attention rows outside their layer's unified-max safe range (the kernels recompute those), since load."""
        return int(self._fallbacks)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache | None,
                phase: str = "prefill") -> torch.Tensor:
        """tokens, positions: [B, S] int64 -> logits [B, S, V] float32. (`phase` only matters to kernels.)"""
        env = {"batch": tokens.shape[0], "seq": tokens.shape[1], "fallbacks": self._fallbacks,
               "decoded": self._decoded}
        buffers: dict[str, torch.Tensor] = {"tokens": tokens.to(self.device), "positions": positions.to(self.device)}
        for step in self.plan.steps:
            args = [self.weights[name[len(WEIGHT_PREFIX):]] if name.startswith(WEIGHT_PREFIX) else buffers[name]
                    for name in step.inputs]
            buffers[step.output] = _RUN[step.op](step, args, cache, env)
            for name in step.frees:
                buffers.pop(name, None)
        return buffers[self.plan.output].float()
