"""GPU check of whole bundles (run on the GPU machine, not in CI).

    python scripts/gpu_validate.py --bundle m.fdpp --hf DIR_OR_GGUF [--text eval.txt] [--prompts tokens]

Loads the bundle on the GPU with and without CUDA graphs, compares greedy tokens with Hugging Face run on
the same GPU in the bundle's dtype, compares perplexity on --text, and prints one summary table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fdpp
from fdpp.runtime.perplexity import perplexity

TEXT_PROMPTS = ["The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):",
                "The three primary colors are", "In 1492, Christopher Columbus", "The recipe for pancakes:",
                "Water boils at", "My favourite book is"]


def _hf(path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    p = Path(path)
    kwargs = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
    root = p.parent if p.suffix == ".gguf" else p
    model = AutoModelForCausalLM.from_pretrained(root, dtype=dtype, **kwargs).cuda().eval()
    try:
        tok = AutoTokenizer.from_pretrained(root, **kwargs)
    except Exception:
        tok = None
    return model, tok


def _hf_greedy(model, ids: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=new, do_sample=False)
    return out[0, len(ids):].tolist()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--hf", required=True, help="the Hugging Face model the bundle was compiled from")
    ap.add_argument("--text", help="text file for perplexity (first 4096 tokens)")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    graphs = fdpp.load(args.bundle, device="cuda", cuda_graphs=True)
    eager = fdpp.load(args.bundle, device="cuda", cuda_graphs=False)
    load_s = time.perf_counter() - t0
    dtype = graphs.dtype
    hf, tok = _hf(args.hf, dtype)
    prompts = [graphs.tokenizer.encode(p) for p in TEXT_PROMPTS] if graphs.tokenizer is not None else []
    if not prompts or not all(prompts):
        g = torch.Generator().manual_seed(0)
        vocab = int(graphs.manifest.model["vocab_size"])
        prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 11, 1, 17, 8, 3, 30, 2)]
    result = {"bundle": args.bundle, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "dtype": graphs.manifest.dtype, "load_s": load_s, "prompts": []}
    with_graphs = graphs.generate(prompts, max_new_tokens=args.new)
    without = eager.generate(prompts, max_new_tokens=args.new)
    one_by_one = [graphs.generate([p], max_new_tokens=args.new).token_ids[0] for p in prompts]
    matches = 0
    for i, ids in enumerate(prompts):
        expected = _hf_greedy(hf, ids, args.new)
        ours = with_graphs.token_ids[i]
        n = min(len(expected), len(ours))
        same = ours[:n] == expected[:n]
        first_diff = next((j for j in range(n) if ours[j] != expected[j]), None)
        matches += same
        result["prompts"].append({"prompt": i, "equal_to_hf": same, "first_difference": first_diff,
                                  "graphs_equal_eager": ours == without.token_ids[i],
                                  "batched_equal_single": ours == one_by_one[i]})
    result["tokens_equal_hf"] = f"{matches}/{len(prompts)}"
    result["graphs_equal_eager"] = all(p["graphs_equal_eager"] for p in result["prompts"])
    result["decode_tok_s_graphs"] = with_graphs.decode_tokens_per_second
    result["decode_tok_s_eager"] = without.decode_tokens_per_second
    if args.text and graphs.tokenizer is not None:
        ids = graphs.tokenizer.encode(Path(args.text).read_text())[:4096]
        window = min(1024, graphs.envelope.max_seq_len)
        ours = perplexity(graphs.logits, ids, window)
        with torch.no_grad():
            theirs = perplexity(lambda x: hf(torch.tensor(x, device="cuda")).logits.float(), ids, window)
        result.update(perplexity_fdpp=ours, perplexity_hf=theirs, perplexity_rel_diff=abs(ours - theirs) / theirs,
                      perplexity_tokens=len(ids))
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
