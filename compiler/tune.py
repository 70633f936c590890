"""`fdcc tune`: measure every linear-kernel candidate per weight shape and row count on the local GPU and
write a profile that `fdcc compile --profile FILE` uses instead of the cost model.

Candidates: the CUDA-core GEMV (M <= 4, a grid of N tiles, K chunks and warps), the Triton flat GEMM
(M <= 64: N tiles, K chunks, pipeline depths; up to M = 16 also grids of 1-4 programs per multiprocessor,
each owning a run of about N / programs features; from M = 32 also 64-row tiles, the plain tensor-core GEMM
with our fused epilogues) and the vendor GEMM through torch. Timing: CUDA-graph replays
of one launch per weight copy, the copies together far larger than L2 (graph_time_us), each candidate
checked against torch first (a wrong candidate is never chosen). `vendor_us` is plain cuBLAS on the same
weights (for a gated shape, without the activation that our fused kernels also do).

With a sparsity, the chunked-CSR kernel's configs too (`sparse_entries`): for each shape a random weight pruned
by magnitude within each row to that sparsity and encoded, each config of CHUNKED_CSR_GRID (and the wrapper's
default) checked against torch and timed the same way over rotating copies of the encoding, for up to 8 rows
(the kernel gathers at most 8 rows of x together; past that the dataflow densifies). The profile records the
fastest config per shape, row count and density; the dataflow uses it for the layers it stores in that
format (passes/sparse_choice.py measured_sparse_config).
"""

from __future__ import annotations

import itertools
import json
import platform
from pathlib import Path
from typing import Callable

import torch

from fdpp.compiler.errors import CompileError
from fdpp.passes.select_kernels import LINEAR_KERNELS

PROFILE_VERSION = 1
FLAT_GEMM_GRID = {"block_n": (16, 32, 64), "block_k": (128, 256), "num_stages": (3, 4, 5)}
# flat GEMM grids matched to the multiprocessors (codegen/kernels/linear.py gemm `spread`), up to 16 rows
SPREAD_GRID = {"per_multiprocessor": (1, 2, 3, 4), "block_k": (128, 256), "num_stages": (4, 5)}
SPREAD_MAX_ROWS = 16
GEMV_GRID = {"block_n": (2, 4, 8), "block_k": (512, 1024), "num_warps": (4, 8)}
GEMV_MAX_ROWS = 4            # the CUDA-core GEMV is a candidate up to this many rows
FLAT_GEMM_MAX_ROWS = 64      # 16-row flat GEMM tiles up to this many; the vendor GEMM is a candidate everywhere
CHUNKED_CSR_GRID = {"block_n": (2, 4, 8), "chunks": (4, 8, 16, 32), "num_warps": (4, 8)}
SPARSE_MAX_ROWS = 8          # chunked-CSR configs are measured up to this many rows
MAX_ERROR = 5e-3             # a candidate's relative error against float32 torch, at most
ROTATION_BYTES = 512 << 20   # weight copies rotated per timing: several times any L2


