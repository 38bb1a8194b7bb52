"""The batched engine's request and event values (BatchedEngine in completion/batching.py).

Kept apart from batching.py, which imports torch: the engine's network side, its scheduler and a gateway
in front of an OpenAI-compatible server (engine_server/openai_backend.py) use them without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from tabfill.completion.types import Prompt


@dataclass(frozen=True)
class BatchRequest:
    id: str
    prompt: Prompt
    salt: bytes  # the tenant: prefix-cache keys are salted with it
    priority: float  # smaller = sooner (e.g. the deadline as a monotonic time)
    corpus: tuple[int, ...] = ()  # extra tokens for prompt-lookup drafts (e.g. the previous suggestion)


@dataclass(frozen=True)
class BatchEvent:
    id: str
    token_ids: tuple[int, ...]  # tokens generated since the last event (healing tokens included)
    text: str  # continuation text since the last event (healing text stripped; never taken back)
    finish: str | None  # None while running; else one of batching.FINISHES (or "superseded" from the scheduler)
    cached_tokens: int  # prompt tokens whose KV came from the prefix store
    prompt_tokens: int
    unavailable: str = ""  # with finish "error": the engine's model server is unreachable, and why
    # (offset in the whole continuation where a token of `token_ids` starts, its probability), per token
    confidence: tuple[tuple[int, float], ...] = ()


class BackendUnavailable(ValueError):
    """A request refused because the engine's model server (a gateway's backend) is unreachable."""
