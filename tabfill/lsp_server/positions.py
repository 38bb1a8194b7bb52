"""The one place where LSP positions (line, character in the negotiated encoding) become code-point
offsets into a document, and back."""

from __future__ import annotations

from typing import Literal, TypeGuard

from tabfill.syntax_cache.document import Document

PositionEncoding = Literal["utf-8", "utf-16", "utf-32"]


def _utf8_len(char: str) -> int:
    # Lone surrogates count 3 bytes, as "surrogatepass" encodes them (see position_at).
    return 1 if char < "\x80" else 2 if char < "\u0800" else 3 if char <= "\uffff" else 4


def _cp_col_of_utf16_col(line_text: str, utf16_col: int) -> int:
    utf16_seen = 0
    for cp_col, char in enumerate(line_text):
        utf16_seen += 2 if char > "\uffff" else 1
        if utf16_seen > utf16_col:  # utf16_col is at or inside this character
            return cp_col
    return len(line_text)


def _cp_col_of_byte_col(line_text: str, byte_col: int) -> int:
    bytes_seen = 0
    for cp_col, char in enumerate(line_text):
        bytes_seen += _utf8_len(char)
        if bytes_seen > byte_col:  # byte_col is at or inside this character
            return cp_col
    return len(line_text)


def offset_at(doc: Document, line: int, character: int, encoding: PositionEncoding) -> int:
    """Code-point offset of the LSP position (line, character); `character` counts code units of
    `encoding` within the line (utf-8: bytes, utf-16: 16-bit units, utf-32: code points).

    - A negative line or character raises ValueError.
    - A line past the last line means the end of the document.
    - A character past the end of the line's content means the end of that content (before the line
      break, never into the next line).
    - A character inside a multi-unit character (between the two UTF-16 surrogates of an emoji,
      inside a UTF-8 sequence) means the offset at which that character starts.
    """
    if line < 0 or character < 0:
        raise ValueError(f"LSP position must not be negative: line {line}, character {character}")
    if line >= doc.line_count:
        return len(doc.text)
    line_start = doc.line_start(line)
    line_text = doc.line_text(line)
    if encoding == "utf-32" or line_text.isascii() or line_text[:character].isascii():
        # every code point up to `character` is one code unit
        return line_start + min(character, len(line_text))
    if encoding == "utf-16":
        return line_start + _cp_col_of_utf16_col(line_text, character)
    return line_start + _cp_col_of_byte_col(line_text, character)


def position_at(doc: Document, offset: int, encoding: PositionEncoding) -> tuple[int, int]:
    """LSP position (line, character in code units of `encoding`) of a code-point offset.

    The offset is clamped into [0, len(doc.text)]; an offset inside a "\\r\\n" break maps to the end
    of its line's content. Inverse of `offset_at` for every position it returns.
    """
    cp_offset = min(max(offset, 0), len(doc.text))
    line = doc.line_of(cp_offset)
    line_start = doc.line_start(line)
    cp_col = min(cp_offset, doc.line_end(line)) - line_start
    prefix = doc.text[line_start : line_start + cp_col]
    if encoding == "utf-32" or prefix.isascii():
        return line, cp_col
    if encoding == "utf-16":
        return line, len(prefix.encode("utf-16-le", "surrogatepass")) // 2
    return line, len(prefix.encode("utf-8", "surrogatepass"))


def range_to_offsets(
    doc: Document, start_line: int, start_char: int, end_line: int, end_char: int, encoding: PositionEncoding
) -> tuple[int, int]:
    """Code-point offsets (start, end) of an LSP range, each end converted as by `offset_at`."""
    return offset_at(doc, start_line, start_char, encoding), offset_at(doc, end_line, end_char, encoding)


def json_position(value: object) -> tuple[int, int] | None:
    """(line, character) of an LSP position given as plain JSON (a custom method's params), or None when
    it is not one (missing, negative, not integers)."""
    if not isinstance(value, dict):
        return None
    line, character = value.get("line"), value.get("character")
    if not (_count(line) and _count(character)):
        return None
    return line, character


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
