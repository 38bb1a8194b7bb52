import pytest

from tabfill.syntax_cache.context import Mode, context_at
from tabfill.syntax_cache.document import Document


def at(text_with_cursor: str):
    offset = text_with_cursor.index("|")
    text = text_with_cursor.replace("|", "", 1)
    return context_at(Document("file:///t.py", "python", 0, text), offset)


@pytest.mark.parametrize(
    "source, mode, block_indent",
    [
        ("def fibonacci(n):\n|", Mode.MULTI, 1),
        ("class A:\n    def f(self):\n        |", Mode.MULTI, 5),
        ("def f():\n    x = 1\n    |\n", Mode.MULTI, 4),
        ("x = foo(|)", Mode.SINGLE, 0),
        ("x = fo|o()", Mode.NONE, 0),
        ("|", Mode.MULTI, 0),
        ("    |return x", Mode.NONE, 0),
        ("function f() {\n  |\n}", Mode.MULTI, 1),
    ],
)
def test_mode(source: str, mode: Mode, block_indent: int) -> None:
    context = at(source)
    assert context.mode is mode, context.reason
    if mode is Mode.MULTI:
        assert context.block_indent == block_indent


def test_line_parts_closers_and_scope() -> None:
    context = at("def f(a):\n    return g(a, |)]  \n")
    assert context.line_prefix == "    return g(a, "
    assert context.line_suffix == ")]  "
    assert context.closers_in_suffix == ")]"
    assert not context.suffix_has_code
    assert context.scope == "def f(a):"


def test_crlf_and_emoji_lines() -> None:
    context = at("x = '😀'\r\ny = 漢|\r\nz")
    assert context.line_prefix == "y = 漢"
    assert context.line_suffix == ""
    assert context.mode is Mode.SINGLE
