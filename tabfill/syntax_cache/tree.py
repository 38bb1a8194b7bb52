"""One tree-sitter tree per open document, kept in step with every edit (tree.edit + incremental parse).

Units: `cp_*` are code-point offsets into the Python str (what Document uses); `byte_*` are UTF-8 byte
offsets into the parsed source; tree-sitter points are (row, byte column) with rows counted by "\\n"
only (a lone "\\r" is not a row break for tree-sitter, unlike LSP).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
import threading
import time
from dataclasses import dataclass

from tree_sitter import Language, Node, Parser, Tree

from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.languages import grammar_name, language_for

log = logging.getLogger(__name__)

PARSE_BUDGET_MS = 40.0  # an incremental parse that takes longer is abandoned for this keystroke (the tree goes stale)
# A full parse (didOpen, a resync) runs once, not per keystroke: a 1 MB file takes ~120 ms here.
FULL_PARSE_BUDGET_MS = 250.0
MAX_TREE_BYTES = 2 * 1024 * 1024  # larger documents use text rules only
_CHUNK_BYTES = 64 * 1024
_MAX_FULL_PARSE_TIMEOUTS = 3  # after this many full parses over budget in a row, give the document up


def encode(text: str) -> bytes:
    """The bytes tree-sitter parses: UTF-8, lone surrogates kept (3 bytes each, as positions.py counts)."""
    return text.encode("utf-8", "surrogatepass")


def byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(encode(text))


def byte_offset(text: str, cp_offset: int) -> int:
    """UTF-8 byte offset of code-point offset `cp_offset` (clamped) in `text`."""
    cp_offset = min(max(cp_offset, 0), len(text))
    return cp_offset if text.isascii() else byte_len(text[:cp_offset])


@functools.cache
def _read_leaks() -> bool:
    """Whether this tree-sitter binding keeps one reference too many to each chunk a read callback returns.

    NOTE: py-tree-sitter 0.26.1 does (measured here: every chunk of every parse from a callable stays alive,
    ~17 KB a keystroke on a 17 KB document, +16.6 MB per 1,000 keystrokes in bench.soak). `run_parse` then
    releases that one reference once the parse has returned, when nothing but the binding holds it; a
    binding without the leak is left alone."""
    parser = Parser(language_for("python")) if language_for("python") is not None else None
    if parser is None:
        return False
    chunks: list[bytes] = []

    def read(byte: int, _point: tuple[int, int]) -> bytes:
        chunk = bytes(memoryview(b"x = 1\n")[byte:])
        if chunk:
            chunks.append(chunk)
        return chunk

    parser.parse(read, progress_callback=lambda _byte, _error: False)
    return bool(chunks) and all(sys.getrefcount(chunk) - _OWN_REFS == 1 for chunk in chunks)


# what sys.getrefcount says of a chunk held only by the list it is in: the list, the loop variable, the argument
_OWN_REFS = 3


def _release_leaked(chunks: list[bytes]) -> None:
    """Give back the one reference per chunk that the binding kept (see `_read_leaks`)."""
    for chunk in chunks:
        if sys.getrefcount(chunk) - _OWN_REFS == 1:
            ctypes.pythonapi.Py_DecRef(ctypes.py_object(chunk))


def point_at(text: str, cp_offset: int) -> tuple[int, int]:
    """Tree-sitter point (row, byte column) of a code-point offset: rows end at "\\n" only."""
    cp_offset = min(max(cp_offset, 0), len(text))
    row = text.count("\n", 0, cp_offset)
    line_start = text.rfind("\n", 0, cp_offset) + 1
    return row, byte_len(text[line_start:cp_offset])


def _end_point(start: tuple[int, int], inserted: str) -> tuple[int, int]:
    newlines = inserted.count("\n")
    if not newlines:
        return start[0], start[1] + byte_len(inserted)
    return start[0] + newlines, byte_len(inserted[inserted.rfind("\n") + 1 :])


@dataclass(frozen=True)
class SyntaxSnapshot:
    """An immutable view for one request: a private copy of the tree and the exact source it parsed.

    Safe to hand to another thread (the live tree keeps changing on the event loop)."""

    language_id: str
    grammar: str
    tree: Tree
    source: bytes
    text: str  # the text `source` encodes; `byte_offset(text, cp)` maps into the tree

    def byte_offset(self, cp_offset: int) -> int:
        return byte_offset(self.text, cp_offset)

    @property
    def root(self) -> Node:
        return self.tree.root_node


_Edit = tuple[int, int, int, tuple[int, int], tuple[int, int], tuple[int, int]]  # Tree.edit's arguments
MAX_PARSE_JOBS = 4  # parses prepared and not yet run (a superseded request never runs its own): the oldest go
MAX_JOB_EDITS = 4096  # edits a waiting parse may collect before it is given up (its result would be old)


@dataclass(eq=False)
class ParseJob:
    """One parse, prepared under the tree's lock (on the event loop) and run anywhere: the text, its bytes, a
    private copy of the old tree (None: a full parse), and the edits that arrive while it runs (replayed onto
    its result, so a parse never waits for typing and typing never waits for a parse)."""

    text: str
    source: bytes
    old_tree: Tree | None
    budget_ms: float
    edits: list[_Edit]


class SyntaxTree:
    """The live tree of one document. Call `edit` for each change (with the text before it), then `parse`
    once with the text after all of a notification's changes — or `prepare_parse` there and `run_parse` on
    another thread: edits go on meanwhile without waiting. Never raises on bad input."""

    def __init__(
        self, language_id: str, text: str, *, parse_budget_ms: float = PARSE_BUDGET_MS,
        full_parse_budget_ms: float = FULL_PARSE_BUDGET_MS, parse: bool = True,
    ) -> None:
        self.language_id = language_id
        self.grammar = grammar_name(language_id)
        self.parse_budget_ms = parse_budget_ms
        self.full_parse_budget_ms = full_parse_budget_ms
        self._language: Language | None = language_for(language_id)
        self._parser: Parser | None = Parser(self._language) if self._language is not None else None
        self._lock = threading.Lock()  # the tree's state; held for bookkeeping only, never across a parse
        self._parser_lock = threading.Lock()  # the parser: one parse at a time
        self._tree: Tree | None = None
        self._parsed_text: str | None = None  # the text the current tree was parsed from, when not stale
        # NOTE: the bytes the tree (with its edits) describes are kept up to date edit by edit, so a keystroke
        # never re-encodes the whole document; `_cp_len` is that text's length in code points (a cross-check).
        # `_synced`: they describe the document's text (set by a full parse's start, lost by a resync).
        self._source = b""
        self._cp_len = 0
        self._synced = False
        # A code-point offset whose byte offset is known and whose prefix no edit since has touched: byte
        # offsets of nearby edits are measured from it instead of from the start of the document.
        self._anchor_cp = 0
        self._anchor_byte = 0
        self._needs_full = True
        self._jobs: list[ParseJob] = []  # prepared, not yet installed; a resync or a disable empties it
        self.disabled_reason = "" if self._language is not None else "no grammar"
        self.skipped_parses = 0
        self.full_parses = 0
        self.incremental_parses = 0
        self.resyncs = 0
        self._full_timeouts = 0
        if parse:
            self.parse(text)

    @property
    def available(self) -> bool:
        return self._parser is not None and not self.disabled_reason

    @property
    def stale(self) -> bool:
        return self._parsed_text is None

    @property
    def tree(self) -> Tree | None:
        return self._tree

    def edit(self, old_text: str, cp_start: int, cp_end: int, new_text: str) -> None:
        """Describe the replacement of code points [cp_start, cp_end) of `old_text` by `new_text` to the tree
        (offsets clamped and ordered as Document.replace does). The tree is stale until `parse`."""
        with self._lock:
            self._parsed_text = None
            if not self._synced:
                self._needs_full = True
                return
            size = len(old_text)
            if size != self._cp_len:
                self._inconsistent(f"edit to a text of {size} code points, the tree has {self._cp_len}")
                return
            cp_start, cp_end = min(max(cp_start, 0), size), min(max(cp_end, 0), size)
            if cp_start > cp_end:
                cp_start, cp_end = cp_end, cp_start
            start_byte = self._byte_at(old_text, cp_start)
            removed = encode(old_text[cp_start:cp_end])
            inserted = encode(new_text)
            old_end_byte = start_byte + len(removed)
            new_end_byte = start_byte + len(inserted)
            if self._source[start_byte:old_end_byte] != removed:
                self._inconsistent(f"the replaced bytes {start_byte}-{old_end_byte} are not what the tree has")
                return
            start_point = point_at(old_text, cp_start)
            old_end_point = _end_point(start_point, old_text[cp_start:cp_end])
            new_end_point = _end_point(start_point, new_text)
            edit: _Edit = (start_byte, old_end_byte, new_end_byte, start_point, old_end_point, new_end_point)
            if self._tree is not None and not self._needs_full:
                self._tree.edit(*edit)
            for job in list(self._jobs):
                job.edits.append(edit)
                if len(job.edits) > MAX_JOB_EDITS:
                    self._jobs.remove(job)
            self._source = self._source[:start_byte] + inserted + self._source[old_end_byte:]
            self._cp_len += len(new_text) - (cp_end - cp_start)
            self._anchor_cp, self._anchor_byte = cp_start, start_byte  # text before cp_start is unchanged

    def _byte_at(self, text: str, cp_offset: int) -> int:
        if text.isascii():
            return cp_offset
        if self._anchor_cp <= cp_offset:
            return self._anchor_byte + byte_len(text[self._anchor_cp : cp_offset])
        return byte_len(text[:cp_offset])

    def mark_inconsistent(self, why: str) -> None:
        """The tree can no longer be trusted: the next parse is a full one (a resync), logged."""
        with self._lock:
            self._inconsistent(why)

    def _inconsistent(self, why: str) -> None:
        if not self._needs_full:
            log.warning("syntax tree for %s out of step (%s): full re-parse", self.language_id, why)
            self.resyncs += 1
        self._resync()

    def invalidate(self) -> None:
        """The whole text was replaced (a full sync, not an error): the next parse is a full one."""
        with self._lock:
            self._resync()

    def _resync(self) -> None:
        self._needs_full, self._synced, self._parsed_text = True, False, None
        self._jobs.clear()

    def parse(self, text: str) -> bool:
        """Bring the tree up to `text` here and now: incremental when edits were described, else full. Returns
        False when there is no usable tree for `text` (no grammar, too large, or over the time budget: skipped)."""
        with self._lock:
            if self._parsed_text is text and self.available:
                return True
        job = self.prepare_parse(text)
        return job is not None and self.run_parse(job) is not None

    def prepare_parse(self, text: str) -> ParseJob | None:
        """The parse that brings the tree up to `text` (the document's text now), to run with `run_parse`; None
        when there is none to run (no grammar, too large: text rules). Cheap: a copy of the tree's root."""
        with self._lock:
            if self._parser is None or self.disabled_reason:
                return None
            old_tree = None if self._needs_full else self._tree
            if old_tree is not None and len(text) != self._cp_len:
                self._inconsistent(f"the tree expects {self._cp_len} code points, the document has {len(text)}")
                old_tree = None
            if old_tree is None:
                # a full parse: start the byte bookkeeping afresh (kept when this parse is skipped, for the next try)
                source = encode(text)
                if len(source) > MAX_TREE_BYTES:
                    self._disable(f"{len(source)} bytes is over the {MAX_TREE_BYTES}-byte limit for syntax trees")
                    return None
                self._source, self._cp_len, self._anchor_cp, self._anchor_byte, self._synced = source, len(text), 0, 0, True
            budget_ms = self.parse_budget_ms if old_tree is not None else self.full_parse_budget_ms
            job = ParseJob(text, self._source, None if old_tree is None else old_tree.copy(), budget_ms, [])
            self._jobs.append(job)
            del self._jobs[:-MAX_PARSE_JOBS]
            return job

    def run_parse(self, job: ParseJob) -> SyntaxSnapshot | None:
        """Run a prepared parse (any thread; edits go on meanwhile) and bring the tree up to date with it.
        Returns the tree of the job's text, or None (over the time budget, or the document was resynced)."""
        if self._parser is None:
            return None
        source, deadline = job.source, time.perf_counter() + job.budget_ms / 1000.0
        returned: list[bytes] = []  # what read gave the binding (a new object each time), when it leaks them
        leaks = _read_leaks()

        def read(byte: int, _point: tuple[int, int]) -> bytes:
            # NOTE: a copy even of the whole source (a slice of all of it would be `source` itself)
            chunk = bytes(memoryview(source)[byte : byte + _CHUNK_BYTES])
            if chunk and leaks:
                returned.append(chunk)
            return chunk

        def over_budget(_byte: int, _has_error: bool) -> bool:
            return time.perf_counter() > deadline

        with self._parser_lock:
            try:
                if job.old_tree is None:
                    tree = self._parser.parse(read, progress_callback=over_budget)
                else:
                    tree = self._parser.parse(read, job.old_tree, progress_callback=over_budget)
            except ValueError:  # halted by the progress callback ("Parsing failed")
                self._parser.reset()
                tree = None
            finally:
                _release_leaked(returned)
                returned.clear()
        with self._lock:
            current = job in self._jobs  # not dropped by a resync, a disable or the bound
            if current:
                self._jobs.remove(job)
            if tree is None:
                self.skipped_parses += 1
                if job.old_tree is None and current:
                    self._full_timeouts += 1
                    if self._full_timeouts >= _MAX_FULL_PARSE_TIMEOUTS:
                        self._disable(f"{_MAX_FULL_PARSE_TIMEOUTS} full parses over {job.budget_ms:g} ms")
                # NOTE: an edited old tree stays valid for the next incremental attempt.
                return None
            if not current:
                return None
            self._full_timeouts = 0
            if job.old_tree is None:
                self.full_parses += 1
            else:
                self.incremental_parses += 1
            snapshot = SyntaxSnapshot(self.language_id, self.grammar, tree.copy(), job.source, job.text)
            for edit in job.edits:  # what was typed while it ran
                tree.edit(*edit)
            self._tree, self._needs_full = tree, False
            self._parsed_text = None if job.edits else job.text
            return snapshot

    def snapshot(self, text: str) -> SyntaxSnapshot | None:
        """A private copy of the tree for `text`, or None when the tree does not describe `text`."""
        with self._lock:
            if self._tree is None or self._parsed_text is None:
                return None
            if self._parsed_text is not text and self._parsed_text != text:
                return None
            return SyntaxSnapshot(self.language_id, self.grammar, self._tree.copy(), self._source, self._parsed_text)

    def _disable(self, why: str) -> None:
        if not self.disabled_reason:
            log.warning("syntax tree for a %s document disabled: %s; using text rules", self.language_id, why)
        self.disabled_reason = why
        self._tree, self._parsed_text, self._source, self._synced = None, None, b"", False
        self._jobs.clear()


def apply_edit(
    document: Document, tree: SyntaxTree | None, cp_start: int, cp_end: int, new_text: str,
    version: int | None = None, *, parse: bool = True,
) -> bool:
    """Replace code points [cp_start, cp_end) of `document` with `new_text` and describe the edit to its tree;
    with `parse`, re-parse incrementally (bounded). Several edits of one notification: parse=False for all
    but the last. Returns whether the tree describes the new text (False: text rules for now)."""
    if tree is not None:
        tree.edit(document.text, cp_start, cp_end, new_text)
    document.replace(cp_start, cp_end, new_text, version)
    return tree.parse(document.text) if tree is not None and parse else False


def parse_source(language_id: str, source: bytes) -> Tree | None:
    """A fresh full parse of UTF-8 `source` (no budget); None for a language without a grammar."""
    language = language_for(language_id)
    if language is None:
        return None
    return Parser(language).parse(source)


def parse_text(language_id: str, text: str) -> Tree | None:
    """A fresh full parse of `text` (no budget): a reference for tests and the benchmark."""
    return parse_source(language_id, encode(text))
