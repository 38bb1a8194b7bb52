"""DocumentStore keeps each document's tree in step with didChange (UTF-16 positions, CRLF, emoji)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from lsprotocol import types

from tabfill.lsp_server.documents import DocumentStore
from tabfill.syntax_cache.tree import parse_text

URI = "file:///w/t.py"


def change(store: DocumentStore, version: int, *edits: tuple[int, int, int, int, str]) -> None:
    params = types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
        content_changes=[
            types.TextDocumentContentChangePartial(range=types.Range(types.Position(a, b), types.Position(c, d)), text=text)
            for a, b, c, d, text in edits
        ],
    )
    store.change(params, "utf-16")


def open_doc(store: DocumentStore, text: str, language: str = "python", uri: str = URI) -> None:
    store.open(types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text))


def assert_tree_matches(store: DocumentStore, language: str = "python") -> None:
    """The tree a request gets (parsed on demand) is the tree of a fresh full parse of the text."""
    assert store.snapshot(URI) is not None
    document, tree = store.get(URI), store.tree(URI)
    assert document is not None and tree is not None and tree.tree is not None and not tree.stale
    fresh = parse_text(language, document.text)
    assert fresh is not None and str(tree.tree.root_node) == str(fresh.root_node)


def test_several_changes_in_one_notification_one_incremental_parse() -> None:
    store = DocumentStore()
    open_doc(store, "s = '😀'\r\ndef f(x):\r\n    return x\r\n")
    assert store.snapshot(URI) is not None
    # utf-16: the emoji is 2 units; replace "x" in the return, then insert a line before it
    change(store, 2, (2, 11, 2, 12, "漢 + 1"), (2, 0, 2, 0, "    y = '😀'\r\n"))
    document = store.get(URI)
    assert document is not None and document.text == "s = '😀'\r\ndef f(x):\r\n    y = '😀'\r\n    return 漢 + 1\r\n"
    assert_tree_matches(store)
    tree = store.tree(URI)
    assert tree is not None and tree.full_parses == 1 and tree.incremental_parses == 1


def test_a_burst_of_changes_is_parsed_once_when_a_request_needs_the_tree() -> None:
    store = DocumentStore()
    open_doc(store, "def f(x):\n    return x\n")
    tree = store.tree(URI)
    assert tree is not None and (tree.full_parses, tree.incremental_parses) == (0, 0)  # didOpen parses nothing
    store.request_context(URI)
    assert (tree.full_parses, tree.incremental_parses) == (1, 0)  # the first request does, off the event loop
    text = "def f(x):\n    return x\n"
    for version in range(2, 302):  # 300 keystrokes, typed at the end of the document
        line, column = text.count("\n"), len(text) - text.rfind("\n") - 1
        change(store, version, (line, column, line, column, "y" if version % 30 else "\n"))
        text += "y" if version % 30 else "\n"
    document = store.get(URI)
    assert document is not None and document.text == text and document.version == 301
    assert (tree.full_parses, tree.incremental_parses) == (1, 0) and tree.stale  # no parse per keystroke
    store.request_context(URI)
    store.request_context(URI)
    assert (tree.full_parses, tree.incremental_parses) == (1, 1)  # one parse for the whole burst
    assert_tree_matches(store)


def test_a_range_past_the_end_is_clamped_logged_and_resynced(caplog: pytest.LogCaptureFixture) -> None:
    store = DocumentStore()
    open_doc(store, "x = 1\n")
    assert store.snapshot(URI) is not None  # a tree to resync
    with caplog.at_level(logging.WARNING):
        change(store, 2, (0, 4, 99, 0, "2\ny = 3\n"))
    document = store.get(URI)
    assert document is not None and document.text == "x = 2\ny = 3\n"
    assert "past the end" in caplog.text
    assert_tree_matches(store)
    tree = store.tree(URI)
    assert tree is not None and tree.resyncs == 1 and tree.full_parses == 2


def test_a_full_text_change_reparses_in_full() -> None:
    store = DocumentStore()
    open_doc(store, "x = 1\n")
    store.change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text="def g():\n    pass\n")],
        ),
        "utf-16",
    )
    assert_tree_matches(store)


def test_snapshot_and_unknown_language() -> None:
    store = DocumentStore()
    open_doc(store, "def f():\n    pass\n")
    snapshot, snippets = store.request_context(URI)
    assert snapshot is not None and snapshot.grammar == "python" and snippets == ()
    open_doc(store, "IDENTIFICATION DIVISION.", language="cobol", uri="file:///w/a.cob")
    assert store.request_context("file:///w/a.cob") == (None, ())
    assert store.close(URI) and store.tree(URI) is None


def test_request_context_carries_imported_definitions_and_recent_edits(tmp_path: Path) -> None:
    store = DocumentStore()
    store.set_workspace([types.WorkspaceFolder(uri=tmp_path.as_uri(), name="w")], None, None)
    (tmp_path / "geo.py").write_text('def area(r):\n    """Area of a circle."""\n    return 3.14 * r * r\n')
    other = (tmp_path / "notes.py").as_uri()
    open_doc(store, "a = 1\nb = 2\n", uri=other)
    store.change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=other, version=2),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(types.Position(1, 4), types.Position(1, 5)), text="3")],
        ),
        "utf-16",
    )
    main = (tmp_path / "main.py").as_uri()
    open_doc(store, "from geo import area\n\nprint(area(", uri=main)
    _, snippets = store.request_context(main)
    assert [(s.kind, s.path, s.text) for s in snippets] == [
        ("definition", "geo.py", "def area(r):\n    Area of a circle."),
        ("recent", str(tmp_path / "notes.py"), "a = 1\nb = 3"),
    ]
    # with the cursor: code like the lines at the cursor (a workspace file written to the same pattern) comes
    # between the definitions and the recent edits; what the prompt holds already (in_prompt) is not repeated
    (tmp_path / "shapes.py").write_text("def ring_perimeter(outer, inner):\n    return perimeter(outer) + perimeter(inner)\n")
    text = "from geo import area\n\ndef ring_area(outer, inner):\n    return area(outer) - area("
    open_doc(store, text, uri=main)
    _, snippets = store.request_context(main, len(text), in_prompt=(len(text), 0))
    assert [(s.kind, s.path) for s in snippets] == [("definition", "geo.py"), ("similar", "shapes.py"), ("recent", str(tmp_path / "notes.py"))]
    snapshot, none = store.request_context(main, len(text), cross_file=False)  # the setting is off: no lookups at all
    assert snapshot is not None and none == ()


def test_workspace_folders_added_and_removed_change_what_cross_file_context_reads(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    (second / "geo.py").write_text("def area(r):\n    return 3.14 * r * r\n")
    main = (second / "main.py").as_uri()
    store = DocumentStore()
    store.set_workspace([types.WorkspaceFolder(uri=first.as_uri(), name="first")], None, None)
    open_doc(store, "from geo import area\n\nprint(area(", uri=main)
    assert store.request_context(main)[1] == ()  # geo.py is outside the workspace: not read
    store.change_workspace(types.WorkspaceFoldersChangeEvent(
        added=[types.WorkspaceFolder(uri=second.as_uri(), name="second")],
        removed=[types.WorkspaceFolder(uri=first.as_uri(), name="first")],
    ))
    assert store.cross_file.roots == store.similar.roots == [second.resolve()]
    assert [(s.path, s.text) for s in store.request_context(main)[1]] == [("geo.py", "def area(r):")]
    store.change_workspace(types.WorkspaceFoldersChangeEvent(added=[], removed=[types.WorkspaceFolder(uri=second.as_uri(), name="second")]))
    assert store.cross_file.roots == [] and store.request_context(main)[1] == ()


def test_a_5mb_minified_file_falls_back_to_text_rules_and_stays_in_sync() -> None:
    store = DocumentStore()
    minified = "var a=[1,2,3];function f(b){return b+1}" * (5 * 1024 * 1024 // 40)
    open_doc(store, minified, language="javascript")
    change(store, 2, (0, 0, 0, 3, "let"))
    document, tree = store.get(URI), store.tree(URI)
    assert document is not None and document.text == "let" + minified[3:]
    assert store.request_context(URI) == (None, ())
    assert tree is not None and not tree.available and tree.tree is None


def test_place_names_the_workspace_folder_and_the_path_in_it(tmp_path: Path) -> None:
    store = DocumentStore()
    project = tmp_path / "shop"
    (project / "pkg").mkdir(parents=True)
    store.set_workspace([types.WorkspaceFolder(uri=project.as_uri(), name="shop")], None, None)
    assert store.place((project / "pkg" / "views.py").as_uri()) == ("shop", "pkg/views.py")
    assert store.place((tmp_path / "elsewhere.py").as_uri()) == ("", "elsewhere.py")
    assert store.place("untitled:Untitled-1") == ("", "")


def test_a_document_closed_and_reopened_at_version_1_with_other_text_is_seen_anew(tmp_path: Path) -> None:
    store = DocumentStore()
    store.set_workspace([types.WorkspaceFolder(uri=tmp_path.as_uri(), name="w")], None, None)
    shapes, main = (tmp_path / "shapes.py").as_uri(), (tmp_path / "main.py").as_uri()
    text = "from shapes import area\n\ndef ring_area(outer, inner):\n    return area(outer) - area("

    def context() -> list[tuple[str, str]]:
        return [(s.kind, s.text) for s in store.request_context(main, len(text), in_prompt=(len(text), 0))[1]]

    open_doc(store, "def area(r):\n    return 3.14 * r * r\n\ndef ring_area(outer, inner):\n    return area(outer) - area(inner)\n", uri=shapes)
    open_doc(store, text, uri=main)
    assert context() == [
        ("definition", "def area(r):"),
        ("similar", "def area(r):\n    return 3.14 * r * r\n\ndef ring_area(outer, inner):\n    return area(outer) - area(inner)"),
    ]
    # the same versions, other text: neither the definitions nor the windows of the old text may come back
    store.close(shapes)
    store.close(main)
    new_shapes = "def area(side):\n    return side * side\n\ndef ring_area(outer, inner):\n    return area(outer) - area(inner) + side\n"
    open_doc(store, new_shapes, uri=shapes)
    open_doc(store, text, uri=main)
    assert context() == [("definition", "def area(side):"), ("similar", new_shapes.rstrip("\n"))]
    # and the document itself, reopened with other text, is parsed anew
    store.close(main)
    open_doc(store, "import shapes\n", uri=main)
    snapshot, _ = store.request_context(main, 5)
    assert snapshot is not None and snapshot.text == "import shapes\n"
