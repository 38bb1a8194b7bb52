import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabfill.syntax_cache.document import Document


def fresh_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer(r"\r\n|\r|\n", text))]


def fresh_lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text)


def doc(text: str) -> Document:
    return Document("file:///t.py", "python", 1, text)


def check(document: Document) -> None:
    text = document.text
    starts = fresh_starts(text)
    lines = fresh_lines(text)
    assert document._starts == starts
    assert document.line_count == len(starts) == len(lines)
    for line, content in enumerate(lines):
        assert document.line_start(line) == starts[line]
        assert document.line_text(line) == content
        assert document.line_end(line) == starts[line] + len(content)
    for offset in range(len(text) + 1):
        line = document.line_of(offset)
        assert starts[line] <= offset
        assert line + 1 == len(starts) or offset < starts[line + 1]


def test_attributes() -> None:
    document = Document("file:///a.rs", "rust", 7, "fn main() {}\n")
    assert (document.uri, document.language_id, document.version, document.text) == ("file:///a.rs", "rust", 7, "fn main() {}\n")


@pytest.mark.parametrize(
    "text, lines",
    [
        ("", [""]),
        ("a", ["a"]),
        ("a\n", ["a", ""]),
        ("a\nb", ["a", "b"]),
        ("a\r\nb", ["a", "b"]),
        ("a\rb", ["a", "b"]),
        ("\r\r\n\n\r", ["", "", "", "", ""]),
        ("\n\r", ["", "", ""]),
        ("x😀\r\n漢字\ré", ["x😀", "漢字", "é"]),
    ],
)
def test_lines(text: str, lines: list[str]) -> None:
    document = doc(text)
    assert document.line_count == len(lines)
    assert [document.line_text(line) for line in range(document.line_count)] == lines
    check(document)


def test_line_accessors_clamp() -> None:
    document = doc("ab\r\ncd\n")
    assert document.line_start(-5) == 0
    assert document.line_start(99) == 7
    assert document.line_end(-1) == 2
    assert document.line_end(1) == 6
    assert document.line_end(99) == 7
    assert document.line_text(99) == ""
    assert document.line_text(-1) == "ab"
    assert document.line_of(-3) == 0
    assert document.line_of(3) == 0  # between "\r" and "\n"
    assert document.line_of(4) == 1
    assert document.line_of(1000) == 2


@pytest.mark.parametrize(
    "text, start, end, new_text, expected",
    [
        ("a\rb", 2, 2, "\n", "a\r\nb"),  # completes a "\r\n": one break, not two
        ("a\r\nb", 2, 2, "x", "a\rx\nb"),  # splits a "\r\n" into two breaks
        ("a\r\nb", 2, 3, "", "a\rb"),  # deletes the "\n" after "\r"
        ("a\r\nb", 1, 2, "", "a\nb"),  # deletes the "\r" before "\n"
        ("a\r", 2, 2, "\n", "a\r\n"),
        ("\nb", 0, 0, "\r", "\r\nb"),  # joins at offset 0
        ("a\rx\nb", 2, 3, "", "a\r\nb"),  # joins by deleting what was between
        ("a\nb\nc", 0, 5, "", ""),
        ("abc", 5, -3, "\r\n", "\r\n"),  # clamped and swapped
        ("abc", 2, 1, "X", "aXc"),  # swapped
        ("abc", -1, 1, "", "bc"),
        ("abc", 3, 99, "\n", "abc\n"),
    ],
)
def test_replace(text: str, start: int, end: int, new_text: str, expected: str) -> None:
    document = doc(text)
    document.replace(start, end, new_text)
    assert document.text == expected
    check(document)


def test_version() -> None:
    document = doc("a")
    document.replace(0, 0, "b")
    assert document.version == 1
    document.replace(0, 0, "c", version=5)
    assert document.version == 5
    document.set_text("x\ny")
    assert document.version == 5
    document.set_text("x\r\ny\rz", 6)
    assert (document.version, document.text, document.line_count) == (6, "x\r\ny\rz", 3)
    check(document)


def test_many_edits_on_a_big_document_keep_the_index_exact() -> None:
    line = "    result = compute(alpha, beta)  # 漢字 and more text here\n"
    text = line * (1_000_000 // len(line) + 1)
    document = doc(text)
    assert document.line_count > 16_000
    middle = len(text) // 2
    for i in range(200):  # speed is the benchmark's business, not a unit test's
        document.replace(middle + i, middle + i, "x\n" if i % 3 == 0 else "y")
    assert document._starts == fresh_starts(document.text)


PIECES = ["a", " ", "\n", "\r", "\r\n", "😀", "漢", "é"]
pieces_text = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
edit = st.tuples(st.integers(-3, 40), st.integers(-3, 40), pieces_text)


@settings(max_examples=400, deadline=None)
@given(initial=pieces_text, edits=st.lists(edit, max_size=12))
def test_edits_match_plain_string(initial: str, edits: list[tuple[int, int, str]]) -> None:
    document = doc(initial)
    text = initial
    for version, (start, end, new_text) in enumerate(edits, start=2):
        document.replace(start, end, new_text, version)
        start, end = (min(max(o, 0), len(text)) for o in (start, end))
        start, end = min(start, end), max(start, end)
        text = text[:start] + new_text + text[end:]
        assert document.text == text
        assert document._starts == fresh_starts(text)
        assert document.version == version
    check(document)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.text(alphabet=" \tab:{", max_size=6), min_size=1, max_size=300),
    breaks=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=300),
    line=st.integers(-5, 310),
    limit=st.integers(0, 400),
)
def test_lines_above_are_line_text_upwards(lines: list[str], breaks: list[str], line: int, limit: int) -> None:
    """lines_above splits the text a chunk of lines at a time: the same contents as line_text, line by line
    upwards from the clamped line, across chunk boundaries and with every kind of line break."""
    text = "".join(part + breaks[i % len(breaks)] for i, part in enumerate(lines[:-1])) + lines[-1]
    document = Document("file:///t.py", "python", 1, text)
    clamped = min(max(line, 0), document.line_count - 1)
    expected = [document.line_text(row) for row in range(clamped - 1, max(-1, clamped - 1 - limit), -1)]
    assert list(document.lines_above(line, limit)) == expected
