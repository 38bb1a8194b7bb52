"""How fast the user types, per document, and the deadline that follows from it.

A model answer is useful while typing only if it lands before the next key: the deadline aims at half the
key interval (the other half covers the request's way there and back and drawing), never longer than the
configured deadline and not so short that nothing can be decoded.

NOTE: the pace is a moving average on purpose. A median of the last 8 key gaps (a hesitation then does not
lengthen the next keys' deadlines) was tried and measured: over the bench's typing replay (6 cases, 781
keys), two rounds each, interleaved, it answered 68 requests after their next key against the average's
82, but its deadlines were shorter, so 612 answers were empty against 487 and a correct suggestion was on
screen after 584 keys against 667. Content at the deadline is worth more than the few answers it makes late.

The pace is measured by the server from the spacing of didChange notifications, not sent by the client:
it then works for any LSP client, needs no protocol extension, and a client that batches changes (Neovim
sends several keys' edits in one notification) is still measured per key, since each key is one content
change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

PAUSE_MS = 1_000.0  # a longer gap between keys is a pause, not the pace: the user is not typing then
MIN_TYPING_DEADLINE_MS = 25.0  # below this hardly a token is decoded on CPU
MAX_KEY_CHARS = 16  # a change inserting more is a paste or an accepted suggestion, not a key
_SMOOTHING = 0.3


@dataclass
class _Keys:
    last_s: float
    interval_ms: float | None = None


class TypingPace:
    """The moving average interval between keys per document; `interval_ms` is None while the user rests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._documents: dict[str, _Keys] = {}

    def keys(self, uri: str, inserted: list[str]) -> None:
        """A didChange with these content changes (their inserted texts) arrived now."""
        now = self._clock()
        count = sum(1 for text in inserted if len(text) <= MAX_KEY_CHARS)
        keys = self._documents.get(uri)
        if keys is None:
            self._documents[uri] = _Keys(now)
            return
        gap_ms = (now - keys.last_s) * 1000
        keys.last_s = now
        if count == 0 or gap_ms > PAUSE_MS:
            return
        per_key = gap_ms / count
        keys.interval_ms = per_key if keys.interval_ms is None else (1 - _SMOOTHING) * keys.interval_ms + _SMOOTHING * per_key

    def interval_ms(self, uri: str) -> float | None:
        """The user's key interval in this document while they type (the last key within PAUSE_MS), else None."""
        keys = self._documents.get(uri)
        if keys is None or keys.interval_ms is None or (self._clock() - keys.last_s) * 1000 > PAUSE_MS:
            return None
        return keys.interval_ms

    def forget(self, uri: str) -> None:
        self._documents.pop(uri, None)


def typing_deadline_ms(base_ms: float, key_interval_ms: float | None) -> float:
    """The deadline for a request made while typing at `key_interval_ms` (None: not typing): half the
    interval, within [MIN_TYPING_DEADLINE_MS, base_ms]."""
    if key_interval_ms is None:
        return base_ms
    return max(min(base_ms, MIN_TYPING_DEADLINE_MS), min(base_ms, key_interval_ms / 2))
