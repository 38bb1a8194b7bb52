"""The model's tokenizer on a front-end without transformers: a `tokenizers.Tokenizer` from the engine's
tokenizer.json, with the few methods of a transformers tokenizer that prompt building and post-processing
use (TokenizerLike), and the special tokens the engine names (tokenizer.json alone does not say which
token is BOS or EOS)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Tokenizer


class EngineTokenizer:
    def __init__(self, tokenizer_json: bytes, special: Mapping[str, Any]) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        self.special = dict(special)
        self.bos_token, self.bos_token_id = _special(special, "bos")
        self.eos_token, self.eos_token_id = _special(special, "eos")
        self.unk_token, self.unk_token_id = _special(special, "unk")
        self.pad_token, self.pad_token_id = _special(special, "pad")
        self.added_tokens_decoder: dict[int, AddedToken] = dict(self._tokenizer.get_added_tokens_decoder())
        self.all_special_ids = sorted(i for i, token in self.added_tokens_decoder.items() if token.special)
        self._vocab: dict[str, int] | None = None

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> dict[str, Any]:
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        result: dict[str, Any] = {"input_ids": list(encoding.ids)}
        if return_offsets_mapping:
            result["offset_mapping"] = [tuple(pair) for pair in encoding.offsets]
        return result

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch: Iterable[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self._tokenizer.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    def get_vocab(self) -> dict[str, int]:
        if self._vocab is None:
            self._vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        return self._vocab

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> Any:
        if isinstance(tokens, str):
            token_id = self._tokenizer.token_to_id(tokens)
            return token_id if token_id is not None else self.unk_token_id
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> Any:
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        return [self._tokenizer.id_to_token(i) for i in ids]


def _special(special: Mapping[str, Any], name: str) -> tuple[str | None, int | None]:
    token, token_id = special.get(f"{name}_token"), special.get(f"{name}_token_id")
    return (token if isinstance(token, str) else None), (token_id if isinstance(token_id, int) and not isinstance(token_id, bool) else None)
