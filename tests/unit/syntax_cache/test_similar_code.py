"""Similar code for the prompt: windows of the workspace, the open documents and this document outside the
prompt, chosen by Jaccard similarity to the lines at the cursor; never the file's own copy on disk, never
outside the workspace; the choice holds while typing on a line and while it stays nearly as good."""

from __future__ import annotations

from pathlib import Path

from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.similar_code import SIMILAR_SNIPPETS, SimilarCode, jaccard, windows_of, words_of

SIBLING = "const compare = require('./compare')\nconst gt = (a, b, loose) => compare(a, b, loose) > 0\nmodule.exports = gt\n"
UNRELATED = "const fs = require('fs')\nfunction readConfig (path) {\n  return JSON.parse(fs.readFileSync(path))\n}\n"


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def index(root: Path) -> SimilarCode:
    similar = SimilarCode()
    similar.set_roots([root.resolve()])
    return similar


def test_windows_cover_the_file_with_exact_offsets_and_skip_blank_ends() -> None:
    lines = [f"value_{i} = compute_{i}()" if i % 5 else "" for i in range(23)]
    text = "\n".join(lines)
    windows = windows_of(text, "m.py")
    assert [(w.first, w.last) for w in windows] == [(1, 7), (4, 11), (8, 14), (12, 19), (16, 22)]
    for window in windows:
        assert text[window.start : window.end] == window.text
        assert window.text == "\n".join(lines[window.first : window.last + 1])
    assert [(w.first, w.last) for w in windows_of("x = 1\n\ny = 2", "s.py")] == [(0, 2)]  # a short file: one window
    assert windows_of("\n\n  \n", "e.py") == []


def test_words_leave_out_keywords_and_jaccard_is_exact() -> None:
    assert words_of("def area(self, r): return self.pi * r") == frozenset({"area", "r", "pi"})
    assert jaccard(frozenset("abc"), frozenset("bcd")) == 2 / 4
    assert jaccard(frozenset(), frozenset("a")) == 0.0


def test_the_sibling_written_to_the_same_pattern_is_chosen_and_never_this_files_copy_on_disk(tmp_path: Path) -> None:
    write(tmp_path, "functions/gt.js", SIBLING)
    write(tmp_path, "lib/config.js", UNRELATED)
    # the file on disk still holds the line the user is rewriting: it must not leak into the prompt
    here = write(tmp_path, "functions/lt.js", "const compare = require('./compare')\nconst lt = (a, b, loose) => compare(a, b, loose) < 0\n")
    document = Document(here.as_uri(), "javascript", 1, "const compare = require('./compare')\nconst lt = (")
    snippets = index(tmp_path).snippets(document, len(document.text), {})
    assert [(s.kind, s.path, s.text) for s in snippets] == [("similar", "functions/gt.js", SIBLING.rstrip("\n"))]


def test_this_documents_code_after_the_cursor_counts_but_not_what_the_prompt_holds(tmp_path: Path) -> None:
    above = "def scale_points(points, factor):\n    return [p * factor for p in points]"
    below = "def scale_points_twice(points, factor):\n    return scale_points(scale_points(points, factor), factor)"
    text = above + "\n" * 11 + "def scale_points_by(points, factor):\n    return [p * factor for p in " + "\n" * 11 + below + "\n"
    offset = text.index("for p in ", len(above)) + len("for p in ")
    document = Document((tmp_path / "geo.py").as_uri(), "python", 1, text)
    # a prefix-only prompt holding the whole prefix: only the code after the cursor may be shown
    shown = index(tmp_path).snippets(document, offset, {document.uri: document}, in_prompt=(offset, 0))
    assert [s.text for s in shown] == [below]
    # a prompt that holds only the cursor line: the function above (the most alike) comes first
    shown = index(tmp_path).snippets(document, offset, {document.uri: document}, in_prompt=(10, 0))
    assert [s.text for s in shown] == [above, below]
    # a fill-in-the-middle prompt holding the suffix too: nothing after the cursor is repeated
    shown = index(tmp_path).snippets(document, offset, {document.uri: document}, in_prompt=(10, len(text)))
    assert [s.text for s in shown] == [above]


