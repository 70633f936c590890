"""The bundle's schema, shared by the writer (compiler side) and the reader (runtime): manifest and plan.

Both are JSON documents. Every field is plain data; nothing is pickled. `docs/bundle-format.md` is the
specification; FORMAT_VERSION changes whenever a reader of the previous version would misread a bundle.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
WEIGHT_PREFIX = "@"          # a step input that starts with it names a weight tensor, not a buffer


class OpKind(enum.Enum):
    """The ops a plan may contain; runtime.reference_ops gives each its meaning."""

    EMBEDDING = "embedding"
    POSITION_LOOKUP = "position_lookup"
    RMS_NORM = "rms_norm"
    LAYER_NORM = "layer_norm"
    LINEAR = "linear"
    ROTARY = "rotary"
    ATTENTION = "attention"
    GATED_ACT = "gated_act"
    ACTIVATION = "activation"
    ADD = "add"
    MUL = "mul"
    RESHAPE = "reshape"
    SLICE = "slice"              # a view of columns [start, end) of the last axis (attrs start, end)


@dataclass(frozen=True)
class KernelChoice:
    """One implementation of a step, for row counts (tokens in the launch) up to `max_rows` inclusive,
    in one phase ("decode": one token per sequence, "prefill", or "any")."""

    max_rows: int
    kernel: str                          # e.g. "gemv", "flat_gemm", "tc_gemm", "decode_attention_split_kv"
    config: dict[str, Any] = field(default_factory=dict)
    reason: str = ""                     # why the dataflow chose it (cost model numbers or a profile)
    phase: str = "any"
    launches: tuple = ()                 # compiled-kernel launches (codegen/launch_specs.py), as JSON dicts


def pick_choice(choices, rows: int, phase: str) -> KernelChoice | None:
    """The choice that runs a launch of `rows` rows in `phase`: the first of that phase (or "any") with
    rows <= max_rows, else the last of them; None when no choice runs in that phase."""
    candidates = [k for k in choices if k.phase in (phase, "any")]
    for choice in candidates:
        if rows <= choice.max_rows:
            return choice
    return candidates[-1] if candidates else None


@dataclass(frozen=True)
class Step:
    op: OpKind
    inputs: tuple[str, ...]              # buffer names, or WEIGHT_PREFIX + weight name
    output: str
    attrs: dict[str, Any]
    kernels: tuple[KernelChoice, ...] = ()
    source: str = ""                     # model source line, for errors and `fdcc inspect`

    frees: tuple[str, ...] = ()          # buffers no later step reads: the executor drops them here
    out_shape: tuple = ()                # output shape: ints and size expressions over batch and seq
    out_float: bool = True               # output is floating (in the bundle dtype); else int64

    def kernel_for(self, rows: int, phase: str) -> KernelChoice | None:
        return pick_choice(self.kernels, rows, phase)

    def to_json(self) -> dict:
        return {"op": self.op.value, "inputs": list(self.inputs), "output": self.output, "attrs": self.attrs,
                "kernels": [asdict(k) for k in self.kernels], "source": self.source, "frees": list(self.frees),
                "out_shape": list(self.out_shape), "out_float": self.out_float}

    @staticmethod
    def from_json(d: dict) -> "Step":
        return Step(OpKind(d["op"]), tuple(d["inputs"]), d["output"], dict(d["attrs"]),
                    tuple(KernelChoice(**{**k, "launches": tuple(k.get("launches", ()))})
                          for k in d.get("kernels", ())), d.get("source", ""),
                    tuple(d.get("frees", ())), tuple(d.get("out_shape", ())), bool(d.get("out_float", True)))


@dataclass(frozen=True)
class Plan:
    """What to run, in order. Inputs are `tokens` and `positions`, both int64 [batch, seq]."""

    steps: tuple[Step, ...]
    inputs: tuple[str, ...]
    output: str                          # float logits [batch, seq, vocab]
    kv_layers: int                       # number of ATTENTION steps; each owns one cache slot
    kv_heads: int
    head_dim: int

    def to_json(self) -> dict:
        return {"inputs": list(self.inputs), "output": self.output, "kv_layers": self.kv_layers,
                "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "steps": [s.to_json() for s in self.steps]}

    @staticmethod
    def from_json(d: dict) -> "Plan":
        return Plan(tuple(Step.from_json(s) for s in d["steps"]), tuple(d["inputs"]), d["output"],
                    int(d["kv_layers"]), int(d["kv_heads"]), int(d["head_dim"]))


@dataclass(frozen=True)
class Envelope:
    """The shapes the bundle was compiled for."""

    max_batch: int
    max_seq_len: int
    batch_buckets: tuple[int, ...]       # decode batch sizes with their own CUDA graph
    prefill_chunk: int                   # longest prompt chunk one prefill launch processes


@dataclass
class Manifest:
    format_version: int
    fdpp_version: str
    built_with: dict[str, str]           # versions of torch, triton, transformers on the compiling machine
    target: dict[str, Any]               # the compiler's Target row
    model: dict[str, Any]                # architecture facts: family, vocab, hidden, layers, heads, ...
    source: str                          # what was compiled (name, path)
    dtype: str                           # activation and weight dtype: float16 | bfloat16 | float32
    envelope: Envelope
    tokenizer: dict[str, Any] | None     # {"bos_token_id":..., "eos_token_ids": [...]} or None
    weights: dict[str, dict[str, Any]]   # weight name -> {"member": ..., "shape": [...], "dtype": ...}
    layers: list[dict[str, Any]]         # per transformer layer: its linears, attention facts
    softmax: dict[str, Any] = field(default_factory=dict)   # per-layer unified-max facts (FlashDecoding++)
    sparsity: dict[str, Any] = field(default_factory=dict)  # per-weight encodings (Flash-LLM)
    kernels: list[dict[str, Any]] = field(default_factory=list)  # compiled code objects' metadata
    members: dict[str, str] = field(default_factory=dict)   # member name -> sha256 hex (all but manifest)

    def to_json(self) -> dict:
        d = asdict(self)
        d["envelope"]["batch_buckets"] = list(self.envelope.batch_buckets)
        return d

    @staticmethod
    def from_json(d: dict) -> "Manifest":
        env = d["envelope"]
        fields = dict(d)
        fields["envelope"] = Envelope(int(env["max_batch"]), int(env["max_seq_len"]),
                                      tuple(int(b) for b in env["batch_buckets"]), int(env["prefill_chunk"]))
        return Manifest(**fields)
