"""`fdpp.load` and the Model it returns: logits, generate (greedy / sampled, batched, streaming)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from fdpp.runtime.bundle import Bundle, read_bundle
from fdpp.runtime.errors import BundleError, GenerationError
from fdpp.runtime.kernel_executor import DecodeGraphs
from fdpp.runtime.kv_cache import KVCache
from fdpp.runtime.reference_executor import ReferenceExecutor
from fdpp.runtime.sampling import SamplingParams, next_tokens
from fdpp.runtime.tokenizer import Tokenizer

Prompts = str | Sequence[str] | Sequence[Sequence[int]]


@dataclass
class GenerationOutput:
    token_ids: list[list[int]]               # the new tokens, one list per prompt
    text: list[str]                          # their decoded text ("" without a tokenizer)
    prompt_token_ids: list[list[int]]
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reasons: list[str] = field(default_factory=list)   # "stop_token" | "stop_string" | "length"

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(len(t) for t in self.token_ids) - 1 if self.token_ids else 0
        return steps * len(self.token_ids) / self.decode_seconds if self.decode_seconds > 0 and steps > 0 else 0.0


@dataclass
class StreamEvent:
    index: int                               # which prompt
    token_id: int
    text: str                                # the text this token added


def _dtype(name: str) -> torch.dtype:
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


class Model:
    """A loaded bundle. Use `fdpp.load(path)` rather than building one."""

    def __init__(self, bundle: Bundle, device: str, executor=None, cuda_graphs: bool = False):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.plan = bundle.plan
        self.device = torch.device(device)
        self.dtype = _dtype(self.manifest.dtype)
        self.envelope = self.manifest.envelope
        tok = self.manifest.tokenizer
        self.tokenizer = (Tokenizer(bundle.tokenizer_json, tok.get("bos_token_id"), tok.get("eos_token_ids", []))
                          if bundle.tokenizer_json is not None and tok is not None else None)
        self.executor = executor if executor is not None else ReferenceExecutor(self.plan, bundle.weights, device)
        self._persistent_cache: KVCache | None = None
        self._graphs: DecodeGraphs | None = None
        if cuda_graphs:
            self._graphs = DecodeGraphs(self.executor, self._cache(self.envelope.max_batch, 0),
                                        self.envelope.batch_buckets)

    @property
    def softmax_fallbacks(self) -> int:
        """Attention rows (sequence, head, query) that fell outside their layer's unified-max safe range since
        load, and so were recomputed with the synchronized softmax. Reading it waits for the GPU."""
        return self.executor.softmax_fallbacks

    # --- inputs ------------------------------------------------------------------------------
    def _encode(self, prompts: Prompts) -> list[list[int]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise GenerationError("no prompts given")
        if all(isinstance(p, str) for p in prompts):
            if self.tokenizer is None:
                raise GenerationError("this bundle has no tokenizer; pass token ids (list[list[int]]) instead of text")
            ids = [self.tokenizer.encode(p) for p in prompts]
        elif all(isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p) for p in prompts):
            ids = [list(p) for p in prompts]
        else:
            raise GenerationError("prompts must be a str, a list of str, or a list of token-id lists")
        vocab = int(self.manifest.model.get("vocab_size", 0)) or None
        for i, p in enumerate(ids):
            if not p:
                raise GenerationError(f"prompt {i} is empty")
            if vocab and any(t < 0 or t >= vocab for t in p):
                raise GenerationError(f"prompt {i} has token ids outside the vocabulary [0, {vocab})")
        if len(ids) > self.envelope.max_batch:
            raise GenerationError(f"{len(ids)} prompts exceed the bundle's max batch of {self.envelope.max_batch}; "
                                  f"split them or recompile with --max-batch {len(ids)}")
        return ids

    def _check_length(self, ids: list[list[int]], new_tokens: int) -> int:
        longest = max(len(p) for p in ids)
        if longest + new_tokens > self.envelope.max_seq_len:
            raise GenerationError(f"prompt of {longest} tokens plus {new_tokens} new tokens exceeds the bundle's max "
                                  f"sequence length {self.envelope.max_seq_len}; shorten it or recompile with "
                                  f"--max-seq-len {longest + new_tokens}")
        return longest + new_tokens

    def _cache(self, batch: int, length: int) -> KVCache:
        """On a GPU: one cache for the bundle's whole envelope, allocated once (CUDA graphs keep its address).
        On the CPU: a cache just big enough for this request."""
        p = self.plan
        if self.device.type == "cpu":
            return KVCache.allocate(p.kv_layers, batch, p.kv_heads, length, p.head_dim, self.dtype, self.device)
        if self._persistent_cache is None:
            # prefill pads a chunk past the prompt: the extra prefill_chunk slots take those writes
            capacity = self.envelope.max_seq_len + self.envelope.prefill_chunk
            try:
                self._persistent_cache = KVCache.allocate(p.kv_layers, self.envelope.max_batch, p.kv_heads, capacity,
                                                          p.head_dim, self.dtype, self.device)
            except torch.OutOfMemoryError:
                raise GenerationError(f"the KV cache for max batch {self.envelope.max_batch} and max sequence "
                                      f"{self.envelope.max_seq_len} does not fit in GPU memory; recompile with a "
                                      f"smaller --max-batch or --max-seq-len") from None
        return self._persistent_cache

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, phase: str) -> torch.Tensor:
        tokens, positions = tokens.to(self.device), positions.to(self.device)
        if phase == "decode" and self._graphs is not None:
            return self._graphs.run(tokens, positions)
        return self.executor.forward(tokens, positions, cache, phase)

    # --- forward passes ----------------------------------------------------------------------
    def _prefill(self, ids: list[list[int]], cache: KVCache) -> torch.Tensor:
        """Run the prompts (right-padded) through the model in chunks; -> logits of each last token [B, V]."""
        lengths = torch.tensor([len(p) for p in ids])
        width = int(lengths.max())
        tokens = torch.zeros(len(ids), width, dtype=torch.long)
        for b, p in enumerate(ids):
            tokens[b, :len(p)] = torch.tensor(p)
        positions = torch.arange(width)[None, :].expand(len(ids), width)
        last: torch.Tensor | None = None
        chunk = self.envelope.prefill_chunk
        for start in range(0, width, chunk):
            logits = self._forward(tokens[:, start:start + chunk], positions[:, start:start + chunk], cache,
                                   "prefill")
            if last is None:
                last = torch.zeros(len(ids), logits.shape[-1], device=logits.device)
            for b in range(len(ids)):
                if start <= lengths[b] - 1 < start + chunk:
                    last[b] = logits[b, int(lengths[b]) - 1 - start]
        return last

    def logits(self, token_ids: Sequence[Sequence[int]] | torch.Tensor) -> torch.Tensor:
        """Full forward pass: token ids [batch, seq] (equal lengths) -> float32 logits [batch, seq, vocab]."""
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else [list(p) for p in token_ids]
        ids = self._encode(ids)
        if len({len(p) for p in ids}) != 1:
            raise GenerationError("logits() needs prompts of equal length; call it once per length")
        width = self._check_length(ids, 0)
        tokens = torch.tensor(ids)
        positions = torch.arange(width)[None, :].expand(len(ids), width)
        cache = self._cache(len(ids), width)
        chunk = self.envelope.prefill_chunk
        return torch.cat([self._forward(tokens[:, s:s + chunk], positions[:, s:s + chunk], cache, "prefill").cpu()
                          for s in range(0, width, chunk)], dim=1)

    def decode_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Teacher-forced decode of one sequence: the first token as a prefill, then each next one as a decode
        step (the decode kernels, CUDA graphs on a GPU) -> float32 logits [1, n, vocab]. The same numbers
        as logits([ids]) up to the kernels' rounding; used to score text through the decode path."""
        ids = self._encode([list(token_ids)])
        width = self._check_length(ids, 0)
        cache = self._cache(1, width)
        rows = [self._forward(torch.tensor([ids[0][:1]]), torch.zeros((1, 1), dtype=torch.long), cache,
                              "prefill")[0, -1].cpu()]
        for position in range(1, width):
            token = torch.tensor([[ids[0][position]]])
            rows.append(self._forward(token, torch.tensor([[position]]), cache, "decode")[0, -1].cpu())
        return torch.stack(rows)[None]

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # --- generation --------------------------------------------------------------------------
    def stream(self, prompts: Prompts, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop: Sequence[int | str] | None = None,
               _result: GenerationOutput | None = None) -> Iterator[StreamEvent]:
        """Yield each new token as it is made; see generate() for the arguments."""
        params = SamplingParams(temperature, top_k, top_p, seed)
        try:
            params.validate()
        except ValueError as e:
            raise GenerationError(str(e)) from None
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        ids = self._encode(prompts)
        total = self._check_length(ids, max_new_tokens)
        stop_ids = {s for s in (stop or ()) if isinstance(s, int)}
        stop_ids |= set(self.tokenizer.eos_token_ids) if self.tokenizer else set()
        stop_strings = [s for s in (stop or ()) if isinstance(s, str)]
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        batch = len(ids)
        out = _result if _result is not None else GenerationOutput([], [], [])
        out.prompt_token_ids = ids
        out.token_ids = [[] for _ in ids]
        out.stop_reasons = ["length"] * batch
        done = [False] * batch
        cache = self._cache(batch, total)

        t0 = time.perf_counter()
        logits = self._prefill(ids, cache)
        self._synchronize()
        out.prefill_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        lengths = [len(p) for p in ids]
        texts = [""] * batch                     # each row's decoded text so far
        for step in range(max_new_tokens):
            chosen = next_tokens(logits, params, generator).tolist()
            for b, token in enumerate(chosen):
                if done[b]:
                    continue
                out.token_ids[b].append(token)
                piece = ""
                if self.tokenizer is not None:
                    text = self.tokenizer.decode(out.token_ids[b])
                    piece, texts[b] = text[len(texts[b]):], text
                yield StreamEvent(b, token, piece)
                if token in stop_ids:
                    done[b], out.stop_reasons[b] = True, "stop_token"
                elif any(s in texts[b] for s in stop_strings):
                    done[b], out.stop_reasons[b] = True, "stop_string"
            if all(done) or step == max_new_tokens - 1:
                break
            tokens = torch.tensor([[t] for t in chosen])
            positions = torch.tensor([[n + step] for n in lengths])
            logits = self._forward(tokens, positions, cache, "decode")[:, -1]
        self._synchronize()
        out.decode_seconds = time.perf_counter() - t1
        out.text = [self.tokenizer.decode(t) if self.tokenizer else "" for t in out.token_ids]

    def generate(self, prompts: Prompts, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[int | str] | None = None) -> GenerationOutput:
        """Generate up to `max_new_tokens` for each prompt.

        prompts: a str, a list of str, or a list of token-id lists (of any lengths, batched together).
        Greedy unless temperature > 0; then top_k / top_p cut the distribution, and seed makes it repeatable.
        stop: token ids and/or strings that end a sequence (the tokenizer's end-of-sequence ids always do).
        """
        out = GenerationOutput([], [], [])
        for _ in self.stream(prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             seed=seed, stop=stop, _result=out):
            pass
        return out


