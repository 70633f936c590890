"""GPU check of sparse bundles end to end (run on the GPU machine, not in CI).

    python scripts/gpu_sparse_check.py --workdir /tmp/sparse-check

Builds a random mid-size Llama (hidden 768, 3 layers, GQA 12/4, vocabulary 4096: real tile counts, split-K
launches), compiles it with --sparsity 0.7 once per sparse format and once stored dense, and compares on the
GPU (eager and CUDA graphs) against the CPU reference executor of the same bundle: prefill logits (relative
error), and the greedy token streams of a ragged batch (first difference per prompt). A fifth bundle ("spread")
stores the weights dense and takes a profile that puts every decode linear on the flat GEMM with a grid of two
programs per multiprocessor (gemm `spread`). Prints one table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fdpp  # noqa: E402
from helpers import save_tiny_tokenizer, spread_profile  # noqa: E402


def build_model(directory: Path, intermediate_size: int = 2048, layers: int = 3) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(hidden_size=768, intermediate_size=intermediate_size, num_hidden_layers=layers,
                         num_attention_heads=12, num_key_value_heads=4, vocab_size=4096, max_position_embeddings=1024,
                         bos_token_id=256, eos_token_id=256, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    save_tiny_tokenizer(directory)


def compile_bundle(model: Path, out: Path, fmt: str, profile: Path | None = None, target: str = "h200") -> None:
    """The check bundle: `model` at 70% (magnitude) in format `fmt` for `target`, float16, max batch 8; fdcc's own
    error line and exit 1 if the compile fails."""
    compiled = subprocess.run([sys.executable, "-m", "fdpp.compiler.cli", "compile", str(model), "-t", target, "-o",
                               str(out), "--dtype", "float16", "--max-batch", "8", "--max-seq-len", "256",
                               "--sparsity", "0.7", "--prune", "magnitude", "--sparse-format", fmt,
                               "--softmax", "synchronized", *(["--profile", str(profile)] if profile else [])],
                              capture_output=True, text=True)
    if compiled.returncode:
        error = (compiled.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"compiling {out.name} for {target} failed: {error}")


def first_differences(reference: list[list[int]], got: list[list[int]]) -> list[int | None]:
    """Per sequence, the index of the first token that differs from the reference's (None: all equal)."""
    return [next((j for j, (a, b) in enumerate(zip(r, t)) if a != b), None) for r, t in zip(reference, got)]


def linear_kernels(model) -> list[str]:
    """The kernels a loaded bundle's plan runs its linear steps with, sorted."""
    return sorted({k.kernel for step in model.plan.steps for k in step.kernels if step.op.value == "linear"})


def compare(path: Path) -> dict:
    cpu = fdpp.load(path, device="cpu")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 4096, (n,), generator=g).tolist() for n in (5, 37, 1, 17, 8, 3, 64, 2)]
    reference_logits = cpu.logits(prompts[1:2])
    reference_tokens = cpu.generate(prompts, max_new_tokens=12).token_ids
    row = {}
    for label, graphs in (("eager", False), ("graphs", True)):
        gpu = fdpp.load(path, device="cuda", cuda_graphs=graphs)
        logits = gpu.logits(prompts[1:2]).cpu()
        row[f"{label}_logit_error"] = float((logits - reference_logits).norm() / reference_logits.norm())
        tokens = gpu.generate(prompts, max_new_tokens=12).token_ids
        row[f"{label}_first_diffs"] = first_differences(reference_tokens, tokens)
    row["kernels"] = linear_kernels(cpu)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--storage", default="dense,bitmap,tiled_csl,chunked_csr,spread",
                        help="bundles to check, comma-separated (default: all five)")
    args = parser.parse_args()
    wanted = args.storage.split(",")
    unknown = sorted(set(wanted) - {"dense", "bitmap", "tiled_csl", "chunked_csr", "spread"})
    if unknown:
        parser.error(f"--storage: unknown bundle(s) {', '.join(unknown)}; "
                     f"choose from dense, bitmap, tiled_csl, chunked_csr, spread")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "mid-llama"
    build_model(model)
    rows = {}
    for fmt in ("dense", "bitmap", "tiled_csl", "chunked_csr"):
        if fmt in wanted:
            bundle = args.workdir / f"{fmt}.fdpp"
            compile_bundle(model, bundle, fmt)
            rows[fmt] = compare(bundle)
    if "spread" in wanted:
        from transformers import AutoConfig
        # every linear of up to 8 rows on the flat GEMM with two programs per multiprocessor; more rows: vendor
        profile = args.workdir / "spread-profile.json"
        profile.write_text(json.dumps(spread_profile(
            AutoConfig.from_pretrained(model).to_dict(), "h200",
            spread=2 * torch.cuda.get_device_properties(0).multi_processor_count, decode_rows=(1, 8),
            vendor_rows=2048, block_k=128, num_stages=4)))
        compile_bundle(model, args.workdir / "dense-spread.fdpp", "dense", profile)
        rows["spread"] = compare(args.workdir / "dense-spread.fdpp")
    print(f"{'storage':<10} {'eager err':>10} {'graphs err':>10}  first token difference per prompt (eager | graphs)"
          f"  linear kernels")
    for fmt, r in rows.items():
        print(f"{fmt:<10} {r['eager_logit_error']:>10.2e} {r['graphs_logit_error']:>10.2e}  "
              f"{r['eager_first_diffs']} | {r['graphs_first_diffs']}  {', '.join(r['kernels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
