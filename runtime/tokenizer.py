"""The bundle's tokenizer, through the `tokenizers` library (no transformers at run time)."""

from __future__ import annotations

from tokenizers import Tokenizer as _HFTokenizer


class Tokenizer:
    def __init__(self, tokenizer_json: str, bos_token_id: int | None, eos_token_ids: list[int]):
        self._tok = _HFTokenizer.from_str(tokenizer_json)
        self.bos_token_id = bos_token_id
        self.eos_token_ids = list(eos_token_ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()
