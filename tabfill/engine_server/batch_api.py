"""The BatchedEngine's request and event values (INTERFACES.md), from tabfill.completion.batching.

Until the batched engine is merged, the same frozen dataclasses are defined here so the scheduler and the
serial fallback can be written and tested against the agreed API.
"""

from __future__ import annotations

from dataclasses import dataclass

from tabfill.completion.types import Prompt

try:
    from tabfill.completion.batching import BatchEvent, BatchRequest
except ImportError:  # NOTE: the batched engine's branch is not merged yet

    @dataclass(frozen=True)
    class BatchRequest:  # type: ignore[no-redef]
        id: str
        prompt: Prompt
        salt: bytes
        priority: float  # smaller = sooner (the deadline as a monotonic time)
        corpus: tuple[int, ...] = ()

    @dataclass(frozen=True)
    class BatchEvent:  # type: ignore[no-redef]
        id: str
        token_ids: tuple[int, ...]
        text: str  # new text since the last event
        finish: str | None  # None while running; "stop" | "length" | "eos" | "cancelled" | "error"
        cached_tokens: int
        prompt_tokens: int


__all__ = ["BatchEvent", "BatchRequest"]