def default_device() -> str:
    """The local GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(path: str, device: str = "cpu", verify: bool = True, cuda_graphs: bool = True) -> Model:
    """Load a .fdpp bundle; raises BundleError on bad bundles and on bundles this GPU cannot run.

    device "cpu" runs the reference executor (torch references of every op); "cuda" (or "cuda:N") runs the
    bundle's compiled kernels through the driver API, decode steps in CUDA graphs unless cuda_graphs=False.
    """
    if device != "cpu" and not device.startswith("cuda"):
        raise BundleError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    bundle = read_bundle(path, verify_hashes=verify)
    if device == "cpu":
        return Model(bundle, device)
    if not torch.cuda.is_available():
        raise BundleError("device='cuda' but torch sees no GPU here; load with device='cpu'")
    from fdpp.runtime.gpu import check_compatible, load_kernels, weights_to_device
    from fdpp.runtime.kernel_executor import KernelExecutor

    torch_device = torch.device(device)
    if torch_device.index is None:
        torch_device = torch.device("cuda", torch.cuda.current_device())
    check_compatible(bundle, torch_device)
    with torch.cuda.device(torch_device):
        executor = KernelExecutor(bundle.plan, weights_to_device(bundle.weights, torch_device),
                                  load_kernels(bundle, torch_device), _dtype(bundle.manifest.dtype), torch_device)
        return Model(bundle, str(torch_device), executor, cuda_graphs=cuda_graphs)
