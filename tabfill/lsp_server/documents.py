"""Open documents, kept in sync from didOpen/didChange/didClose (incremental), each with its syntax tree;
the tree takes each edit as it comes and is parsed only when a request needs it.

A request's syntax tree and cross-file lookup cost whole-document work (a first parse of a large file takes
~100 ms; lookups read files and cut whole documents into windows): `prepare` copies what it needs on the
event loop (cheap), `lookup` parses and looks up on another thread (one lookup at a time; the cross-file and
similar-code caches belong to that thread, and closed documents reach them through a queue it drains).
Edits that arrive while a parse runs are replayed onto its result, so typing never waits for a parse."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lsprotocol import types

from tabfill.lsp_server.positions import PositionEncoding, range_to_offsets
from tabfill.syntax_cache.crossfile import CrossFileIndex, RecentEdits
from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.similar_code import SimilarCode
from tabfill.syntax_cache.tree import ParseJob, SyntaxSnapshot, SyntaxTree, apply_edit
from tabfill.syntax_cache.workspace import Snippet, normalize_path, uri_to_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lookup:
    """What one request's context needs, taken on the event loop: copies that later edits leave alone."""

    document: Document  # the requesting document as it was (its text and version are the request's)
    offset: int | None  # the cursor; None: no similar-code lookup
    documents: dict[str, Document]  # the open documents; empty when cross-file context is off
    in_prompt: tuple[int, int]
    snapshot: SyntaxSnapshot | None  # the tree already describes the text; else `parse` brings it there
    recent: tuple[Snippet, ...]  # recently edited regions of other documents (read on the loop: a few lines)
    tree: SyntaxTree | None = None
    parse: ParseJob | None = None  # run by `lookup`, off the event loop


