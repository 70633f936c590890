"""The kernel executor: runs a plan by following the launches recorded in it, with compiled kernels.

On a GPU the kernels are the bundle's code objects, loaded through the driver API (runtime/cuda_launcher.py);
no Triton is needed. In tests the same executor runs on the CPU with each launch going to the Triton
interpreter, which checks the recorded launches against the kernels themselves. Choices recorded as
vendor-library or view ops (large-M GEMM through torch/cuBLAS, residual adds, reshapes) run through torch.

Decode steps can be captured in CUDA graphs, one per batch bucket (see DecodeGraphs).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from fdpp.runtime import reference_ops as ref
from fdpp.runtime.dims import evaluate_dim, evaluate_shape
from fdpp.runtime.errors import GenerationError
from fdpp.runtime.kv_cache import KVCache
from fdpp.runtime.schema import WEIGHT_PREFIX, KernelChoice, OpKind, Plan, Step

Launcher = Callable[..., None]           # launcher(grid, *args)
# The persistent workspace every attention launch adds its recomputed rows to (codegen/launch_specs.FALLBACKS)
_FALLBACKS_KEY = ("softmax_fallbacks", (1,), torch.int32)


def _linear_through_torch(attrs: dict, args: list[torch.Tensor]) -> torch.Tensor:
    """The vendor GEMM (cuBLAS / hipBLASLt through torch), then the fused epilogues in torch."""
    bias, residual = ref.linear_operands(attrs, args[2:])
    y = F.linear(args[0], args[1], bias)
    if attrs.get("gated"):
        y = ref.gated_act(*y.chunk(2, dim=-1), attrs["gated"])
    return y + residual if residual is not None else y


_TORCH_OPS: dict[OpKind, Callable[[dict, list[torch.Tensor]], torch.Tensor]] = {
    OpKind.LINEAR: _linear_through_torch,
    OpKind.ADD: lambda attrs, a: torch.add(a[0], a[1]),
    OpKind.MUL: lambda attrs, a: torch.mul(a[0], a[1]),
}


class KernelExecutor:
    """Runs a Plan's recorded launches. `kernels` maps a kernel key to a launcher(grid, *args)."""

    def __init__(self, plan: Plan, weights: Mapping[str, torch.Tensor], kernels: Mapping[str, Launcher],
                 dtype: torch.dtype, device: torch.device | str):
        self.plan = plan
        self.weights = dict(weights)
        self.kernels = dict(kernels)
        self.dtype = dtype
        self.device = torch.device(device)
        # workspaces marked persistent: zeroed once, kept, and left zero by the kernels that use them
        self._persistent: dict[tuple, torch.Tensor] = {}
        missing = {launch["kernel"] for s in plan.steps for k in s.kernels for launch in k.launches} - set(kernels)
        if missing:
            raise GenerationError(f"the bundle's plan launches kernels it does not contain ({sorted(missing)[0]}…)")

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, phase: str) -> torch.Tensor:
        """tokens, positions: [B, S] int64 on the device -> logits [B, S, V] float32. phase: decode|prefill."""
        tokens, positions = tokens.contiguous(), positions.contiguous()   # kernels index them as flat arrays
        env = self.launch_env(*tokens.shape, cache)
        buffers: dict[str, torch.Tensor] = {"tokens": tokens, "positions": positions}
        for step in self.plan.steps:
            buffers[step.output] = self._run(step, buffers, cache, env, phase)
            for name in step.frees:
                buffers.pop(name, None)
        return buffers[self.plan.output].float()

    def launch_env(self, batch: int, seq: int, cache: KVCache) -> dict:
        """The size symbols of a launch of [batch, seq] tokens (what forward() evaluates launches with)."""
        return {"batch": batch, "seq": seq, "rows": batch * seq, "capacity": cache.capacity}

    def run_step(self, step: Step, buffers: dict, cache: KVCache, env: dict, phase: str) -> torch.Tensor:
        """One step on buffers that hold its inputs -> its output (for measuring steps one kind at a time)."""
        return self._run(step, buffers, cache, env, phase)

    def _tensor(self, ref: str, buffers: dict, step: Step, cache: KVCache, out: torch.Tensor | None,
                workspace: dict) -> torch.Tensor:
        if ref == "out":
            return out
        if ref.startswith(WEIGHT_PREFIX):
            return self.weights[ref[len(WEIGHT_PREFIX):]]
        if ref == "k_cache":
            return cache.keys[step.attrs["layer"]]
        if ref == "v_cache":
            return cache.values[step.attrs["layer"]]
        if ref.startswith("ws:"):
            return workspace[ref[3:]]
        return buffers[ref]

    def _workspace(self, name: str, spec: dict, env: dict) -> torch.Tensor:
        shape, dtype = evaluate_shape(spec["shape"], env), getattr(torch, spec["dtype"])
        if not spec.get("persistent"):
            return torch.empty(shape, dtype=dtype, device=self.device)
        key = (name, tuple(shape), dtype)
        if key not in self._persistent:
            self._persistent[key] = torch.zeros(shape, dtype=dtype, device=self.device)
        return self._persistent[key]

    @property
    def softmax_fallbacks(self) -> int:
        """Attention rows the unified-max kernels recomputed with the synchronized scheme, since load."""
        counter = self._persistent.get(_FALLBACKS_KEY)
        return int(counter.item()) if counter is not None else 0

    def set_softmax_fallbacks(self, count: int) -> None:
        """Set the count (DecodeGraphs uses it to leave out its warm-up run)."""
        counter = self._persistent.get(_FALLBACKS_KEY)
        if counter is not None:
            counter.fill_(count)

    def _run(self, step: Step, buffers: dict, cache: KVCache, env: dict, phase: str) -> torch.Tensor:
        if step.op is OpKind.RESHAPE:
            return buffers[step.inputs[0]].reshape(evaluate_shape(step.attrs["shape"], env))
        if step.op is OpKind.SLICE:                 # a view; the readers' launches carry its row stride
            return buffers[step.inputs[0]][..., step.attrs["start"]:step.attrs["end"]]
        choice: KernelChoice | None = step.kernel_for(env["rows"], phase)
        if choice is None or not choice.launches:
            if step.op not in _TORCH_OPS:
                raise GenerationError(f"step {step.output} ({step.op.value}) has no launches for "
                                      f"{env['rows']} rows in {phase}; the bundle is incomplete")
            args = [self._tensor(r, buffers, step, cache, None, {}) for r in step.inputs]
            return _TORCH_OPS[step.op](step.attrs, args)
        dtype = self.dtype if step.out_float else torch.int64
        shape = evaluate_shape(step.out_shape, env)
        together = choice.config.get("out_rows_together", 1)
        if together > 1:    # written interleaved for the chunked-CSR linear that reads it (docs/bundle-format.md)
            shape = (-(-math.prod(shape[:-1]) // together), shape[-1], together)
        out = torch.empty(shape, dtype=dtype, device=self.device)
        # scratch of the step's launches (e.g. split-KV partial results), and persistent counters
        workspace = {name: self._workspace(name, spec, env)
                     for launch in choice.launches for name, spec in launch.get("workspace", {}).items()}
        for launch in choice.launches:
            args: list[Any] = []
            for kind, value in launch["args"]:
                if kind == "t":
                    args.append(self._tensor(value, buffers, step, cache, out, workspace))
                elif kind == "i":
                    args.append(evaluate_dim(value, env))
                else:
                    args.append(float(value))
            grid = tuple(evaluate_dim(g, env) for g in launch["grid"])
            if all(g > 0 for g in grid):
                self.kernels[launch["kernel"]](grid, *args)
        return out


class DecodeGraphs:
    """One CUDA graph per decode batch bucket: the whole decode step replays as one launch.

    Inputs are copied into static buffers. Rows past the real batch (padding up to the bucket) decode a
    dummy token at position 0 of their own cache rows, which no live sequence uses (a request's sequences
    are rows 0..batch-1), so they attend to one key. The warm-up run before capture, made while live
    sequences may fill any row, decodes at the cache's last slot, which no sequence reaches (the cache
    holds max_seq_len + prefill_chunk slots); the softmax fallbacks it may count are taken back.
    """

    def __init__(self, executor: KernelExecutor, cache: KVCache, buckets: tuple[int, ...]):
        self.executor, self.cache, self.buckets = executor, cache, tuple(sorted(buckets))
        self._graphs: dict[int, tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _bucket(self, batch: int) -> int:
        for b in self.buckets:
            if batch <= b:
                return b
        raise GenerationError(f"decode batch {batch} exceeds the bundle's largest bucket {self.buckets[-1]}")

    def _capture(self, bucket: int):
        device = self.executor.device
        tokens = torch.zeros((bucket, 1), dtype=torch.long, device=device)
        positions = torch.full((bucket, 1), self.cache.capacity - 1, dtype=torch.long, device=device)
        fallbacks = self.executor.softmax_fallbacks
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):                    # warm-up: loads modules, allocates persistent scratch
            self.executor.forward(tokens, positions, self.cache, "decode")
        torch.cuda.current_stream(device).wait_stream(side)
        self.executor.set_softmax_fallbacks(fallbacks)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.executor.forward(tokens, positions, self.cache, "decode")
        return graph, tokens, positions, logits

    def run(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions [B, 1] -> logits [B, 1, V] float32 (a view into the graph's output)."""
        batch = tokens.shape[0]
        bucket = self._bucket(batch)
        if bucket not in self._graphs:
            self._graphs[bucket] = self._capture(bucket)
        graph, static_tokens, static_positions, logits = self._graphs[bucket]
        static_tokens.zero_()
        static_positions.zero_()
        static_tokens[:batch].copy_(tokens)
        static_positions[:batch].copy_(positions)
        graph.replay()
        return logits[:batch]
