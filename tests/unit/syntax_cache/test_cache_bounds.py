"""Caches of the syntax layer are bounded by bytes: streamed far past their bound they stay within it (measured
anew with approx_bytes, not only by the cache's own count), and what was used last still hits."""

from __future__ import annotations

import sys
from pathlib import Path

from tabfill.syntax_cache.crossfile import CrossFileIndex
from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.similar_code import SimilarCode, Window, windows_of
from tabfill.syntax_cache.sizes import approx_bytes

BOUND = 1 << 20


def python_file(index: int, functions: int = 60) -> str:
    return "\n".join(
        f"def handler_{index}_{n}(request_{n}, payload_{index}):\n    '''Handle {n}.'''\n    return route_{n}(payload_{index}, request_{n})\n"
        for n in range(functions)
    )


def measured(values: object) -> int:
    return sum(approx_bytes(value) for value in values)  # type: ignore[attr-defined]


def test_approx_bytes_counts_text_lists_word_sets_and_fields_once() -> None:
    text = "x" * 10_000
    assert approx_bytes(text) == sys.getsizeof(text)
    windows = windows_of(python_file(1), "m.py")
    size = approx_bytes(windows)
    # at least the text and every word of every window, and the list itself
    assert size > sys.getsizeof(windows) + sum(sys.getsizeof(w.text) + sum(map(sys.getsizeof, w.words)) for w in windows)
    shared = Window("m.py", 0, 1, 0, 5, text, frozenset({"a"}))
    assert approx_bytes([shared, shared]) < approx_bytes(shared) + 100  # one object, counted once
    assert approx_bytes(Path("/a/b/c.py")) > sys.getsizeof(Path("/a/b/c.py"))  # a slotted object's fields count


def test_similar_code_windows_stay_within_their_byte_bound(tmp_path: Path) -> None:
    similar = SimilarCode(max_cached_bytes=BOUND)
    similar.set_roots([tmp_path.resolve()])
    one_file = approx_bytes(windows_of(python_file(0), "f0.py"))
    count = 40 * BOUND // one_file  # forty times what the bound holds
    paths = []
    for index in range(count):
        path = tmp_path / f"f{index}.py"
        path.write_text(python_file(index))
        paths.append(path.resolve())
        assert similar._windows_of(path.resolve(), None)
        assert similar._windows.currsize <= BOUND
    # open documents' windows go through the same cache
    for index in range(count):
        document = Document(f"file:///open/d{index}.py", "python", 1, python_file(index))
        assert similar._windows_of(None, document)
    assert measured(similar._windows.values()) <= BOUND
    assert 1 < len(similar._windows) < count
    first = similar._windows_of(paths[0], None)  # long gone: read again (a new list)
    last = similar._windows_of(None, document)
    assert similar._windows_of(None, document) is last  # what was used last is still cached
    assert similar._windows_of(paths[0], None) is first


def test_definitions_stay_within_their_byte_bound(tmp_path: Path) -> None:
    index = CrossFileIndex(max_cached_bytes=BOUND)
    index.set_roots([tmp_path])
    paths = []
    for number in range(400):
        path = tmp_path / f"m{number}.py"
        path.write_text(python_file(number, functions=200))
        paths.append(path.resolve())
        assert len(index._definitions(paths[-1], None, "python")) == 200
        assert index._files.currsize <= BOUND
    assert measured(index._files.values()) <= BOUND < approx_bytes(index._definitions(paths[0], None, "python")) * 400
    assert index._definitions(paths[-1], None, "python") is index._definitions(paths[-1], None, "python")
