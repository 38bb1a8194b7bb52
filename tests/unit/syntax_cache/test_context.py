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


def _scope_line_by_line(document: Document, line: int, indent: int) -> str:
    """The enclosing-scope scan as it was (a line_text per line): the reference for the chunked one."""
    from tabfill.syntax_cache.context import _BLOCK_OPENERS, indent_width

    for row in range(line - 1, max(-1, line - 2000), -1):
        text = document.line_text(row)
        stripped = text.strip()
        if stripped and indent_width(text) < indent and stripped.endswith(_BLOCK_OPENERS):
            return stripped[:120]
    return ""


def test_the_enclosing_scope_scan_finds_what_the_line_by_line_scan_found() -> None:
    import random

    from tabfill.syntax_cache.context import _enclosing_scope

    rng = random.Random(4)
    pieces = ["def f(x):", "    if x:", "        return {", "    y = [", "class A:", "", "   ", "\tpass", "  z = 1", "end do"]
    text = "\r\n".join(rng.choice(pieces) for _ in range(2600)) + "\n" + "\n".join(rng.choice(pieces) for _ in range(900))
    document = Document("file:///t.py", "python", 1, text)
    checked = 0
    for line in list(range(0, 40)) + rng.sample(range(document.line_count), 300) + [document.line_count - 1]:
        for indent in (0, 1, 2, 4, 5, 9):
            assert _enclosing_scope(document, line, indent) == _scope_line_by_line(document, line, indent)
            checked += 1
    assert checked > 2000
    # a deep scan: the nearest opener is ~2,500 lines up, beyond the 1,999 scanned
    deep = Document("file:///d.py", "python", 1, "def top():\n" + "    x = 1\n" * 2500 + "    y")
    assert _enclosing_scope(deep, 2501, 4) == _scope_line_by_line(deep, 2501, 4) == ""
    assert _enclosing_scope(deep, 1500, 4) == "def top():"
