"""The one place where LSP positions (line, character in the negotiated encoding) become code-point
offsets into a document, and back."""

from __future__ import annotations

from typing import Literal

from tabfill.syntax_cache.document import Document

PositionEncoding = Literal["utf-8", "utf-16", "utf-32"]


def _units(char: str, encoding: PositionEncoding) -> int:
    code = ord(char)
    if encoding == "utf-16":
        return 2 if code > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 1


def _cp_col(line_text: str, unit_col: int, encoding: PositionEncoding) -> int:
    """Code-point column for `unit_col` code units; a column inside a character snaps to its start,
    a column past the end of the line to its end."""
    if encoding == "utf-32" or line_text.isascii():
        return min(unit_col, len(line_text))
    units_so_far = 0
    for cp_col, char in enumerate(line_text):
        units_so_far += _units(char, encoding)
        if units_so_far > unit_col:
            return cp_col
    return len(line_text)


def offset_at(document: Document, line: int, character: int, encoding: PositionEncoding) -> int:
    """Code-point offset of an LSP position.

    Negative values raise ValueError. A line past the last line means the end of the document; a
    character past the end of its line means the end of that line (never into the next line); a
    character inside a multi-unit character (between UTF-16 surrogates, inside a UTF-8 sequence)
    means the start of that character.
    """
    if line < 0 or character < 0:
        raise ValueError(f"position must not be negative: line {line}, character {character}")
    if line >= document.line_count:
        return len(document.text)
    line_start = document.line_start(line)
    return line_start + _cp_col(document.line_text(line), character, encoding)


def position_at(document: Document, offset: int, encoding: PositionEncoding) -> tuple[int, int]:
    """(line, character in code units of `encoding`) of a code-point offset (clamped into the text)."""
    cp_offset = min(max(offset, 0), len(document.text))
    line = document.line_of(cp_offset)
    line_start = document.line_start(line)
    cp_col = min(cp_offset, document.line_end(line)) - line_start
    prefix = document.text[line_start : line_start + cp_col]
    if encoding == "utf-32" or prefix.isascii():
        return line, cp_col
    if encoding == "utf-16":
        return line, len(prefix.encode("utf-16-le", "surrogatepass")) // 2
    return line, len(prefix.encode("utf-8", "surrogatepass"))


def range_to_offsets(
    document: Document, start_line: int, start_char: int, end_line: int, end_char: int, encoding: PositionEncoding
) -> tuple[int, int]:
    """Code-point offsets of an LSP range (each end converted as by `offset_at`)."""
    return offset_at(document, start_line, start_char, encoding), offset_at(document, end_line, end_char, encoding)
