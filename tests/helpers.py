"""Small models and graphs that tests share: tiny random Hugging Face models, their traced IR, their bundles,
and a builder for hand-made IR graphs.

Tiny models: hidden 64, 2 layers, vocabulary 300, 4 query heads (2 KV heads for Llama and Qwen2), seeded,
so every test that asks for the same model gets the same weights. Models, traces and bundles are cached
per process because tracing (~2 s) and compiling (~4 s) dominate a test run.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch

from fdpp.compiler.ir import DictWeightStore, Dim, Graph, Node, Op, TensorType

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=300, max_position_embeddings=256)
TINY_LLAMA = dict(TINY, intermediate_size=128, num_key_value_heads=2)
TINY_QWEN2 = dict(TINY, intermediate_size=128, num_key_value_heads=2)
TINY_OPT = dict(TINY, ffn_dim=128, word_embed_proj_dim=64, do_layer_norm_before=True)
EOS_TOKEN_ID = 256          # the tiny tokenizer's one special token, after its 256 byte tokens
MAX_BATCH, MAX_SEQ_LEN = 4, 128


# --- tiny Hugging Face models ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _build(arch: str, overrides: tuple[tuple[str, Any], ...], seed: int) -> torch.nn.Module:
    import transformers

    config_class, model_class, defaults = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, TINY_LLAMA),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, TINY_QWEN2),
        "opt": (transformers.OPTConfig, transformers.OPTForCausalLM, TINY_OPT),
    }[arch]
    config = config_class(**{**defaults, "bos_token_id": EOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID,
                             "pad_token_id": 0, **dict(overrides)})
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = model_class(config).eval()
    # HF initialises norm weights to ones and biases to zeros; random ones make the patterns' numbers count.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p) if "bias" not in name else 0.1 * torch.randn_like(p))
    return model


def _tiny(arch: str, tmp_path: Path | str | None, overrides: dict, seed: int = 0
          ) -> tuple[torch.nn.Module, Path | None]:
    model = _build(arch, tuple(sorted(overrides.items())), seed)
    if tmp_path is None:
        return model, None
    path = Path(tmp_path) / f"tiny-{arch}"
    if not (path / "config.json").is_file():
        model.save_pretrained(path)
        save_tiny_tokenizer(path)
    return model, path


def tiny_llama(tmp_path: Path | str | None = None, **overrides) -> tuple[torch.nn.Module, Path | None]:
    """A random 2-layer Llama (GQA 4/2 heads); saved with a tokenizer under tmp_path if given -> (model, dir)."""
    return _tiny("llama", tmp_path, overrides)


def tiny_qwen2(tmp_path: Path | str | None = None, **overrides) -> tuple[torch.nn.Module, Path | None]:
    """A random 2-layer Qwen2 (q/k/v biases, GQA 4/2 heads) -> (model, dir or None)."""
    return _tiny("qwen2", tmp_path, overrides)


def tiny_opt(tmp_path: Path | str | None = None, **overrides) -> tuple[torch.nn.Module, Path | None]:
    """A random 2-layer OPT (LayerNorm, learned positions, ReLU MLP) -> (model, dir or None)."""
    return _tiny("opt", tmp_path, overrides)


def save_tiny_tokenizer(path: Path) -> None:
    """A byte-level tokenizer with no merges (one token a byte) plus an end-of-sequence token 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>")
    assert fast.convert_tokens_to_ids("<eos>") == EOS_TOKEN_ID
    fast.save_pretrained(path)


# --- tracing and compiling ---------------------------------------------------------------------

_TRACES: dict[int, tuple[torch.nn.Module, Graph]] = {}


def trace_tiny(model: torch.nn.Module) -> Graph:
    """The model's imported IR (cached per model object)."""
    from fdpp.compiler.frontend_torch import trace

    if id(model) not in _TRACES:
        config = {"model_type": model.config.model_type, "vocab_size": model.config.vocab_size}
        graph = trace(model, DictWeightStore(model.state_dict()), config, MAX_BATCH, MAX_SEQ_LEN)
        _TRACES[id(model)] = (model, graph)          # the model is kept alive so its id stays unique
    return _TRACES[id(model)][1]


def compile_options(dtype: str = "float32", **changes):
    """Options for the tiny models. Passes run by hand (PassContext without calibration data) need the
    synchronized softmax, so that is the default here; the driver (compile_tiny) calibrates."""
    from fdpp.compiler.options import CompileOptions

    return CompileOptions(dtype=dtype, max_batch=MAX_BATCH, max_seq_len=MAX_SEQ_LEN,
                          **{"softmax": "synchronized", **changes})


@functools.lru_cache(maxsize=None)
def _compile(path: str, out_dir: str, dtype: str) -> Path:
    from fdpp.compiler.driver import compile_model

    out = Path(out_dir) / f"{Path(path).name}-{dtype}.fdpp"
    return compile_model(path, "a100", out, compile_options(dtype, softmax="auto"))


def compile_tiny(path: Path | str, tmp_path: Path | str, dtype: str = "float32") -> Path:
    """Compile a saved tiny model for a100 (max batch 4, max seq 128) into tmp_path -> bundle path."""
    return _compile(str(path), str(tmp_path), dtype)


_GLOBAL_MEMORY_OP = re.compile(r"\b(?:ld|st|atom|red)\.global\b")


