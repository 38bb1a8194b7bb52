"""Tokenizers for a front-end without a local model: a model's `tokenizer.json` read with the `tokenizers`
library (no transformers import), or, when none is found, code points (text prompts).

`FileTokenizer` offers exactly the part of the transformers tokenizer API that prompt building uses
(fim.build_prompt / detect_template, postprocess): calling it with `add_special_tokens` and
`return_offsets_mapping`, `get_vocab`, `added_tokens_decoder`, `convert_tokens_to_ids`,
`convert_ids_to_tokens`, `decode`, and the bos/eos/unk tokens from tokenizer_config.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tabfill.completion.models import DEFAULT_ALIASES, _gguf_cache_dir, default_model_dir


class TokenizerFileError(ValueError):
    """A tokenizer.json or tokenizer_config.json that cannot be read."""


def _special_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class FileTokenizer:
    """A `tokenizers.Tokenizer` with the transformers-style methods the prompt builder calls."""

    def __init__(self, tokenizer: Any, config: dict[str, Any], source: str) -> None:
        self._tokenizer = tokenizer
        self.source = source
        self.bos_token = _special_text(config.get("bos_token"))
        self.eos_token = _special_text(config.get("eos_token"))
        self.unk_token = _special_text(config.get("unk_token"))
        self.pad_token = _special_text(config.get("pad_token"))
        self.added_tokens_decoder = tokenizer.get_added_tokens_decoder()
        self.bos_token_id = self._id(self.bos_token)
        self.eos_token_id = self._id(self.eos_token)
        self.all_special_ids = sorted(i for i, token in self.added_tokens_decoder.items() if token.special)

    @staticmethod
    def from_directory(directory: Path) -> FileTokenizer:
        from tokenizers import Tokenizer  # the Rust tokenizer only; transformers stays out of the front-end

        path = directory / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
            config_path = directory / "tokenizer_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        except (OSError, ValueError, Exception) as exc:  # tokenizers raises its own Exception type
            raise TokenizerFileError(f"cannot read the tokenizer in {directory}: {exc}") from exc
        if not isinstance(config, dict):
            raise TokenizerFileError(f"{directory / 'tokenizer_config.json'} is not a JSON object")
        return FileTokenizer(tokenizer, config, str(path))

    @staticmethod
    def from_json(tokenizer_json: bytes, special: Mapping[str, Any], source: str = "the engine's tokenizer.json") -> FileTokenizer:
        """A team engine's tokenizer: its tokenizer.json bytes and the special tokens it names (tokenizer.json
        alone does not say which token is BOS or EOS)."""
        from tokenizers import Tokenizer

        config = {f"{name}_token": special.get(f"{name}_token") for name in ("bos", "eos", "unk", "pad")}
        return FileTokenizer(Tokenizer.from_str(tokenizer_json.decode("utf-8")), config, source)

    @property
    def backend_tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer` (as a transformers fast tokenizer names it)."""
        return self._tokenizer

    def to_json(self) -> bytes:
        """Its tokenizer.json (what a team engine sends front-ends)."""
        return str(self._tokenizer.to_str()).encode("utf-8")

    def special(self) -> dict[str, Any]:
        """The special tokens and their ids, as a team engine's tokenizer frame names them."""
        special: dict[str, Any] = {}
        for name in ("bos", "eos", "unk", "pad"):
            token = getattr(self, f"{name}_token")
            special[f"{name}_token"], special[f"{name}_token_id"] = token, self._id(token)
        return special

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> dict[str, Any]:
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        result: dict[str, Any] = {"input_ids": list(encoding.ids)}
        if return_offsets_mapping:
            result["offset_mapping"] = [tuple(pair) for pair in encoding.offsets]
        return result

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._tokenizer.get_vocab(with_added_tokens=True))

    def batch_decode(self, batch: Iterable[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return list(self._tokenizer.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens))

    def convert_tokens_to_ids(self, token: str) -> int | None:
        found = self._tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> Any:
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        return [self._tokenizer.id_to_token(i) for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))


class CharTokenizer:
    """Text prompts when no tokenizer of the served model is at hand: one token per code point (so token
    budgets count characters), no special tokens, hence no FIM template (prefix-only prompts). The prompt
    text is a pure function of the document window, so its head stays byte-identical while the user types
    and the server's prefix cache keeps hitting."""

    source = "none (text prompts; budgets count characters)"
    bos_token = eos_token = unk_token = None
    bos_token_id = eos_token_id = None
    added_tokens_decoder: dict[int, Any] = {}
    all_special_ids: list[int] = []

    def __len__(self) -> int:
        return 0x110000

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {"input_ids": [ord(char) for char in text]}
        if return_offsets_mapping:
            result["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return result

    def encode(self, text: str) -> list[int]:
        return [ord(char) for char in text]

    def get_vocab(self) -> dict[str, int]:
        return {}

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return ord(token) if len(token) == 1 else None

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> Any:
        return chr(ids) if isinstance(ids, int) else [chr(i) for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


def tokenizer_directory(spec: str) -> Path | None:
    """Where the tokenizer of `spec` is on this machine, without a download: "default" (the packaged model,
    once pulled), a directory or a tokenizer.json file, a .gguf file that `tabfill model pull` converted, or a
    hub id already in the local Hugging Face cache. None when there is none."""
    spec = spec.strip()
    if not spec:
        return None
    if spec.lower() in DEFAULT_ALIASES:
        directory = default_model_dir()
        return directory if (directory / "tokenizer.json").is_file() else None
    path = Path(spec).expanduser()
    if path.name == "tokenizer.json" and path.is_file():
        return path.parent
    if path.suffix.lower() == ".gguf":
        for candidate in (path.parent, _gguf_cache_dir(path) if path.is_file() else None):
            if candidate is not None and (candidate / "tokenizer.json").is_file():
                return candidate
        return None
    if path.is_dir():
        return path if (path / "tokenizer.json").is_file() else None
    if "/" in spec and not spec.startswith((".", "/", "~")):  # a hub id: only what is already cached here
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
        snapshots = hub / ("models--" + spec.replace("/", "--")) / "snapshots"
        found = sorted(snapshots.glob("*/tokenizer.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
        return found[-1].parent if found else None
    return None


def load_tokenizer(spec: str) -> FileTokenizer | CharTokenizer:
    """The served model's tokenizer when this machine has it, else code points (text prompts)."""
    directory = tokenizer_directory(spec)
    return CharTokenizer() if directory is None else FileTokenizer.from_directory(directory)
