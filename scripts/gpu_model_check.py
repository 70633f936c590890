"""GPU debugging aid: the same generate() through the GPU kernels (eager and CUDA graphs) and the CPU
reference executor, for one prompt and for a ragged batch; prints where the token streams part."""

from __future__ import annotations

import sys

import torch

import fdpp


def main(path: str) -> int:
    cpu = fdpp.load(path, device="cpu")
    eager = fdpp.load(path, device="cuda", cuda_graphs=False)
    graphs = fdpp.load(path, device="cuda", cuda_graphs=True)
    vocab = int(cpu.manifest.model["vocab_size"])
    g = torch.Generator().manual_seed(0)
    batch = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 11, 1, 17, 8, 3, 30, 2)]
    for name, prompts in (("single", batch[:1]), ("two", batch[:2]), ("ragged8", batch)):
        ref = cpu.generate(prompts, max_new_tokens=16).token_ids
        for label, model in (("eager", eager), ("graphs", graphs)):
            got = model.generate(prompts, max_new_tokens=16).token_ids
            diffs = [next((j for j in range(len(r)) if r[j] != o[j]), None) for r, o in zip(ref, got)]
            print(f"{name:8} {label:6} first difference per prompt: {diffs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
