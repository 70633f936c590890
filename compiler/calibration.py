"""Calibration data: token sequences that passes run the model on to measure it (softmax-input ranges for
the unified max, activation norms for Wanda pruning).

The text is `--calibration FILE` or the bundled default (compiler/data/calibration.txt, Brown corpus
editorials and reviews; never the evaluation text). It is tokenised with the model's own tokenizer; a
model without one is calibrated on the text's UTF-8 bytes as token ids (modulo the vocabulary), and the
manifest says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fdpp.compiler.errors import CompileError

DEFAULT_TEXT = Path(__file__).parent / "data" / "calibration.txt"


@dataclass
class CalibrationSet:
    """Calibration sequences and what they are; `cache` lets passes that run once per target (the passes
    run per target) reuse what they measured on the same graph."""

    tokens: torch.Tensor            # [B, S] int64 token ids
    description: str                # for the manifest: which text, how tokenised, how many tokens
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()


def load_calibration(text_path: str | Path | None, tokenizer_json: str | None, vocab_size: int,
                     num_tokens: int, seq_len: int) -> CalibrationSet:
    """The first `num_tokens` tokens of the text, as rows of `seq_len` (fewer if the text is shorter)."""
    path = Path(text_path) if text_path is not None else DEFAULT_TEXT
    if num_tokens < 1 or seq_len < 2:
        raise CompileError(f"calibration needs at least one sequence of 2+ tokens, got {num_tokens} tokens "
                           f"in rows of {seq_len}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CompileError(f"cannot read calibration text {path}: {e}; give a UTF-8 text file with "
                           f"--calibration") from None
    ids: list[int] = []
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_str(tokenizer_json).encode(text[: 16 * num_tokens], add_special_tokens=False).ids
        how = "the model's tokenizer"
    if not ids:          # no tokenizer, or an empty one (transformers makes one for a directory without any)
        ids = [b % vocab_size for b in text[: 4 * num_tokens].encode("utf-8")]
        how = "UTF-8 bytes as token ids (the model has no usable tokenizer)"
    seq_len = min(seq_len, num_tokens)
    rows = min(len(ids), num_tokens) // seq_len
    if rows == 0:
        raise CompileError(f"calibration text {path} gives {len(ids)} tokens, fewer than one row of {seq_len}; "
                           f"give a longer text with --calibration")
    tokens = torch.tensor(ids[: rows * seq_len], dtype=torch.int64).view(rows, seq_len)
    name = "fdpp's default calibration text (Brown corpus cb/cc)" if text_path is None else str(path)
    return CalibrationSet(tokens, f"{name}: {rows} x {seq_len} tokens, {how}")
