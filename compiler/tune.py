"""`fdcc tune`: measure every linear-kernel candidate per weight shape and row count on the local GPU and
write a profile that `fdcc compile --profile FILE` uses instead of the cost model.

Candidates: the CUDA-core GEMV (M = 1, a few tile configs), the Triton flat GEMM (a grid of N tiles, K
chunks and pipeline depths) and the vendor GEMM through torch. Timing: triton.testing.do_bench medians,
inputs rotated over several weight copies so the weights come from device memory, each candidate checked
against torch first (a wrong candidate is never chosen).
"""

from __future__ import annotations

import itertools
import json
import platform
from pathlib import Path
from typing import Callable

import torch

from fdpp.compiler.errors import CompileError

PROFILE_VERSION = 1
FLAT_GEMM_GRID = {"block_n": (16, 32, 64), "block_k": (64, 128, 256), "num_stages": (3, 4, 5)}
GEMV_GRID = {"block_n": (4, 8), "block_k": (512, 1024), "num_warps": (2, 4)}


def model_linear_shapes(config: dict) -> list[tuple[int, int]]:
    """[N, K] of every distinct linear in a Llama/Qwen2/OPT-style model config."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    inter = config.get("intermediate_size") or config.get("ffn_dim")
    shapes = {(heads * head_dim, hidden), (kv_heads * head_dim, hidden), (hidden, heads * head_dim),
              (inter, hidden), (hidden, inter), (config["vocab_size"], hidden)}
    return sorted(shapes)


def _candidates(m: int) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [("tc_gemm", {})]
    out += [("flat_gemm", {"block_n": bn, "block_k": bk, "num_stages": st, "num_warps": 4})
            for bn, bk, st in itertools.product(*FLAT_GEMM_GRID.values())]
    if m == 1:
        out += [("gemv", {"block_n": bn, "block_k": bk, "num_warps": w})
                for bn, bk, w in itertools.product(*GEMV_GRID.values())]
    return out


def _runner(kernel: str, config: dict, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    from fdpp.codegen.kernels.linear import gemm, gemv
    if kernel == "tc_gemm":
        return lambda w: torch.nn.functional.linear(x, w)
    if kernel == "flat_gemm":
        return lambda w: gemm(x, w, block_m=16, block_n=config["block_n"], block_k=config["block_k"],
                              num_stages=config["num_stages"], num_warps=config["num_warps"])
    return lambda w: gemv(x, w, block_n=config["block_n"], block_k=config["block_k"], num_warps=config["num_warps"])


def tune(target_name: str, shapes: list[tuple[int, int]], rows: list[int], dtype: str,
         say: Callable[[str], None]) -> dict:
    """Measure and return the profile (a JSON-ready dict)."""
    import triton

    if not torch.cuda.is_available():
        raise CompileError("fdcc tune measures kernels on a GPU; torch sees none here")
    torch_dtype = getattr(torch, dtype)
    entries = []
    for n, k in shapes:
        copies = max(2, min(8, (256 << 20) // (n * k * torch_dtype.itemsize) + 1))   # > L2 in total
        weights = [torch.randn(n, k, device="cuda", dtype=torch_dtype) * k ** -0.5 for _ in range(copies)]
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch_dtype)
            reference = torch.nn.functional.linear(x.float(), weights[0].float())
            timings = []
            for kernel, config in _candidates(m):
                run = _runner(kernel, config, x)
                try:
                    err = float((run(weights[0]).float() - reference).norm() / reference.norm())
                except Exception:
                    continue                      # a config the compiler or the GPU refuses
                if not err < 1e-2:
                    continue
                turn = iter(itertools.cycle(weights))
                us = triton.testing.do_bench(lambda: run(next(turn)), return_mode="median") * 1e3
                timings.append((us, kernel, config))
            us, kernel, config = min(timings, key=lambda t: t[0])
            vendor_us = next(t[0] for t in timings if t[1] == "tc_gemm")
            entries.append({"n": n, "k": k, "m": m, "kernel": kernel, "config": config, "us": us,
                            "vendor_us": vendor_us,
                            "weight_gb_per_s": n * k * torch_dtype.itemsize / (us * 1e-6) / 1e9})
            say(f"[{n}, {k}] M={m}: {kernel} {config} {us:.1f} us ({vendor_us / us:.2f}x vendor GEMM)")
    return {"profile_version": PROFILE_VERSION, "target": target_name, "gpu": torch.cuda.get_device_name(),
            "dtype": dtype, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "entries": entries}


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
            or not isinstance(profile.get("entries"), list):
        raise CompileError(f"{path} is not an fdcc tune profile (version {PROFILE_VERSION}); rerun fdcc tune")
    if profile.get("target") != target_name:
        raise CompileError(f"profile {path} was measured for {profile.get('target')}, not {target_name}; "
                           f"tune on a {target_name} or drop --profile")
    return profile
