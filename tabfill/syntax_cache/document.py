"""The text of one open document with a line-start index kept up to date incrementally.

Offsets are code-point indices into the Python str. Line breaks are those of LSP: "\\n", "\\r\\n" (one
break) and a lone "\\r".
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator

_BREAK = re.compile(r"\r\n|\r|\n")
_CHUNK_LINES = 128  # lines_above splits this many lines at a time


def _scan_line_starts(text: str) -> list[int]:
    return [0, *(match.end() for match in _BREAK.finditer(text))]


class Document:
    """One editor document: `text` plus an index of the offsets at which its lines start.

    Not thread-safe; callers snapshot `text` (an immutable str) to share it.
    """

    __slots__ = ("uri", "language_id", "version", "_text", "_starts")

    def __init__(self, uri: str, language_id: str, version: int, text: str) -> None:
        self.uri = uri
        self.language_id = language_id
        self.version = version
        self._text = text
        self._starts = _scan_line_starts(text)

    @property
    def text(self) -> str:
        return self._text

    @property
    def line_count(self) -> int:
        """Number of lines; "" has 1 line, "a\\n" has 2."""
        return len(self._starts)

    def set_text(self, text: str, version: int | None = None) -> None:
        """Replace the whole text (and the version, unless None)."""
        self._text = text
        self._starts = _scan_line_starts(text)
        if version is not None:
            self.version = version

    def replace(self, start: int, end: int, new_text: str, version: int | None = None) -> None:
        """Replace code points [start, end) with `new_text`.

        Both offsets are clamped into [0, len(text)] and swapped if start > end. The version is
        updated unless None.
        """
        old_text = self._text
        size = len(old_text)
        start = min(max(start, 0), size)
        end = min(max(end, 0), size)
        if start > end:
            start, end = end, start
        text = self._text = old_text[:start] + new_text + old_text[end:]
        delta = len(new_text) - (end - start)
        new_end = start + len(new_text)  # where old `end` is now
        # Whether p > 0 starts a line depends only on text[p - 1] and text[p]: it does iff text[p - 1]
        # is "\n", or is "\r" and text[p] is not "\n". Old starts p < start and p > end see the same
        # two characters after the edit (the latter shifted by delta), so only [start, new_end] is
        # re-scanned, from start - 1 (its break may end at start) to new_end + 1 (so a "\r" at new_end
        # is seen with the "\n" after it). Beginning between "\r" and "\n" is harmless: the lone "\n"
        # matched there ends where the pair does.
        starts = self._starts
        keep_below = bisect_left(starts, start)
        if keep_below == 0:
            keep_below = 1  # offset 0 always starts a line
        keep_above = bisect_right(starts, end)
        scan = _BREAK.finditer(text, max(start - 1, 0), min(new_end + 1, len(text)))
        middle = [p for p in (m.end() for m in scan) if start <= p <= new_end]
        if delta:
            middle.extend([p + delta for p in starts[keep_above:]])
        else:
            middle.extend(starts[keep_above:])
        starts[keep_below:] = middle
        if version is not None:
            self.version = version

    @property
    def identity(self) -> tuple[str, int, int]:
        """(uri, length, hash of the text): what caches key this document's derived data by. Unlike the version
        it never names other text: a document closed and opened again at version 1 with new text gets a new one
        (and a str caches its hash, so asking again for unchanged text costs nothing)."""
        return self.uri, len(self._text), hash(self._text)

    def copy(self) -> Document:
        """A copy that later edits of this one leave alone (the text is shared, the line index copied)."""
        twin = Document.__new__(Document)
        twin.uri, twin.language_id, twin.version, twin._text, twin._starts = self.uri, self.language_id, self.version, self._text, list(self._starts)
        return twin

    def line_start(self, line: int) -> int:
        """Offset at which `line` (clamped into range) starts."""
        return self._starts[min(max(line, 0), len(self._starts) - 1)]

    def line_end(self, line: int) -> int:
        """Offset of the end of the content of `line` (clamped into range), before its break."""
        line = min(max(line, 0), len(self._starts) - 1)
        if line + 1 == len(self._starts):
            return len(self._text)
        next_start = self._starts[line + 1]
        if self._text[max(next_start - 2, 0) : next_start] == "\r\n":
            return next_start - 2
        return next_start - 1

    def line_text(self, line: int) -> str:
        """Content of `line` (clamped into range), without its break."""
        return self._text[self.line_start(line) : self.line_end(line)]

    def lines_above(self, line: int, limit: int) -> Iterator[str]:
        """The contents of the lines above `line` (clamped into range), nearest first, at most `limit` of them:
        `line_text(line - 1)`, `line_text(line - 2)`, ... The text is split a chunk of lines at a time, not
        sliced line by line (a scan back through hundreds of lines ran ~7 us a line through line_text)."""
        line = min(max(line, 0), len(self._starts) - 1)
        stop = max(0, line - limit)
        while line > stop:
            first = max(stop, line - _CHUNK_LINES)
            pieces = _BREAK.split(self._text[self._starts[first] : self._starts[line]])  # ends with the break: a last ""
            yield from reversed(pieces[:-1])
            line = first

    def line_of(self, offset: int) -> int:
        """Line containing `offset` (clamped into range); an offset inside a "\\r\\n" belongs to its line."""
        return max(bisect_right(self._starts, offset) - 1, 0)
