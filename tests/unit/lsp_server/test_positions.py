import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabfill.lsp_server.positions import PositionEncoding, offset_at, position_at, range_to_offsets
from tabfill.syntax_cache.document import Document

ENCODINGS: list[PositionEncoding] = ["utf-8", "utf-16", "utf-32"]


def doc(text: str) -> Document:
    return Document("file:///t.py", "python", 0, text)


def units(text: str, encoding: PositionEncoding) -> int:
    if encoding == "utf-8":
        return len(text.encode("utf-8", "surrogatepass"))
    if encoding == "utf-16":
        return len(text.encode("utf-16-le", "surrogatepass")) // 2
    return len(text)


# line 1 is "x = '😀漢字é' # ok"
TEXT = "first line\r\nx = '😀漢字é' # ok\nlast"
LINE1 = TEXT.index("x")


@pytest.mark.parametrize(
    "encoding, character, cp_col",
    [
        ("utf-16", 5, 5),  # the emoji
        ("utf-16", 6, 5),  # between its surrogates -> its start
        ("utf-16", 7, 6),  # 漢
        ("utf-16", 8, 7),  # 字
        ("utf-16", 9, 8),  # é
        ("utf-16", 10, 9),
        ("utf-32", 5, 5),
        ("utf-32", 6, 6),
        ("utf-32", 7, 7),
        ("utf-8", 5, 5),
        ("utf-8", 6, 5),  # inside the 4-byte emoji
        ("utf-8", 8, 5),
        ("utf-8", 9, 6),  # 漢
        ("utf-8", 11, 6),  # inside 漢
        ("utf-8", 12, 7),  # 字
        ("utf-8", 15, 8),  # é
        ("utf-8", 16, 8),  # inside é
        ("utf-8", 17, 9),
    ],
)
def test_offset_at_non_ascii(encoding: PositionEncoding, character: int, cp_col: int) -> None:
    assert offset_at(doc(TEXT), 1, character, encoding) == LINE1 + cp_col


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_offset_at_clamps(encoding: PositionEncoding) -> None:
    document = doc(TEXT)
    line1_end = TEXT.index("\nlast")
    assert offset_at(document, 0, 10, encoding) == 10  # end of "first line"
    assert offset_at(document, 0, 11, encoding) == 10  # not into "\r\n" or the next line
    assert offset_at(document, 0, 500, encoding) == 10
    assert offset_at(document, 1, 500, encoding) == line1_end
    assert offset_at(document, 2, 4, encoding) == len(TEXT)
    assert offset_at(document, 3, 0, encoding) == len(TEXT)
    assert offset_at(document, 99, 99, encoding) == len(TEXT)
    assert offset_at(doc(""), 0, 3, encoding) == 0
    assert offset_at(doc("a\rb"), 0, 5, encoding) == 1
    assert offset_at(doc("a\rb"), 1, 0, encoding) == 2
    assert offset_at(doc("a\n"), 1, 0, encoding) == 2


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("line, character", [(-1, 0), (0, -1), (-2, -2)])
def test_negative_raises(encoding: PositionEncoding, line: int, character: int) -> None:
    with pytest.raises(ValueError):
        offset_at(doc(TEXT), line, character, encoding)
    with pytest.raises(ValueError):
        range_to_offsets(doc(TEXT), 0, 0, line, character, encoding)


@pytest.mark.parametrize(
    "encoding, expected",
    [("utf-8", (1, 17)), ("utf-16", (1, 10)), ("utf-32", (1, 9))],
)
def test_position_at_non_ascii(encoding: PositionEncoding, expected: tuple[int, int]) -> None:
    assert position_at(doc(TEXT), LINE1 + 9, encoding) == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_position_at_clamps_and_breaks(encoding: PositionEncoding) -> None:
    document = doc(TEXT)
    assert position_at(document, -5, encoding) == (0, 0)
    assert position_at(document, 10, encoding) == (0, 10)  # at "\r"
    assert position_at(document, 11, encoding) == (0, 10)  # between "\r" and "\n"
    assert position_at(document, 12, encoding) == (1, 0)
    assert position_at(document, len(TEXT), encoding) == (2, 4)
    assert position_at(document, len(TEXT) + 50, encoding) == (2, 4)
    assert position_at(doc(""), 0, encoding) == (0, 0)
    assert position_at(doc("a\rb"), 2, encoding) == (1, 0)


def test_range_to_offsets() -> None:
    document = doc(TEXT)
    assert range_to_offsets(document, 0, 6, 1, 7, "utf-16") == (6, LINE1 + 6)
    assert range_to_offsets(document, 1, 9, 1, 5, "utf-8") == (LINE1 + 6, LINE1 + 5)


def test_lone_surrogate_is_one_utf16_unit() -> None:
    document = doc("\ud83dx")  # e.g. from a JSON "\ud83d" escape
    assert offset_at(document, 0, 1, "utf-16") == 1
    assert position_at(document, 1, "utf-16") == (0, 1)
    assert offset_at(document, 0, 3, "utf-8") == 1
    assert position_at(document, 1, "utf-8") == (0, 3)


PIECES = ["a", " ", "\n", "\r", "\r\n", "😀", "漢", "é"]
texts = st.lists(st.sampled_from(PIECES), max_size=25).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_round_trip_every_position(text: str) -> None:
    document = doc(text)
    for encoding in ENCODINGS:
        for line in range(document.line_count):
            content = document.line_text(line)
            line_start = document.line_start(line)
            cp_col = 0
            for character in range(units(content, encoding) + 3):
                cp_offset = offset_at(document, line, character, encoding)
                # snaps to the start of the character that `character` is at or inside
                while cp_col < len(content) and units(content[: cp_col + 1], encoding) <= character:
                    cp_col += 1
                assert cp_offset == line_start + cp_col
                if units(content[:cp_col], encoding) == character:  # a valid position
                    assert position_at(document, cp_offset, encoding) == (line, character)
        for cp_offset in range(len(text) + 1):
            line, character = position_at(document, cp_offset, encoding)
            assert offset_at(document, line, character, encoding) == min(cp_offset, document.line_end(line))


@settings(max_examples=200, deadline=None)
@given(text=texts, line=st.integers(0, 30), character=st.integers(0, 120))
def test_offset_at_matches_encoding_reference(text: str, line: int, character: int) -> None:
    document = doc(text)
    for encoding in ENCODINGS:
        cp_offset = offset_at(document, line, character, encoding)
        if line >= document.line_count:
            assert cp_offset == len(text)
            continue
        content = document.line_text(line)
        cp_col = cp_offset - document.line_start(line)
        assert 0 <= cp_col <= len(content)
        assert units(content[:cp_col], encoding) <= character
        assert cp_col == len(content) or units(content[: cp_col + 1], encoding) > character