class DocumentStore:
    def __init__(self) -> None:
        self._documents: dict[str, Document] = {}
        self._trees: dict[str, SyntaxTree] = {}
        self.recent_edits = RecentEdits()
        self.cross_file = CrossFileIndex()
        self.similar = SimilarCode()
        self._closed: deque[str] = deque()  # closed since the last lookup: what its caches must forget

    def set_workspace(self, folders: Sequence[types.WorkspaceFolder] | None, root_uri: str | None, root_path: str | None) -> None:
        """The folders cross-file context may read (nothing outside them)."""
        uris = [folder.uri for folder in folders or []] or ([root_uri] if root_uri else [])
        roots = [path for path in map(uri_to_path, uris) if path is not None]
        if not roots and root_path:
            roots.append(Path(root_path))
        self._set_roots(roots)

    def change_workspace(self, event: types.WorkspaceFoldersChangeEvent) -> None:
        """workspace/didChangeWorkspaceFolders: folders added to or removed from what cross-file context may read."""
        removed = {normalize_path(path) for path in map(uri_to_path, (f.uri for f in event.removed)) if path is not None}
        added = [path for path in map(uri_to_path, (f.uri for f in event.added)) if path is not None]
        kept = [root for root in self.cross_file.roots if root not in removed]
        new = [path for path in map(normalize_path, added) if path not in kept and path not in removed]
        self._set_roots(kept + new)

    def _set_roots(self, roots: list[Path]) -> None:
        self.cross_file.set_roots(roots)
        self.similar.set_roots(self.cross_file.roots)
        log.info("workspace folders: %s", ", ".join(map(str, self.cross_file.roots)) or "none")

    def place(self, uri: str) -> tuple[str, str]:
        """(workspace folder name, the document's path in it, "/"-separated); ("", file name) outside every folder."""
        path = uri_to_path(uri)
        if path is None:
            return "", ""
        for root in self.cross_file.roots:
            if path.is_relative_to(root):
                return root.name, path.relative_to(root).as_posix()
        return "", path.name

    def get(self, uri: str) -> Document | None:
        return self._documents.get(uri)

    def tree(self, uri: str) -> SyntaxTree | None:
        return self._trees.get(uri)

    def __len__(self) -> int:
        return len(self._documents)

    def open(self, item: types.TextDocumentItem) -> Document:
        document = Document(item.uri, item.language_id, item.version, item.text)
        self._documents[item.uri] = document
        self._trees[item.uri] = SyntaxTree(item.language_id, item.text, parse=False)  # NOTE: parsed by the first lookup
        return document

    def change(self, params: types.DidChangeTextDocumentParams, encoding: PositionEncoding) -> Document | None:
        document = self._documents.get(params.text_document.uri)
        if document is None:
            log.warning("didChange for a document that is not open: %s", params.text_document.uri)
            return None
        tree = self._trees.get(document.uri)
        version = params.text_document.version
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                start, end = change.range.start, change.range.end
                if _past_end(document, start) or _past_end(document, end):
                    # NOTE: clamped like any position past the end; the tree re-parses from the text in full.
                    log.warning(
                        "didChange range %d:%d-%d:%d is past the end of %s (%d lines): clamped, full re-parse",
                        start.line, start.character, end.line, end.character, document.uri, document.line_count,
                    )
                    if tree is not None:
                        tree.mark_inconsistent("edit range past the end")
                start_offset, end_offset = range_to_offsets(document, start.line, start.character, end.line, end.character, encoding)
                self.recent_edits.record(document, min(start_offset, end_offset), change.text)
                apply_edit(document, tree, start_offset, end_offset, change.text, version, parse=False)
            else:
                document.set_text(change.text, version)
                if tree is not None:
                    tree.invalidate()
        # NOTE: no parse here: the tree is parsed when a request needs it (`snapshot`), once for a whole burst
        # of changes (tree-sitter takes every edit since the last parse in one incremental parse).
        return document

    def snapshot(self, uri: str) -> SyntaxSnapshot | None:
        """An immutable syntax snapshot of the document as it is now (None: text rules apply)."""
        document, tree = self._documents.get(uri), self._trees.get(uri)
        if document is None or tree is None or not tree.available:
            return None
        snapshot = tree.snapshot(document.text)
        if snapshot is None:  # edited since the last parse (or it was over budget): parse here and now, bounded
            job = tree.prepare_parse(document.text)
            snapshot = tree.run_parse(job) if job is not None else None
        return snapshot

    def request_context(
        self, uri: str, offset: int | None = None, cross_file: bool = True, in_prompt: tuple[int, int] = (0, 0)
    ) -> tuple[SyntaxSnapshot | None, tuple[Snippet, ...]]:
        """What a completion request at `uri` carries besides the text: its syntax snapshot and, with
        `cross_file`, the cross-file snippets: imported definitions, code like the code before `offset` (the
        cursor; from other files, and from this one outside the characters (before, after) the cursor that
        `in_prompt` says the prompt holds already), then recently edited regions of other documents.
        `prepare` and `lookup` in one call (the server runs them on two threads); () for a closed document."""
        prepared = self.prepare(uri, offset, cross_file, in_prompt)
        return (None, ()) if prepared is None else self.lookup(prepared)

    def prepare(self, uri: str, offset: int | None = None, cross_file: bool = True, in_prompt: tuple[int, int] = (0, 0)) -> Lookup | None:
        """The event loop's part of `request_context`: the snapshot (or the parse that makes it), the recent
        edits and copies of the open documents (None when `uri` is not open)."""
        document = self._documents.get(uri)
        if document is None:
            return None
        tree = self._trees.get(uri)
        snapshot = parse = None
        if tree is not None and tree.available:
            snapshot = tree.snapshot(document.text)
            parse = tree.prepare_parse(document.text) if snapshot is None else None
        if not cross_file:
            return Lookup(document.copy(), offset, {}, in_prompt, snapshot, (), tree, parse)
        documents = {other.uri: other.copy() for other in self._documents.values()}
        recent = tuple(self.recent_edits.regions(self._documents, uri, language_id=document.language_id))
        return Lookup(documents[uri], offset, documents, in_prompt, snapshot, recent, tree, parse)

    def lookup(self, prepared: Lookup) -> tuple[SyntaxSnapshot | None, tuple[Snippet, ...]]:
        """The syntax snapshot and cross-file snippets of a prepared request: the parse, file reads and
        whole-document work, for a thread of its own (one lookup at a time)."""
        snapshot = prepared.snapshot
        if prepared.parse is not None and prepared.tree is not None:
            snapshot = prepared.tree.run_parse(prepared.parse)
        while self._closed:
            closed = self._closed.popleft()
            self.cross_file.forget(closed)
            self.similar.forget(closed)
        if not prepared.documents:
            return snapshot, ()
        document, snippets = prepared.document, []
        try:
            snippets += self.cross_file.snippets(document.uri, snapshot, prepared.documents)
            if prepared.offset is not None:
                snippets += self.similar.snippets(document, prepared.offset, prepared.documents, prepared.in_prompt)
        except Exception as exc:  # cross-file context is optional: its failure never costs the completion
            log.warning("cross-file context for %s failed: %s: %s", document.uri, type(exc).__name__, exc)
        return snapshot, (*snippets, *prepared.recent)

    def close(self, uri: str) -> bool:
        self._trees.pop(uri, None)
        self.recent_edits.forget(uri)
        self._closed.append(uri)
        return self._documents.pop(uri, None) is not None


def _past_end(document: Document, position: types.Position) -> bool:
    return position.line >= document.line_count
