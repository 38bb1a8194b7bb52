"""What is around the cursor: text rules (indentation and brackets), refined by the document's
tree-sitter tree when there is one. The text rules are also the fallback for languages without a grammar.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import Enum

from tree_sitter import Node

from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.tree import SyntaxSnapshot

CLOSERS = ")]}>\"'`"
# What may follow the cursor on its line and still let us complete the line (closers and light punctuation).
_TRAILING_OK = set(CLOSERS + ";:,. \t")
_BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", " do", " then")
TAB_WIDTH = 4
PROBE_MAX_CHARS = 16_000

log = logging.getLogger(__name__)


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
    # From the syntax tree ("" / 0 when the text rules decided alone):
    language: str = ""  # the grammar that parsed the document
    node_type: str = ""  # the innermost named node at the cursor
    open_quote: str = ""  # the cursor is inside a string opened before it with this quote (e.g. '"', '"""')
    in_comment: bool = False
    # How many code points before the cursor the enclosing top-level construct starts: the window of the
    # prefix to parse together with a candidate (to find where the block opened at the cursor ends).
    probe_chars: int = 0

    @property
    def source(self) -> str:
        return "tree" if self.language else "text"


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
    """The nearest of the 1,999 lines above `line` that opens a block at an indent below `indent` (stripped)."""
    for text in document.lines_above(line, 1999):
        stripped = text.strip()
        if stripped.endswith(_BLOCK_OPENERS) and indent_width(text) < indent:
            return stripped[:120]
    return ""


def context_at(document: Document, offset: int, syntax: SyntaxSnapshot | None = None, *, base: int = 0) -> SyntaxContext:
    """The completion context at code-point `offset` of `document` (offset is clamped).

    `syntax`: the document's tree (a snapshot of the whole text); `base` is where `document`'s text starts in
    the snapshot's text when `document` is a window of it. Without it, text rules only."""
    context = _text_context(document, offset)
    if syntax is None:
        return context
    offset = max(0, min(offset, len(document.text)))
    try:
        return _refine(context, syntax, base + offset)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:  # a bad snapshot must not cost the completion
        log.debug("syntax context failed, text rules only: %s", exc)
        return context


def _text_context(document: Document, offset: int) -> SyntaxContext:
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
    closers_in_suffix = closers if not suffix_has_code else _closers_at_start(line_suffix)
    scope = _enclosing_scope(document, line, indent if line_prefix.strip() else indent + 1)

    def make(mode: Mode, reason: str, block_indent: int = 0) -> SyntaxContext:
        return SyntaxContext(
            mode, reason, line_prefix, line_suffix, indent, block_indent, closers_in_suffix, suffix_has_code, scope
        )

    if line_prefix and is_word(line_prefix[-1]) and line_suffix and is_word(line_suffix[0]):
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


def _closers_at_start(suffix: str) -> str:
    """The closing characters the suffix starts with (blanks between them skipped)."""
    out = []
    for char in suffix:
        if char in CLOSERS:
            out.append(char)
        elif char not in " \t":
            break
    return "".join(out)


def is_word(char: str) -> bool:
    """A character of an identifier."""
    return char.isalnum() or char == "_"


# ---------------------------------------------------------------------------------------------- tree rules
_SCOPE_TYPES = {
    "function_definition", "class_definition",  # python
    "function_declaration", "generator_function_declaration", "method_definition", "class_declaration",
    "abstract_class_declaration", "interface_declaration", "arrow_function", "function_expression", "function",
    "method_declaration", "type_declaration", "func_literal",  # go
    "function_item", "impl_item", "trait_item", "mod_item", "closure_expression",  # rust
}
_STRING_TYPES = {
    "string", "template_string", "string_literal", "raw_string_literal", "interpreted_string_literal",
    "char_literal", "rune_literal",
}
_QUOTES = ("\"\"\"", "'''", "\"", "'", "`")


def _node_text(node: Node) -> str:
    return (node.text or b"").decode("utf-8", "replace")


