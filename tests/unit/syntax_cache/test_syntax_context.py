"""context_at with a syntax snapshot: scope, strings, comments and the probe window from the tree."""

from __future__ import annotations

import pytest

from tabfill.syntax_cache.context import Mode, SyntaxContext, context_at
from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.tree import SyntaxTree


def at(language: str, text_with_cursor: str) -> SyntaxContext:
    offset = text_with_cursor.index("|")
    text = text_with_cursor.replace("|", "", 1)
    snapshot = SyntaxTree(language, text).snapshot(text)
    assert snapshot is not None
    return context_at(Document("file:///t", language, 0, text), offset, snapshot)


def test_scope_is_the_enclosing_definition_not_the_nearest_block() -> None:
    context = at("python", "class A:\n    def f(self, x):\n        if x:\n            return g(|)\n")
    assert context.scope == "def f(self, x):" and context.source == "tree" and context.language == "python"
    assert context.closers_in_suffix == ")"


@pytest.mark.parametrize(
    "language, source, quote",
    [
        ("python", 'x = "hello |"', '"'),
        ("python", "x = f'a{b} |'", "'"),
        ("python", 'def f():\n    """Doc |\n    """\n', '"""'),
        ("typescript", "const s = `a${b} |`;", "`"),
        ("go", 'var s = "漢 |"', '"'),
        ("rust", 'let s = "😀 |";', '"'),
        ("python", 'x = "done"|', ""),
    ],
)
def test_the_string_the_cursor_is_in(language: str, source: str, quote: str) -> None:
    assert at(language, source).open_quote == quote


def test_a_comment_ending_at_the_cursor() -> None:
    context = at("go", "package main\n\nfunc main() {\n\t// say hello |\n}\n")
    assert context.in_comment and context.mode is Mode.SINGLE and context.scope == "func main()"


def test_the_probe_window_starts_at_the_enclosing_top_level_line() -> None:
    source = "import os\n\n\ndef fib(n):\n    |"
    context = at("python", source)
    assert context.mode is Mode.MULTI
    prefix = source[: source.index("|")]
    assert prefix[len(prefix) - context.probe_chars :] == "def fib(n):\n    "


def test_positions_after_multibyte_text_and_crlf() -> None:
    context = at("javascript", "const a = '😀漢';\r\nfunction f() {\r\n  return g(|);\r\n}\r\n")
    assert context.scope == "function f()" and context.closers_in_suffix == ")" and context.node_type == "arguments"


def test_a_language_without_grammar_uses_text_rules() -> None:
    document = Document("file:///t.cob", "cobol", 0, "PROCEDURE DIVISION.\n    ")
    context = context_at(document, len(document.text), None)
    assert context.source == "text" and context.language == "" and context.probe_chars == 0


def test_a_window_of_the_document_maps_into_the_snapshot_with_base() -> None:
    text = "x = 1\n" * 50 + "def f(a):\n    return h(a, )\n"
    snapshot = SyntaxTree("python", text).snapshot(text)
    window_start = text.index("def f")
    window = Document("file:///t", "python", 0, text[window_start:])
    offset = text.index("a, )") + 3
    context = context_at(window, offset - window_start, snapshot, base=window_start)
    assert context.scope == "def f(a):" and context.line_prefix == "    return h(a, " and context.node_type == "argument_list"


@pytest.mark.parametrize(
    "language, source, block_indent",
    [
        ("python", "def f():\n    x = 1\n    # for example:\n    |", 4),  # a comment ending in ":" opens nothing
        ("python", "def f():\n    s = 'a:'\n    |", 4),  # the text rules already see no opener here
        ("javascript", "function f() {\n  a(); // then {\n  |", 2),
        ("python", "def f():\n    if x:\n        |", 5),  # a real opener: the body must be indented deeper
    ],
)
def test_a_block_opener_inside_a_comment_opens_nothing(language: str, source: str, block_indent: int) -> None:
    context = at(language, source)
    assert context.mode is Mode.MULTI and context.block_indent == block_indent, context.reason
