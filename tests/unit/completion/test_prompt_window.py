"""`stable_prefix_start`: the prompt window's start survives typing (tokenizer-free)."""

import math
import random

import pytest

from tabfill.completion.prompt import stable_prefix_start

MAX_CHARS, CHUNK_CHARS = 2000, 256


def _long_file(num_lines: int = 400, seed: int = 7) -> str:
    rng = random.Random(seed)
    return "".join(" " * rng.randrange(0, 12) + "x = f(y)" * rng.randrange(0, 8) + "\n" for _ in range(num_lines))


def _check_bound(text: str, offset: int, start: int, max_chars: int = MAX_CHARS) -> None:
    assert 0 <= start <= offset
    assert offset - start <= max_chars
    # a line start whenever a line starts within max_chars of the cursor
    if "\n" in text[max(0, offset - max_chars - 1) : offset]:
        assert start == 0 or text[start - 1] == "\n"


def test_typing_moves_the_start_only_at_chunk_boundaries() -> None:
    text = _long_file()
    assert len(text) > 3 * MAX_CHARS
    typed = "value = compute(alpha, beta) + gamma(delta) * epsilon - zeta(eta, theta); " * 3
    typed = typed[:200]
    cursor = len(text) // 2
    cursor = text.index("\n", cursor)  # type at the end of a line in the middle of the file
    starts, sliding_starts = [], []
    for n in range(len(typed) + 1):
        document = text[:cursor] + typed[:n] + text[cursor:]
        offset = cursor + n
        start = stable_prefix_start(document, offset, MAX_CHARS, CHUNK_CHARS)
        _check_bound(document, offset, start)
        starts.append(start)
        sliding_starts.append(document.find("\n", offset - MAX_CHARS - 1) + 1)  # the next line start, unsnapped
    assert _moves(starts) <= math.ceil(len(typed) / CHUNK_CHARS) + 1
    assert _moves(sliding_starts) >= 5  # what snapping avoids: the start moved with each line the bound crossed


def _moves(starts: list[int]) -> int:
    return sum(1 for a, b in zip(starts, starts[1:]) if a != b)


def test_every_offset_gives_a_line_start_within_max_chars() -> None:
    text = _long_file(seed=3)
    for offset in range(0, len(text) + 1, 7):
        for max_chars, chunk_chars in [(MAX_CHARS, CHUNK_CHARS), (100, 32), (50, 50)]:
            start = stable_prefix_start(text, offset, max_chars, chunk_chars)
            _check_bound(text, offset, start, max_chars)
            if offset > max_chars:  # and not far from the bound: within a chunk and the line that follows it
                following = text.find("\n", offset - max_chars + chunk_chars - 1)
                assert start <= max(offset - max_chars + chunk_chars, following + 1)


def test_the_start_is_the_same_within_a_chunk() -> None:
    text = _long_file(seed=5)
    base = 10 * CHUNK_CHARS + MAX_CHARS  # offset - max_chars is a chunk boundary here
    starts = {stable_prefix_start(text, offset, MAX_CHARS, CHUNK_CHARS) for offset in range(base + 1, base + CHUNK_CHARS + 1)}
    assert len(starts) == 1
    assert stable_prefix_start(text, base + CHUNK_CHARS + 1, MAX_CHARS, CHUNK_CHARS) not in starts  # next chunk


def test_short_files_start_at_zero() -> None:
    text = "def f(x):\n    return x\n"
    for offset in range(len(text) + 1):
        assert stable_prefix_start(text, offset, MAX_CHARS, CHUNK_CHARS) == 0
    assert stable_prefix_start("a" * 100, 100, 100, 32) == 0


def test_a_cursor_inside_a_very_long_line_gets_a_valid_bound() -> None:
    text = "import os\n" + "x" * 10_000
    for offset in (5_000, 5_001, 10_010):
        start = stable_prefix_start(text, offset, 1000, 128)
        assert 0 < start <= offset and offset - start <= 1000
        assert start % 128 == 0  # no line start in range: the chunk boundary itself
    assert stable_prefix_start(text, 5_000, 1000, 128) == stable_prefix_start(text, 5_001, 1000, 128)


def test_a_long_cursor_line_keeps_the_line_start_before_the_snapped_bound() -> None:
    text = "a = 1\n" * 30 + "y" * 900  # the cursor line starts at 180, before the snapped bound 256
    offset = len(text)
    assert stable_prefix_start(text, offset, 1000, 256) == 180
    assert stable_prefix_start(text, offset, 100, 32) % 32 == 0  # the line is longer than the window


def test_a_chunk_longer_than_the_window_still_gives_a_valid_bound() -> None:
    text = "ab\n" * 1000
    for offset in range(0, len(text), 11):
        _check_bound(text, offset, stable_prefix_start(text, offset, 40, 100), 40)


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        stable_prefix_start("abc", 2, 10, 0)
    with pytest.raises(ValueError):
        stable_prefix_start("abc", 2, -1, 8)
