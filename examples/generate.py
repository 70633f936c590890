"""Production-style script: load a bundle once, answer prompts from a file or the command line.

    python examples/generate.py smollm2-h100.fdpp "The capital of France is" "Write a haiku about GPUs"
    python examples/generate.py smollm2-h100.fdpp --prompts-file prompts.txt --max-new-tokens 64 --temperature 0.7

Only the runtime is imported: this runs where the compiler and transformers are not installed.
"""

from __future__ import annotations

import argparse
import sys
import time

import fdpp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("prompts", nargs="*")
    parser.add_argument("--prompts-file")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    prompts = list(args.prompts)
    if args.prompts_file:
        with open(args.prompts_file) as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        parser.error("give prompts on the command line or with --prompts-file")
    try:
        model = fdpp.load(args.bundle, device=args.device)
    except fdpp.BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    batch = model.envelope.max_batch
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        group = prompts[i:i + batch]
        out = model.generate(group, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_p=args.top_p, seed=args.seed)
        for prompt, text in zip(group, out.text):
            print(f"### {prompt}\n{prompt}{text}\n")
    print(f"{len(prompts)} prompts in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
