"""Where tokens come from: the one interface the completion service generates through.

The service never knows which kind of source it holds (completion.sources opens one by `Settings.engine`):
in process (`engine.Engine`), or a server. Every call comes from the service's single engine-worker thread
and blocks; a remote source may run its own I/O thread inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tabfill.completion.types import CancelToken, Deadline, EngineInfo, Generation, Prompt, Resumable

__all__ = ["Resumable", "TokenSource", "TokenizerLike"]


class TokenizerLike(Protocol):
    """The tokenizer calls the front-end makes (fim.build_prompt, fim.detect_template): a transformers
    tokenizer has them, and so can a thin wrapper of a `tokenizers.Tokenizer`, without transformers."""

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token(self) -> str | None: ...

    @property
    def bos_token(self) -> str | None: ...

    @property
    def unk_token(self) -> str | None: ...

    @property
    def added_tokens_decoder(self) -> Mapping[int, Any]:
        """id -> added token (with a boolean `special`)."""
        ...

    def __call__(self, text: str, *, add_special_tokens: bool = ..., return_offsets_mapping: bool = ...) -> Mapping[str, Any]:
        """{"input_ids": [...], "offset_mapping": [(start, end), ...] (when asked)}."""
        ...

    def get_vocab(self) -> Mapping[str, int]: ...

    def convert_tokens_to_ids(self, tokens: str) -> Any: ...

    def convert_ids_to_tokens(self, ids: Any) -> Any: ...


class TokenSource(Protocol):
    """Greedy generation for prompts the front-end built; blocking calls from one thread."""

    info: EngineInfo

    @property
    def tokenizer(self) -> TokenizerLike: ...

    def describe(self) -> dict[str, object]:
        """Its set-up and its caches' counters, for `tabfill/status` ("engine")."""
        ...

    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline, corpus: Sequence[int] = (), *, document: str = "") -> Generation:
        """Generate until a stop, EOS, max tokens, cancellation or the deadline; at the deadline the result has
        finish_reason "deadline" and a `continuation`. `corpus` (e.g. the previous answer's tokens) feeds drafts.
        `document` (its URI) lets a shared engine keep one generation per document (a newer one supersedes)."""
        ...

    def resume(self, state: Resumable, cancel: CancelToken, deadline: Deadline) -> Generation:
        """Go on with a generation cut by its deadline (the whole text so far, as `generate` returns it).
        Finish "cancelled" while `cancel` is not set: the source dropped it (e.g. a shared engine superseded
        it); the caller starts over."""
        ...

    def warm(self, token_ids: list[int], cancel: CancelToken, *, document: str = "") -> int:
        """Prefill a prompt expected soon (in `document`); returns the tokens it ran here (0 when there was
        nothing to do, or when a server does the work)."""
        ...

    def close(self) -> None: ...
