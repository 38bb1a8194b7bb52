"""The text of one open document with a line-start index kept up to date incrementally.

Offsets are code-point indices into the Python str. Line breaks are those of LSP: "\\n", "\\r\\n" (one
break) and a lone "\\r".
"""

from __future__ import annotations

import re
from bisect import bisect_right

_BREAK = re.compile(r"\r\n|\r|\n")


def _line_starts(text: str, base: int = 0) -> list[int]:
    """Offsets (plus `base`) at which a line starts after a break in `text`."""
    return [base + match.end() for match in _BREAK.finditer(text)]


class Document:
    """One editor document. Not thread-safe; callers snapshot `text` (an immutable str) to share it."""

    __slots__ = ("uri", "language_id", "version", "_text", "_starts")

    def __init__(self, uri: str, language_id: str, version: int, text: str) -> None:
        self.uri = uri
        self.language_id = language_id
        self.version = version
        self._text = text
        self._starts = [0, *_line_starts(text)]

    @property
    def text(self) -> str:
        return self._text

    @property
    def line_count(self) -> int:
        return len(self._starts)

    def set_text(self, text: str, version: int | None = None) -> None:
        self._text = text
        self._starts = [0, *_line_starts(text)]
        if version is not None:
            self.version = version

    def replace(self, start: int, end: int, new_text: str, version: int | None = None) -> None:
        """Replace code points [start, end) with `new_text` (offsets clamped, swapped if reversed)."""
        size = len(self._text)
        start = min(max(start, 0), size)
        end = min(max(end, 0), size)
        if start > end:
            start, end = end, start
        old = self._text
        text = self._text = old[:start] + new_text + old[end:]
        delta = len(new_text) - (end - start)
        new_end = start + len(new_text)  # where the old `end` now is
        # NOTE: whether p starts a line depends only on text[p-1] and text[p]. Old starts below `start`
        # and above `end` see the same two characters (shifted), so only [start, new_end] is re-scanned.
        before = self._starts[: bisect_right(self._starts, start - 1)] or [0]
        after = [s + delta for s in self._starts[bisect_right(self._starts, end) :]]
        middle = [
            p
            for p in (m.end() for m in _BREAK.finditer(text, max(start - 1, 0), min(new_end + 1, len(text))))
            if start <= p <= new_end and (text[p - 1] == "\n" or text[p : p + 1] != "\n")
        ]
        self._starts = before + middle + after
        if version is not None:
            self.version = version

    def line_start(self, line: int) -> int:
        return self._starts[min(max(line, 0), len(self._starts) - 1)]

    def line_end(self, line: int) -> int:
        """Offset of the end of the line's content (before its break)."""
        line = min(max(line, 0), len(self._starts) - 1)
        if line + 1 < len(self._starts):
            end = self._starts[line + 1]
            if self._text[end - 2 : end] == "\r\n":
                return end - 2
            return end - 1
        return len(self._text)

    def line_text(self, line: int) -> str:
        return self._text[self.line_start(line) : self.line_end(line)]

    def line_of(self, offset: int) -> int:
        return max(bisect_right(self._starts, offset) - 1, 0)