def model_linear_shapes(config: dict) -> list[tuple[int, int, bool]]:
    """(N, K, gated) of every distinct linear of a Llama/Qwen2/OPT-style model config, as the compiler
    builds them: QKV fused, gate and up fused into one gated GEMM (both also alone, which pruned layers
    keep), o/down, lm_head."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    inter = config.get("intermediate_size") or config.get("ffn_dim")
    plain = {(heads * head_dim, hidden), (kv_heads * head_dim, hidden), (hidden, heads * head_dim),
             (inter, hidden), (hidden, inter), (config["vocab_size"], hidden),
             ((heads + 2 * kv_heads) * head_dim, hidden)}
    gated = {(2 * inter, hidden)} if config.get("intermediate_size") else set()
    return sorted({(n, k, False) for n, k in plain} | {(n, k, True) for n, k in gated})


def spread_candidates(n: int, multiprocessors: int) -> list[dict]:
    """Flat GEMM configs whose grid is 1-4 programs per multiprocessor (per 16 rows of x), each owning a run of
    about N / spread features in the narrowest power-of-two tile that holds one (>= 16); only where that grid
    differs from the plain tiling's."""
    from fdpp.codegen.kernels.linear import spread_block_n
    out = []
    for per_sm, bk, st in itertools.product(SPREAD_GRID["per_multiprocessor"], SPREAD_GRID["block_k"],
                                            SPREAD_GRID["num_stages"]):
        spread = per_sm * multiprocessors
        block_n = spread_block_n(n, spread)
        if spread <= n and spread != -(-n // block_n):
            out.append({"block_n": block_n, "block_k": bk, "num_stages": st, "num_warps": 4, "spread": spread})
    return out


def _candidates(m: int, n: int = 0, multiprocessors: int = 0) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [("tc_gemm", {})]
    if m <= FLAT_GEMM_MAX_ROWS:
        out += [("flat_gemm", {"block_n": bn, "block_k": bk, "num_stages": st, "num_warps": 4})
                for bn, bk, st in itertools.product(*FLAT_GEMM_GRID.values())]
    if m <= SPREAD_MAX_ROWS and multiprocessors:
        out += [("flat_gemm", config) for config in spread_candidates(n, multiprocessors)]
    if m > 16:
        out += [("flat_gemm", {"block_m": 64, "block_n": bn, "block_k": 64, "num_stages": st, "num_warps": w})
                for bn, st, w in itertools.product((64, 128), (3, 4), (4, 8))]
    if m <= GEMV_MAX_ROWS:
        out += [("gemv", {"block_n": bn, "block_k": bk, "num_warps": w})
                for bn, bk, w in itertools.product(*GEMV_GRID.values())]
    return out


def _runner(kernel: str, config: dict, x: torch.Tensor, gated: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """One launch of a candidate on weight w; gated shapes run the fused SiLU-gated epilogue (the vendor GEMM
    then needs torch's activation kernels after it, as the runtime does)."""
    from fdpp.codegen.kernels.linear import gemm, gemv
    from fdpp.runtime.reference_ops import gated_act
    activation = "silu" if gated else None
    if kernel == "tc_gemm":
        if gated:
            return lambda w: gated_act(*torch.nn.functional.linear(x, w).chunk(2, dim=-1), "silu")
        return lambda w: torch.nn.functional.linear(x, w)
    if kernel == "flat_gemm":
        return lambda w: gemm(x, w, gated=activation, block_m=config.get("block_m", 16), block_n=config["block_n"],
                              block_k=config["block_k"], num_stages=config["num_stages"],
                              num_warps=config["num_warps"], spread=config.get("spread", 0))
    return lambda w: gemv(x, w, gated=activation, block_n=config["block_n"], block_k=config["block_k"],
                          num_warps=config["num_warps"])


def time_candidate(kernel: str, config: dict, x: torch.Tensor, weights: list[torch.Tensor], gated: bool,
                   reference: torch.Tensor) -> float | None:
    """graph_time_us of one candidate on x, or None when the compiler or the GPU refuses it or its output on
    weights[0] is further than MAX_ERROR (relative) from reference (so a wrong candidate is never chosen)."""
    return checked_time_us(_runner(kernel, config, x, gated), weights, reference)


def checked_time_us(run: Callable[[object], torch.Tensor], weights: list, reference: torch.Tensor,
                    time_us=None) -> float | None:
    """time_us (default graph_time_us) of run over the rotating weights (tensors, or dicts of an encoding's
    tensors), or None when the compiler or the GPU refuses it or run(weights[0]) is further than MAX_ERROR
    (relative) from reference."""
    try:
        error = float((run(weights[0]).float() - reference).norm() / reference.norm())
        return (time_us or graph_time_us)(run, weights) if error < MAX_ERROR else None
    except Exception:
        return None


def graph_time_us(launch: Callable[[torch.Tensor], object], weights: list[torch.Tensor]) -> float:
    """Median GPU time of one launch: one call per weight copy replayed in a CUDA graph (the copies together
    exceed L2, so every call streams its weight from device memory; no launch gaps)."""
    from fdpp.compiler.bench import graph_replay_ms
    return graph_replay_ms([lambda w=w: launch(w) for w in weights]) * 1e3 / len(weights)


def rotating_weights(n: int, k: int, dtype: torch.dtype, total_bytes: int = ROTATION_BYTES) -> list[torch.Tensor]:
    """Random [N, K] weight copies (scaled like a trained layer) adding up to at least total_bytes."""
    return [torch.randn(n, k, device="cuda", dtype=dtype) * k ** -0.5
            for _ in range(rotation_copies(n * k * dtype.itemsize, total_bytes))]


def rotation_copies(nbytes: int, total_bytes: int = ROTATION_BYTES) -> int:
    """How many copies of nbytes of weights to rotate through: together at least total_bytes (2 to 32)."""
    return max(2, min(32, -(-total_bytes // max(nbytes, 1))))


def tune(target_name: str, shapes: list[tuple[int, int, bool]], rows: list[int], dtype: str,
         say: Callable[[str], None], sparsity: float | None = None, dense: bool = True,
         sparse_grid: bool = True) -> dict:
    """Measure and return the profile (a JSON-ready dict): the dense candidates (unless not `dense`) and, with a
    sparsity, the chunked-CSR configs (tune_chunked_csr; sparse_grid False: each shape's default config alone).
    Every candidate is checked against a float32 torch reference before it is timed (a wrong one is never
    chosen); timings by graph_time_us."""
    import triton
    from fdpp.runtime.reference_ops import fused_linear

    if not torch.cuda.is_available():
        raise CompileError("fdcc tune measures kernels on a GPU; torch sees none here")
    torch_dtype = getattr(torch, dtype)
    multiprocessors = torch.cuda.get_device_properties(0).multi_processor_count
    entries = []
    for n, k, gated in shapes if dense else []:
        weights = rotating_weights(n, k, torch_dtype)
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch_dtype)
            reference = fused_linear(x.float(), weights[0].float(), gated="silu" if gated else None)
            candidates = _candidates(m, n // 2 if gated else n, multiprocessors)
            timings = [(us, kernel, config) for kernel, config in candidates
                       if (us := time_candidate(kernel, config, x, weights, gated, reference)) is not None]
            us, kernel, config = min(timings, key=lambda t: t[0])
            cublas_us = graph_time_us(lambda w: torch.nn.functional.linear(x, w), weights)
            entries.append({"n": n, "k": k, "gated": gated, "m": m, "kernel": kernel, "config": config, "us": us,
                            "vendor_us": cublas_us,
                            "weight_gb_per_s": n * k * torch_dtype.itemsize / (us * 1e-6) / 1e9})
            say(f"[{n}, {k}]{' gated' if gated else ''} M={m}: {kernel} {config} {us:.1f} us "
                f"({cublas_us / us:.2f}x cuBLAS {cublas_us:.1f} us)")
        del weights
    sparse = (tune_chunked_csr(shapes, rows, sparsity, dtype, say, grid=sparse_grid)
              if sparsity is not None else [])
    return {"profile_version": PROFILE_VERSION, "target": target_name, "gpu": torch.cuda.get_device_name(),
            "dtype": dtype, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "timing": "cuda-graph replay over rotating weights",
            "entries": entries, **({"sparsity": sparsity, "sparse_entries": sparse} if sparsity is not None else {})}


def magnitude_pruned(n: int, k: int, sparsity: float, dtype: torch.dtype, seed: int = 0,
                     device: str = "cuda") -> torch.Tensor:
    """Random [N, K] (scaled like a trained layer) with the round(sparsity * K) smallest |w| of every row zeroed:
    magnitude pruning within each output row, as passes/prune_weights.py prunes."""
    generator = torch.Generator(device=device).manual_seed(seed)
    weight = torch.randn(n, k, device=device, generator=generator) * k ** -0.5
    dropped = round(sparsity * k)
    if dropped:
        weight.scatter_(1, weight.abs().topk(dropped, dim=1, largest=False).indices, 0.0)
    return weight.to(dtype)


def chunked_csr_candidates(n: int, chunks_per_row: int, m: int, grid: bool = True) -> list[dict]:
    """The wrapper's default config for weight rows n and m rows of x, then (unless not `grid`) CHUNKED_CSR_GRID's
    others (rows of x gathered together, entries per load and pipelining as the default has them; split-K 1, which
    the fused epilogues need)."""
    from fdpp.codegen.kernels.chunked_csr_linear import default_chunked_csr_config
    default = default_chunked_csr_config(n, chunks_per_row, m)
    others = [{**default, "block_n": bn, "chunks": ch, "num_warps": w, "split_k": 1}
              for bn, ch, w in itertools.product(*CHUNKED_CSR_GRID.values())] if grid else []
    return [default] + [config for config in others if config != default]


def _chunked_csr_runner(x: torch.Tensor, shape: tuple[int, int], gated: bool,
                        config: dict) -> Callable[[dict], torch.Tensor]:
    """One launch of the chunked-CSR kernel on an encoding's tensors, x laid out as bundles' producers write it
    (rows of x side by side when the config gathers several), the gated shapes with their SiLU epilogue."""
    from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear, interleave_rows
    ready = interleave_rows(x, config["rows"]) if config["rows"] > 1 else None
    return lambda t: chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], shape,
                                        gated="silu" if gated else None, x_interleaved=ready, **config)


def tune_chunked_csr(shapes: list[tuple[int, int, bool]], rows: list[int], sparsity: float, dtype: str,
                     say: Callable[[str], None], device: str = "cuda", time_us=None, grid: bool = True) -> list[dict]:
    """Measure the chunked-CSR kernel's candidates (chunked_csr_candidates, its whole grid unless not `grid`) per
    shape and row count (up to SPARSE_MAX_ROWS) on a weight magnitude-pruned to `sparsity`; the profile's
    `sparse_entries`: the fastest config, its time, the default config's, cuBLAS's on the pruned weight stored
    dense, and every candidate's.
    time_us(run, weights) (default graph_time_us, which needs CUDA) times one candidate over the rotating copies."""
    from fdpp.runtime.reference_ops import fused_linear
    from fdpp.runtime.sparse_formats import encode

    torch_dtype = getattr(torch, dtype)
    time_us = time_us or graph_time_us
    entries = []
    for n, k, gated in shapes:
        weight = magnitude_pruned(n, k, sparsity, torch_dtype, device=device)
        encoded = encode(weight.cpu(), "chunked_csr", spread=True)      # as bundles store it (bank-spread)
        first = {part: t.to(device) for part, t in encoded.tensors.items()}
        encodings = [first] + [{part: t.clone() for part, t in first.items()}
                               for _ in range(rotation_copies(encoded.nbytes) - 1)]
        dense = [weight] + [weight.clone() for _ in range(rotation_copies(weight.nbytes) - 1)]
        chunks_per_row = encoded.tile[0]
        for m in (m for m in rows if m <= SPARSE_MAX_ROWS):
            x = torch.randn(m, k, device=device, dtype=torch_dtype)
            reference = fused_linear(x.float(), weight.float(), gated="silu" if gated else None)
            candidates = chunked_csr_candidates(n, chunks_per_row, m, grid)
            timed = [(us, config) for config in candidates
                     if (us := checked_time_us(_chunked_csr_runner(x, (n, k), gated, config), encodings,
                                               reference, time_us)) is not None]
            if not timed:
                raise CompileError(f"fdcc tune: no chunked-CSR config ran correctly for [{n}, {k}] at M={m}")
            us, config = min(timed, key=lambda t: t[0])
            default_us = next((t for t, c in timed if c == candidates[0]), None)
            vendor_us = time_us(lambda w: torch.nn.functional.linear(x, w), dense)
            entries.append({"format": "chunked_csr", "n": n, "k": k, "gated": gated, "m": m,
                            "density": encoded.nnz / (n * k), "config": config, "us": us, "default_us": default_us,
                            "vendor_us": vendor_us, "encoded_bytes": encoded.nbytes,
                            "candidates": [{"config": c, "us": t} for t, c in timed]})
            say(f"[{n}, {k}]{' gated' if gated else ''} M={m} chunked CSR at {sparsity:.0%}: {config} {us:.1f} us "
                f"(default {default_us and f'{default_us:.1f}'} us; {vendor_us / us:.2f}x cuBLAS dense "
                f"{vendor_us:.1f} us; {len(timed)}/{len(candidates)} configs ran)")
        del weight, dense, encodings, first
        torch.cuda.empty_cache()
    return entries


def merged_profile(base: dict, measured: dict) -> dict:
    """measured, plus base's entries (same target) that measured has no entry for: a dense entry is keyed by
    shape and row count, a sparse one also by format and density (to 3 places)."""
    def dense_key(e):
        return e["n"], e["k"], e.get("gated", False), e["m"]

    def sparse_key(e):
        return e["format"], e["n"], e["k"], e.get("gated", False), e["m"], round(e["density"], 3)

    out = dict(measured)
    new_dense = {dense_key(e) for e in measured["entries"]}
    new_sparse = {sparse_key(e) for e in measured.get("sparse_entries", [])}
    out["entries"] = [e for e in base["entries"] if dense_key(e) not in new_dense] + measured["entries"]
    out["sparse_entries"] = ([e for e in base.get("sparse_entries", []) if sparse_key(e) not in new_sparse]
                             + measured.get("sparse_entries", []))
    out["base"] = {"gpu": base["gpu"], "torch": base.get("torch"), "triton": base.get("triton"),
                   "entries_kept": len(out["entries"]) - len(measured["entries"])}
    return out


SHIPPED_PROFILES = Path(__file__).parent / "profiles"


def shipped_profile(target_name: str) -> dict | None:
    """The measured default profile fdpp ships for a target (compiler/profiles/<target>.json), if any."""
    path = SHIPPED_PROFILES / f"{target_name}.json"
    return load_profile(path, target_name) if path.is_file() else None


def load_profile(path: str | Path, target_name: str) -> dict:
    """Read a profile; one-line CompileError if it is not one, or is for another target."""
    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompileError(f"cannot read profile {path}: {e}") from None
    if not isinstance(profile, dict) or profile.get("profile_version") != PROFILE_VERSION \
            or not isinstance(profile.get("entries"), list) or not isinstance(profile.get("gpu"), str):
        raise CompileError(f"{path} is not an fdcc tune profile (version {PROFILE_VERSION}); rerun fdcc tune")
    if profile.get("target") != target_name:
        raise CompileError(f"profile {path} was measured for {profile.get('target')}, not {target_name}; "
                           f"run `fdcc tune -t {target_name}` on that GPU or drop --profile")
    for index, entry in enumerate(profile["entries"]):
        problem = _entry_problem(entry)
        if problem:
            raise CompileError(f"profile {path}: entry {index} {problem}; rerun fdcc tune or fix the entry")
    sparse = profile.get("sparse_entries", [])
    if not isinstance(sparse, list):
        raise CompileError(f"profile {path}: sparse_entries must be a list; rerun fdcc tune or fix the profile")
    for index, entry in enumerate(sparse):
        problem = _sparse_entry_problem(entry)
        if problem:
            raise CompileError(f"profile {path}: sparse entry {index} {problem}; rerun fdcc tune or fix the entry")
    return profile


_ENTRY_FIELDS = {"n": int, "k": int, "m": int, "kernel": str, "config": dict, "us": (int, float),
                 "vendor_us": (int, float)}


def _entry_problem(entry) -> str | None:
    """Why a profile entry cannot drive the dataflow, or None: the fields `select_kernels` reads, typed."""
    if not isinstance(entry, dict):
        return "is not an object"
    for field, kind in _ENTRY_FIELDS.items():
        if not isinstance(entry.get(field), kind) or isinstance(entry.get(field), bool):
            return f"needs '{field}' ({kind.__name__ if isinstance(kind, type) else 'number'})"
    if entry["kernel"] not in LINEAR_KERNELS:
        return f"names kernel '{entry['kernel']}'; known: {', '.join(LINEAR_KERNELS)}"
    if min(entry["n"], entry["k"], entry["m"]) < 1 or not isinstance(entry.get("gated", False), bool):
        return "needs n, k, m >= 1 and a boolean 'gated'"
    return None


def _sparse_entry_problem(entry) -> str | None:
    """Why a sparse profile entry cannot drive the dataflow, or None (the fields sparse_choice reads, typed)."""
    if not isinstance(entry, dict):
        return "is not an object"
    if entry.get("format") != "chunked_csr":
        return f"names format {entry.get('format')!r}; only chunked_csr configs are measured"
    for field, kind in {"n": int, "k": int, "m": int, "config": dict, "us": (int, float),
                        "density": (int, float)}.items():
        if not isinstance(entry.get(field), kind) or isinstance(entry.get(field), bool):
            return f"needs '{field}' ({kind.__name__ if isinstance(kind, type) else 'number'})"
    if min(entry["n"], entry["k"], entry["m"]) < 1 or not 0 < entry["density"] <= 1 \
            or not isinstance(entry.get("gated", False), bool):
        return "needs n, k, m >= 1, a density in (0, 1] and a boolean 'gated'"
    return None
