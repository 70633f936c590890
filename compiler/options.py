"""Everything `fdcc compile` can be told, as one frozen dataclass the passes read."""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float16", "bfloat16", "float32")
SOFTMAX_MODES = ("auto", "unified", "synchronized")
PRUNE_METHODS = ("magnitude", "wanda")
SPARSE_FORMATS = ("auto", "bitmap", "tiled_csl", "chunked_csr", "dense")


@dataclass(frozen=True)
class CompileOptions:
    dtype: str = "float16"
    max_batch: int = 8
    max_seq_len: int = 2048
    prefill_chunk: int = 512          # longest prompt piece one prefill launch takes
    sparsity: float = 0.0             # unstructured, per linear weight (passes/prune_weights.py)
    prune: str = "wanda"              # "magnitude" | "wanda"
    prune_include: tuple[str, ...] = ("*",)          # weight-name patterns (fnmatch) to prune
    prune_exclude: tuple[str, ...] = ("*lm_head*",)  # ... and to leave dense
    sparse_format: str = "auto"       # "auto" (the dataflow picks per layer) | a format of SPARSE_FORMATS
    weights: str = "real"             # "real" | "random"
    seed: int = 0                     # for --weights random
    profile: dict | None = None       # `fdcc tune` measurements; replace the cost model where they cover a shape
    softmax: str = "auto"             # "auto" | "unified" | "synchronized" (passes/calibrate_softmax.py)
    calibration: str | None = None    # calibration text file; None: the bundled default
    calibration_tokens: int = 1024    # tokens of it the calibration runs over
    calibration_seq_len: int = 256    # in sequences of this many tokens

    def batch_buckets(self) -> tuple[int, ...]:
        buckets, b = [], 1
        while b < self.max_batch:
            buckets.append(b)
            b *= 2
        return tuple(buckets + [self.max_batch])
