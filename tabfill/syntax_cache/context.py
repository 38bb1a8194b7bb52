"""What is around the cursor, by text rules (indentation and brackets).

The tree-sitter layer refines this per language; these rules are also the fallback for languages
without a grammar.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tabfill.syntax_cache.document import Document

CLOSERS = ")]}>\"'`"
# What may follow the cursor on its line and still let us complete the line (closers and light punctuation).
_TRAILING_OK = set(CLOSERS + ";:,. \t")
_BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", " do", " then")
TAB_WIDTH = 4


class Mode(str, Enum):
    """What kind of completion the cursor asks for."""

    NONE = "none"  # e.g. the cursor sits inside an identifier: complete nothing
    SINGLE = "single"  # finish the current line
    MULTI = "multi"  # a block: an empty line after an opener, an empty body


@dataclass(frozen=True)
class SyntaxContext:
    mode: Mode
    reason: str
    line_prefix: str  # the cursor line up to the cursor
    line_suffix: str  # the cursor line after the cursor, without the line break
    indent: int  # columns of indentation of the cursor line (tabs count TAB_WIDTH)
    block_indent: int  # multi-line: a generated line indented less than this ends the completion
    closers_in_suffix: str  # closing brackets/quotes right after the cursor, in order, spaces removed
    suffix_has_code: bool  # the line suffix holds more than closers and punctuation
    scope: str  # the nearest enclosing block header (e.g. "def fibonacci(n):"), "" at top level


def indent_width(line: str) -> int:
    width = 0
    for char in line:
        if char == " ":
            width += 1
        elif char == "\t":
            width += TAB_WIDTH
        else:
            break
    return width


def _previous_code_line(document: Document, line: int) -> tuple[int, str] | None:
    for row in range(line - 1, max(-1, line - 200), -1):
        text = document.line_text(row)
        if text.strip():
            return row, text
    return None


def _enclosing_scope(document: Document, line: int, indent: int) -> str:
    for row in range(line - 1, max(-1, line - 2000), -1):
        text = document.line_text(row)
        stripped = text.strip()
        if stripped and indent_width(text) < indent and stripped.endswith(_BLOCK_OPENERS):
            return stripped[:120]
    return ""


def context_at(document: Document, offset: int) -> SyntaxContext:
    """The completion context at code-point `offset` of `document` (offset is clamped)."""
    offset = max(0, min(offset, len(document.text)))
    line = document.line_of(offset)
    line_start = document.line_start(line)
    line_end = document.line_end(line)
    offset = min(offset, line_end)
    line_prefix = document.text[line_start:offset]
    line_suffix = document.text[offset:line_end]
    indent = indent_width(line_prefix)
    closers = "".join(char for char in line_suffix if char in CLOSERS)
    stripped_suffix = line_suffix.strip()
    suffix_has_code = any(char not in _TRAILING_OK for char in stripped_suffix)
    closers_in_suffix = closers if not suffix_has_code else _leading_closers(line_suffix)
    scope = _enclosing_scope(document, line, indent if line_prefix.strip() else indent + 1)

    def make(mode: Mode, reason: str, block_indent: int = 0) -> SyntaxContext:
        return SyntaxContext(
            mode, reason, line_prefix, line_suffix, indent, block_indent, closers_in_suffix, suffix_has_code, scope
        )

    if line_prefix and _is_word(line_prefix[-1]) and line_suffix and _is_word(line_suffix[0]):
        return make(Mode.NONE, "inside an identifier")
    if line_prefix.strip():
        return make(Mode.SINGLE, "text before the cursor on its line")
    if stripped_suffix and suffix_has_code:
        return make(Mode.NONE, "code after the cursor on an otherwise empty line")
    previous = _previous_code_line(document, line)
    if previous is None:
        return make(Mode.MULTI, "start of the document", block_indent=0)
    _, previous_text = previous
    previous_indent = indent_width(previous_text)
    if previous_text.rstrip().endswith(_BLOCK_OPENERS):
        return make(Mode.MULTI, "empty line after a block opener", block_indent=previous_indent + 1)
    # An empty line inside a block: statements at the cursor's level (or the previous line's).
    level = indent if indent else previous_indent
    return make(Mode.MULTI, "empty line in a block", block_indent=level)


def _leading_closers(suffix: str) -> str:
    out = []
    for char in suffix:
        if char in CLOSERS:
            out.append(char)
        elif char not in " \t":
            break
    return "".join(out)


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"
