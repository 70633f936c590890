"""Two bundles of the same model on one GPU: decode-step logits and greedy tokens compared, and the linear kernels each
plan uses. For bundles too big for the CPU reference executor, e.g. a llama2-7b grafted by scripts/graft_bundle.py
against the bundle whose weights it took:

    python3 scripts/compare_bundles.py reference.fdpp other.fdpp [--graphs]

Prints one line per bundle (its linear kernels) and the comparison; exits 1 where the logits' relative error is
2e-3 or more or a logit is not finite. Greedy tokens are reported, not judged: a random-weight model's logits are
nearly flat, so a rounding difference may pick another token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import fdpp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_sparse_check import first_differences, linear_kernels  # noqa: E402

MAX_ERROR = 2e-3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--graphs", action="store_true", help="decode with CUDA graphs (default: eager)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu: the reference executor")
    args = parser.parse_args()
    results = []
    for path in (args.reference, args.other):
        try:
            model = fdpp.load(path, device=args.device, cuda_graphs=args.graphs)
        except fdpp.BundleError as error:
            raise SystemExit(f"compare_bundles: {error}") from None
        vocab = model.manifest.model["vocab_size"]
        generator = torch.Generator().manual_seed(3)
        prompts = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (37, 5)]
        print(f"{path}: linear kernels {', '.join(linear_kernels(model))}")
        # decode_logits: the logits of 12 tokens through the decode path (batch 1, as benched)
        logits = model.decode_logits(prompts[0][:12]).float().cpu()
        tokens = [model.generate([p], max_new_tokens=16).token_ids[0] for p in prompts]
        results.append((logits, tokens))
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    (ref_logits, ref_tokens), (logits, tokens) = results
    error = float((logits - ref_logits).norm() / ref_logits.norm())
    first_diffs = first_differences(ref_tokens, tokens)
    finite = bool(torch.isfinite(logits).all())
    print(f"decode_logits over 12 tokens (batch 1): relative error {error:.2e} (finite: {finite}); first differing "
          f"greedy token per prompt (batch 1, 16 new): {first_diffs}")
    return 0 if finite and error < MAX_ERROR else 1


if __name__ == "__main__":
    sys.exit(main())