def test_open_documents_win_over_their_files_and_nothing_outside_the_workspace_is_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "w", tmp_path / "outside"
    sibling = write(root, "gt.js", UNRELATED)  # on disk: unrelated; the editor's version is the sibling
    write(outside, "ge.js", SIBLING)
    here = write(root, "lt.js", "")
    document = Document(here.as_uri(), "javascript", 1, "const compare = require('./compare')\nconst lt = (")
    open_sibling = Document(sibling.as_uri(), "javascript", 3, SIBLING)
    snippets = index(root).snippets(document, len(document.text), {document.uri: document, open_sibling.uri: open_sibling})
    assert [(s.path, s.text) for s in snippets] == [("gt.js", SIBLING.rstrip("\n"))]
    assert index(root).snippets(document, len(document.text), {document.uri: document}) == []


def test_other_languages_and_files_too_unlike_give_nothing(tmp_path: Path) -> None:
    write(tmp_path, "gt.js", SIBLING)
    here = tmp_path / "notes.py"
    document = Document(here.as_uri(), "python", 1, "compare = gt(a, b, loose)\nx = (")
    assert index(tmp_path).snippets(document, len(document.text), {}) == []  # JavaScript does not inform Python
    plain = Document((tmp_path / "n.txt").as_uri(), "plaintext", 1, "compare gt loose")
    assert index(tmp_path).snippets(plain, len(plain.text), {}) == []


def test_the_choice_holds_on_a_line_and_while_it_stays_nearly_as_good(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "def total_price(items, tax):\n    return sum(item.price for item in items) * tax\n")
    write(tmp_path, "b.py", "def total_weight(items, unit):\n    return sum(item.weight for item in items) / unit\n")
    write(tmp_path, "c.py", "def render_page(template, context):\n    return template.render(context)\n")
    similar = index(tmp_path)
    uri = (tmp_path / "shop.py").as_uri()
    text = "def total_price_with_tax(items, tax):\n    return sum("
    first = similar.snippets(Document(uri, "python", 1, text), len(text), {})
    assert [s.path for s in first][:1] == ["a.py"]
    typed = text + "item.weight"  # same line: the same choice, not looked up again
    assert similar.snippets(Document(uri, "python", 2, typed), len(typed), {}) is first
    # the next line leans a little towards b.py: the first choice is still nearly as good, so it stays
    nudged = typed + " for item in items)\n    unit = items.unit"
    assert similar.snippets(Document(uri, "python", 3, nudged), len(nudged), {}) == first
    # a function about something else entirely: a new choice
    moved = nudged + "\n" * 10 + "def render_page_twice(template, context):\n    return template.render(context)"
    assert [s.path for s in similar.snippets(Document(uri, "python", 4, moved), len(moved), {})] == ["c.py"]


def test_at_most_max_snippets_and_no_two_overlapping_windows_of_one_file(tmp_path: Path) -> None:
    write(tmp_path, "rows.py", "\n".join(f"total = price * count + tax_rate  # row {i}" for i in range(40)))
    uri = (tmp_path / "shop.py").as_uri()
    text = "total = price * count + "
    snippets = index(tmp_path).snippets(Document(uri, "python", 1, text), len(text), {})
    assert len(snippets) == SIMILAR_SNIPPETS
    # windows start every 4 lines and hold 8: equally alike, so the first, then the next that does not overlap it
    assert [s.text.split("\n")[0] for s in snippets] == [f"total = price * count + tax_rate  # row {i}" for i in (0, 8, 16)]
    assert all(len(s.text.split("\n")) == 8 for s in snippets)


def test_a_window_of_this_document_stays_chosen_when_typing_moves_its_lines(tmp_path: Path) -> None:
    """New lines above a chosen window of this document re-cut its windows (every 4 lines from the top);
    the window's text is still there, so the choice and the prompt's cached prefix stay."""
    below = "\n".join(f"    total = price * count + tax_rate  # again, {i}" for i in range(6))  # every cut scores alike
    head = "def totals(prices, counts, tax_rate):\n    total = price * count + "
    tail = "\n" * 12 + "def totals_below(prices, counts, tax_rate):\n" + below + "\n"
    similar = index(tmp_path)
    uri = (tmp_path / "shop.py").as_uri()
    first = similar.snippets(Document(uri, "python", 1, head + tail), len(head), {})
    assert first and first[0].text.startswith("def totals_below")
    typed = head + "tax_rate\n    total = price * count + "  # Enter and a new line: everything below moved a line down
    again = similar.snippets(Document(uri, "python", 2, typed + tail), len(typed), {})
    assert again == first