def _scope_header(node: Node) -> str:
    body = node.child_by_field_name("body")
    end = body.start_byte if body is not None else node.end_byte
    raw = (node.text or b"")[: max(0, end - node.start_byte)].decode("utf-8", "replace")
    header = " ".join(raw.split())
    if body is not None and body.type == "block" and not header.endswith(":"):
        header += ":" if node.type in ("function_definition", "class_definition") else ""
    return header[:120]


def _previous_line_end_node(syntax: SyntaxSnapshot, cursor_byte: int) -> Node | None:
    """The node holding the last non-blank character before the cursor's line."""
    source = syntax.source
    end = source.rfind(b"\n", 0, cursor_byte)
    while end > 0 and source[end - 1 : end] in (b" ", b"\t", b"\r", b"\n"):
        end -= 1
    if end <= 0:
        return None
    return syntax.root.descendant_for_byte_range(end - 1, end)


def _refine(context: SyntaxContext, syntax: SyntaxSnapshot, cp_offset: int) -> SyntaxContext:
    cursor_byte = syntax.byte_offset(cp_offset)
    root = syntax.root
    # the smallest node holding the character before the cursor (a comment or identifier ending at the cursor)
    node = root.descendant_for_byte_range(max(cursor_byte - 1, 0), cursor_byte) or root
    scope = ""
    open_quote = ""
    in_comment = False
    probe_byte = -1
    ancestor: Node | None = node
    while ancestor is not None and ancestor.id != root.id:
        inside = ancestor.start_byte < cursor_byte < ancestor.end_byte
        if not scope and ancestor.type in _SCOPE_TYPES and ancestor.start_byte < cursor_byte:
            scope = _scope_header(ancestor)
        if inside and not open_quote and ancestor.type in _STRING_TYPES:
            stripped = _node_text(ancestor).lstrip("rRbBuUfF")  # python string prefixes
            open_quote = next((q for q in _QUOTES if stripped.startswith(q)), "")
        if ancestor.type == "comment" and ancestor.start_byte < cursor_byte <= ancestor.end_byte:
            in_comment = True
        if ancestor.start_byte < cursor_byte and cursor_byte - ancestor.start_byte <= PROBE_MAX_CHARS:
            probe_byte = ancestor.start_byte  # the outermost construct around the cursor within the limit
        ancestor = ancestor.parent
    # NOTE: on an empty line the cursor may sit after the end of every node (an unfinished body): the probe
    # then starts at the last top-level node before the cursor.
    last_top = None
    for child in root.children:
        if child.start_byte >= cursor_byte:
            break
        last_top = child
    if last_top is not None and cursor_byte - last_top.start_byte <= PROBE_MAX_CHARS:
        probe_byte = last_top.start_byte if probe_byte < 0 else min(probe_byte, last_top.start_byte)
    probe_chars = 0
    if probe_byte >= 0:
        line_start = syntax.source.rfind(b"\n", 0, probe_byte) + 1
        probe_chars = len(syntax.source[line_start:cursor_byte].decode("utf-8", "surrogatepass"))
    named = node if node.is_named else (node.parent or node)
    reason, block_indent = context.reason, context.block_indent
    if context.mode is Mode.MULTI and (in_comment or open_quote):
        reason = f"{reason}, inside a {'comment' if in_comment else 'string'}"
    elif context.mode is Mode.MULTI and context.reason == "empty line after a block opener":
        opener = _previous_line_end_node(syntax, cursor_byte)
        if opener is not None and opener.type in ("comment", *_STRING_TYPES, "string_content", "string_end"):
            # "# for example:" is not a block opener: the cursor line is a statement of the same block
            previous_indent = max(context.block_indent - 1, 0)
            reason, block_indent = "empty line in a block (the line above ends in a comment or string)", context.indent or previous_indent
    return dataclasses.replace(
        context,
        reason=reason,
        block_indent=block_indent,
        scope=scope or context.scope,
        language=syntax.grammar,
        node_type=named.type,
        open_quote=open_quote,
        in_comment=in_comment,
        probe_chars=probe_chars,
    )
