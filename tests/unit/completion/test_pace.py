"""The typing pace per document (from didChange spacing) and the deadline it sets."""

from __future__ import annotations

import pytest

from tabfill.completion.pace import MIN_TYPING_DEADLINE_MS, PAUSE_MS, TypingPace, typing_deadline_ms
from tabfill.completion.settings import deadline_ms
from tabfill.completion.types import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000


def test_the_key_interval_follows_typing_and_is_unknown_while_resting() -> None:
    clock = Clock()
    pace = TypingPace(clock)
    uri = "file:///a.py"
    assert pace.interval_ms(uri) is None
    pace.keys(uri, ["d"])
    assert pace.interval_ms(uri) is None  # one key tells no pace
    for char in "ef foo":
        clock.advance_ms(100)
        pace.keys(uri, [char])
    assert pace.interval_ms(uri) == pytest.approx(100)
    clock.advance_ms(240)
    pace.keys(uri, ["(", "x"])  # a client that batched two keys into one didChange: still 120 ms a key
    assert 100 < (pace.interval_ms(uri) or 0) < 120
    clock.advance_ms(PAUSE_MS + 1)
    assert pace.interval_ms(uri) is None  # resting: not typing
    pace.keys(uri, [")"])  # the first key after a pause does not count the pause as the pace
    assert 100 < (pace.interval_ms(uri) or 0) < 120
    clock.advance_ms(50)
    before = pace.interval_ms(uri)
    pace.keys(uri, ["def parse(text):\n    return json.loads(text)\n"])  # a paste, not a key
    assert pace.interval_ms(uri) == before
    assert pace.interval_ms("file:///other.py") is None
    pace.forget(uri)
    assert pace.interval_ms(uri) is None


def test_the_deadline_aims_at_half_the_key_interval_within_bounds() -> None:
    assert typing_deadline_ms(80, None) == 80  # not typing: the device default
    assert typing_deadline_ms(80, 100) == 50  # 10 keys/s
    assert typing_deadline_ms(80, 250) == 80  # 4 keys/s: never longer than the default
    assert typing_deadline_ms(80, 20) == MIN_TYPING_DEADLINE_MS  # very fast bursts: still room to decode
    assert deadline_ms(Settings(), "cpu", 100) == 50
    assert deadline_ms(Settings(), "cuda", 100) == 50
    assert deadline_ms(Settings(deadline_ms=70), "cpu", 100) == 70  # a configured deadline fixes it
