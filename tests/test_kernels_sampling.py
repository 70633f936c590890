"""Greedy argmax and Gumbel-max sampling kernels."""

import pytest
import torch

pytest.importorskip("triton")

from fdpp.codegen.kernels import sampling
from fdpp.codegen.kernels.testing import interpreter_fallback, poisoned_allocations, random_tensor

# without a GPU: in-process under TRITON_INTERPRET=1, else every test here is run again in a child process
_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch,vocab", [(1, 7), (3, 1000), (3, 5003)])
def test_argmax(batch, vocab, dtype):
    torch.manual_seed(30)
    logits = random_tensor((batch, vocab), dtype, DEVICE, scale=5.0)
    with poisoned_allocations():
        out = sampling.argmax(logits, block_v=256)              # several vocabulary chunks
    assert torch.equal(out, sampling.argmax_reference(logits))


def test_argmax_ties_take_the_first_index():
    logits = torch.zeros(3, 600, device=DEVICE)
    logits[0, [5, 300, 599]] = 2.0                              # ties across chunks
    logits[1, [299, 44]] = 1.0                                  # the later tie sits in an earlier lane
    logits[2] = float("-inf")
    with poisoned_allocations():
        out = sampling.argmax(logits, block_v=256)
    assert out.tolist() == sampling.argmax_reference(logits).tolist() == [5, 44, 0]


def test_sample_matches_the_softmax_distribution():
    rows = 1000                                                 # draws; the interpreter runs tl.rand slowly
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -5.0]], device=DEVICE).expand(rows, 7)
    with poisoned_allocations():
        tokens = sampling.sample(logits, temperature=1.5, seed=7)
    counts = torch.bincount(tokens.cpu(), minlength=7).double()
    expected = torch.softmax(logits[0].cpu().double() / 1.5, dim=-1) * rows
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 30.0, f"chi-square {chi_square:.1f} over 6 degrees of freedom (p < 1e-4)"


def test_sample_is_reproducible_by_seed():
    torch.manual_seed(31)
    logits = random_tensor((40, 50), torch.float32, DEVICE)
    tokens = sampling.sample(logits, seed=7)
    assert torch.equal(tokens, sampling.sample(logits, seed=7))
    assert not torch.equal(tokens, sampling.sample(logits, seed=8))


def test_sample_respects_top_k_and_top_p():
    torch.manual_seed(32)
    logits = random_tensor((3, 1000), torch.float16, DEVICE, scale=3.0)
    allowed_k = torch.topk(logits.float(), 5, dim=-1).indices
    tokens = sampling.sample(logits, top_k=5, seed=1)
    assert all(int(tokens[row]) in allowed_k[row].tolist() for row in range(3))
    tokens = sampling.sample(logits, top_p=1e-6, seed=1)     # only the most likely token survives
    assert torch.equal(tokens, sampling.argmax_reference(logits))
    assert torch.equal(sampling.sample(logits, temperature=0.0), sampling.argmax_reference(logits))
