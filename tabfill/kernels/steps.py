"""The step functions of generation, over any forward that writes at a position of one KV sequence (the lean
decoder, or completion.runners' wrappers of it and of transformers). The engine and the benchmarks use these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

# The prompt is prefilled in chunks of this many tokens; a caller may stop between chunks (deadline, cancel).
PREFILL_CHUNK_TOKENS = 128


class Forward(Protocol):
    def forward(self, token_ids: Sequence[int], start_pos: int, *, all_logits: bool = False) -> Tensor:
        """Write `token_ids` at positions start_pos.. (dropping whatever was at or after start_pos) and return
        fp32 logits: [S, V] with `all_logits`, else [V] for the last position."""
        ...


def prefill_chunks(
    model: Forward, token_ids: Sequence[int], start_pos: int = 0, width: Callable[[], int] | None = None
) -> Iterator[tuple[int, Tensor]]:
    """Write `token_ids[start_pos:]` chunk by chunk (`width()` tokens each when given, asked before each chunk;
    else PREFILL_CHUNK_TOKENS); after each chunk yields (positions now written, the last position's logits
    [V]). Stopping the iteration leaves the chunks done so far in the cache."""
    written = start_pos
    while written < len(token_ids):
        chunk = token_ids[written : written + max(1, width() if width is not None else PREFILL_CHUNK_TOKENS)]
        logits = model.forward(chunk, written)
        written += len(chunk)
        yield written, logits


def prefill(model: Forward, token_ids: Sequence[int], start_pos: int = 0) -> Tensor:
    """Write `token_ids[start_pos:]` whole; returns the last position's logits [V]."""
    logits: Tensor | None = None
    for _, logits in prefill_chunks(model, token_ids, start_pos):
        pass
    if logits is None:
        raise ValueError("prefill needs at least one token after start_pos")
    return logits


def decode_one_token(model: Forward, token_id: int, pos: int) -> Tensor:
    """Logits [V] after writing `token_id` at `pos`."""
    return model.forward([token_id], pos)


def verify_draft(model: Forward, token_id: int, draft: Sequence[int], pos: int) -> tuple[list[int], Tensor]:
    """Write `token_id` and the draft after it from `pos` in one forward; keep the longest run of draft tokens
    the model itself would have chosen greedily. Returns (accepted draft tokens, logits [1 + K, V]); the
    next-token logits are `logits[len(accepted)]`. The KV of rejected tokens is overwritten by the next write."""
    logits = model.forward([token_id, *draft], pos, all_logits=True)  # [1 + K, V]
    return list(draft[: accepted_run(draft, logits)]), logits


def accepted_run(draft: Sequence[int], logits: Tensor) -> int:
    """How many leading tokens of `draft` greedy decoding would have chosen, from the logits [1 + K, V] of
    (the token before the draft, *draft)."""
    # NOTE: numpy's argmax on CPU (torch's wakes its thread pool: ~40 µs a row here); both take the first maximum
    on_cpu = logits.device.type == "cpu" and logits.dtype == torch.float32
    choices = logits.detach().numpy().argmax(axis=-1).tolist() if on_cpu else torch.argmax(logits, dim=-1).tolist()
    accepted = 0
    while accepted < len(draft) and choices[accepted] == draft[accepted]:
        accepted += 1
    return accepted