def assert_kernels_wait_first(path: Path | str) -> int:
    """Every kernel of a bundle built for dependent launch (sm_90): marked for it, exactly one
    griddepcontrol.wait in its PTX, before its first global load, store or atomic, and one
    griddepcontrol.launch_dependents. Returns how many kernels were checked."""
    from fdpp.runtime.bundle import read_bundle
    bundle = read_bundle(path)
    for meta in bundle.manifest.kernels:
        name = meta["name"]
        assert meta["programmatic_dependent_launch"] and meta["constexprs"]["GRID_DEPENDENCY"] is True, name
        ptx = bundle.member_bytes("kernels/" + meta["ptx"]).decode()
        body = ptx[ptx.index(".entry"):].splitlines()
        waits = [i for i, line in enumerate(body) if "griddepcontrol.wait" in line]
        memory = [i for i, line in enumerate(body) if _GLOBAL_MEMORY_OP.search(line)]
        assert len(waits) == 1 and memory and waits[0] < memory[0], f"{name}: wait {waits}, first access {memory[:1]}"
        assert sum("griddepcontrol.launch_dependents" in line for line in body) == 1, name
    return len(bundle.manifest.kernels)


def spread_profile(config: dict, target: str, spread: int, decode_rows: tuple[int, ...], vendor_rows: int,
                   block_k: int, num_stages: int) -> dict:
    """A kernel profile (as `fdcc tune` writes) that puts every linear of a model config on the flat GEMM with a
    spread grid of `spread` programs per 16 rows at decode_rows, and on the vendor GEMM at vendor_rows: bundles
    compiled with it record spread launches wherever the row counts allow."""
    from fdpp.codegen.kernels.linear import spread_block_n
    from fdpp.compiler.tune import PROFILE_VERSION, model_linear_shapes
    entries = []
    for n, k, gated in model_linear_shapes(config):
        flat = {"block_n": spread_block_n(n // 2 if gated else n, spread), "block_k": block_k,
                "num_stages": num_stages, "num_warps": 4, "spread": spread}
        entries += [{"n": n, "k": k, "gated": gated, "m": m, "kernel": "flat_gemm", "config": flat, "us": 1.0,
                     "vendor_us": 2.0} for m in decode_rows]
        entries.append({"n": n, "k": k, "gated": gated, "m": vendor_rows, "kernel": "tc_gemm", "config": {},
                        "us": 1.0, "vendor_us": 1.0})
    return {"profile_version": PROFILE_VERSION, "target": target, "gpu": "forced spread grids", "entries": entries}


def random_tokens(batch: int, seq: int, vocab: int = 300, seed: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randint(0, vocab, (batch, seq), generator=g)


# --- hand-made IR graphs ----------------------------------------------------------------------


class GraphBuilder:
    """Builds a small ir.Graph node by node; weights given as tensors become PARAM nodes.

        b = GraphBuilder()
        x = b.input("x", ("batch", "seq", 8))
        y = b.op(Op.MUL, [x, b.const(2.0)], ("batch", "seq", 8))
        graph = b.build(y)
    """

    def __init__(self):
        self.nodes: list[Node] = []
        self.tensors: dict[str, torch.Tensor] = {}

    def _add(self, node: Node) -> str:
        self.nodes.append(node)
        return node.name

    def _name(self, base: str) -> str:
        return f"{base}_{len(self.nodes)}"

    def input(self, name: str, shape: tuple[Dim, ...], dtype: str = "float32") -> str:
        return self._add(Node(name, Op.INPUT, (), TensorType(tuple(shape), dtype)))

    def param(self, key: str, tensor: torch.Tensor) -> str:
        self.tensors[key] = tensor
        return self._add(Node(self._name("param"), Op.PARAM, (), TensorType(tuple(tensor.shape),
                              str(tensor.dtype).removeprefix("torch.")), {"key": key}))

    def const(self, value: Any) -> str:
        dtype = "bool" if isinstance(value, bool) else "int64" if isinstance(value, int) else "float32"
        return self._add(Node(self._name("const"), Op.CONSTANT, (), TensorType((), dtype), {"value": value}))

    def op(self, op: Op, inputs: list[str], out_shape: tuple[Dim, ...], out_dtype: str = "float32", /,
           **attrs) -> str:
        """A node of `op` with output type out_dtype[out_shape]; keyword arguments are its attrs."""
        return self._add(Node(self._name(op.value), op, tuple(inputs), TensorType(tuple(out_shape), out_dtype),
                              attrs))

    def build(self, *outputs: str, config: dict | None = None) -> Graph:
        return Graph(tuple(self.nodes), tuple(outputs), DictWeightStore(self.tensors), config or {})


def shared_llama(tmp_path_factory) -> tuple[Path, Path]:
    """One saved tiny Llama (with tokenizer) and its float32 bundle per test session -> (model dir, bundle).

    Test modules share it through the caches above; tests must copy the bundle before changing it."""
    root = tmp_path_factory.getbasetemp() / "shared-tiny-llama"
    root.mkdir(exist_ok=True)
    _, path = tiny_llama(root)
    return path, compile_tiny(path, root)


def rows_of_interleaved(buffer: torch.Tensor, rows: int) -> torch.Tensor:
    """The [rows, width] activation held by an interleaved buffer [cdiv(rows, T), width, T] (each column's T rows
    side by side, as a producer with out_rows_together writes it); padding rows dropped."""
    blocks, width, together = buffer.shape
    return buffer.permute(0, 2, 1).reshape(blocks * together, width)[:rows]
