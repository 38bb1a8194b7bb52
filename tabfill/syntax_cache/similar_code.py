"""Similar code: windows of lines from the workspace and the open documents that look like the code at the
cursor (Jaccard similarity of their identifier sets), for the prompt's cross-file context.

Why: a prefix-only model sees neither the code after the cursor nor the files beside this one, and code is
repetitive across both (sibling modules written to one pattern, a method like the one above it). The lines
before the cursor are the query; the best windows of other files, and of this document outside the prompt's
own window (the code after the cursor included), are shown to the model as comments.

Bounded and cheap per keystroke: at most SIMILAR_FILES files of the document's language family, each at most
MAX_FILE_BYTES, read from the workspace roots only, nearest by path first, within a time budget per lookup
(what is not read yet is read by a later one); windows are cached per file (mtime and size) and per open
document content, WINDOW_CACHE_BYTES in all. The choice is made once per cursor line and kept while it stays
nearly as good (KEEP_RATIO), so the prompt's cached prefix survives typing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.languages import IDENTIFIER
from tabfill.syntax_cache.sizes import approx_bytes, keep
from tabfill.syntax_cache.workspace import (
    MAX_FILE_BYTES, Snippet, cached_source, family, normalize_path, relative_display, source_cache, uri_to_path,
)

WINDOW_LINES = 8  # lines per window (a window is what one snippet shows)
WINDOW_STRIDE = 4
QUERY_LINES = 8  # the cursor line and the lines before it
SIMILAR_FILES = 48
MAX_LISTED = 4000  # directory entries a workspace listing visits at most
LISTING_TTL_S = 30.0
WINDOW_CACHE_BYTES = 64 << 20  # windows of files and open documents (text and word sets), least recently used out
NEARBY_CACHE_BYTES = 4 << 20  # per file: the workspace files nearest to it
SIMILAR_BUDGET_MS = 15.0
SIMILAR_SNIPPETS = 3
MIN_SCORE = 0.2  # Jaccard similarity below which a window is not worth its tokens
KEEP_RATIO = 0.8  # the previous choice stays while it scores at least this share of the new best
# (and each of its windows at least MIN_SCORE / 2)
_EXTENSIONS = {"python": (".py", ".pyi"), "javascript": (".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx"),
               "go": (".go",), "rust": (".rs",)}
_SKIPPED_DIRS = {"node_modules", "__pycache__", "venv", "site-packages", "build", "dist", "target", "vendor"}
# Words every file of a language has: they say nothing about which code is alike.
_STOP_WORDS = frozenset(
    "def class return if elif else for while in not and or is None True False import from as pass with try except "
    "finally raise yield lambda self cls const let var function new null undefined true false this export default "
    "async await typeof instanceof break continue switch case do of func package type struct fn pub impl use mut "
    "match mod where".split()
)


@dataclass(frozen=True, slots=True)  # NOTE: thousands per file in the caches: no __dict__ each
class Window:
    """Lines `first`..`last` (0-based, inclusive) of one file or document; `start`/`end`: code-point offsets."""

    display: str
    first: int
    last: int
    start: int
    end: int
    text: str
    words: frozenset[str]


def words_of(text: str) -> frozenset[str]:
    return frozenset(word for word in IDENTIFIER.findall(text) if word not in _STOP_WORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def windows_of(text: str, display: str) -> list[Window]:
    """Overlapping windows of WINDOW_LINES lines every WINDOW_STRIDE lines (a short file is one window);
    blank lines at a window's ends are left out."""
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    out: list[Window] = []
    for first in range(0, max(1, len(lines) - WINDOW_LINES + WINDOW_STRIDE), WINDOW_STRIDE):
        last = min(first + WINDOW_LINES, len(lines)) - 1
        while first <= last and not lines[first].strip():
            first += 1
        while last >= first and not lines[last].strip():
            last -= 1
        if first > last:
            continue
        body = "\n".join(lines[first : last + 1])
        words = words_of(body)
        if words:
            out.append(Window(display, first, last, starts[first], starts[last] + len(lines[last]), body, words))
    return out


class SimilarCode:
    """Finds windows like the code at the cursor in the workspace and the open documents."""

    def __init__(self, max_cached_bytes: int = WINDOW_CACHE_BYTES) -> None:
        self.roots: list[Path] = []
        self._windows: LRUCache[tuple[str, object], list[Window]] = source_cache(max_cached_bytes)
        self._listings: dict[str, tuple[float, list[Path]]] = {}  # family -> (when listed, files); MAX_LISTED entries
        # (file, family) -> (when its listing was made, the nearest files)
        self._nearby: LRUCache[tuple[Path, str], tuple[float, list[Path]]] = LRUCache(NEARBY_CACHE_BYTES, getsizeof=approx_bytes)
        # per document: (cursor line, other open documents' contents) -> the choice; and the last choice made
        self._chosen: dict[str, tuple[object, list[Snippet]]] = {}
        self._last: dict[str, list[Window]] = {}

    def set_roots(self, roots: list[Path]) -> None:
        self.roots = list(roots)
        self._listings = {}

    def forget(self, uri: str) -> None:
        self._chosen.pop(uri, None)
        self._last.pop(uri, None)

    def snippets(
        self, document: Document, offset: int, documents: dict[str, Document], in_prompt: tuple[int, int] = (0, 0),
        budget_ms: float = SIMILAR_BUDGET_MS,
    ) -> list[Snippet]:
        """The windows most like the QUERY_LINES lines up to the cursor, best first. This document's own
        windows count unless they overlap the cursor line or `in_prompt`: the characters (before, after) the
        cursor that the prompt holds already (after: 0 for a prefix-only model, which never sees the suffix)."""
        kind = family(document.language_id)
        if kind not in _EXTENSIONS:
            return []
        line = document.line_of(offset)
        query_start = document.line_start(max(0, line - QUERY_LINES + 1))
        query = words_of(document.text[query_start:offset])
        if not query:
            return []
        others = tuple(sorted(d.identity for d in documents.values() if d.uri != document.uri))
        key = (line, others)
        cached = self._chosen.get(document.uri)
        if cached is not None and cached[0] == key:
            return cached[1]
        line_end = document.text.find("\n", offset)
        hidden = (max(0, offset - in_prompt[0]), max(len(document.text) if line_end < 0 else line_end, offset + in_prompt[1]))
        own = relative_display(document.uri, self.roots)
        candidates = self._candidates(document, own, hidden, documents, kind, budget_ms)

        def still_there(window: Window) -> bool:
            """A window chosen before is still shown as it was: in another file unchanged, or in this document
            (whose lines move as the user types, so its windows are cut anew) as the same text outside the prompt."""
            if window.display != own:
                return any(c.display == window.display and c.text == window.text for c in candidates)
            at = document.text.find(window.text)
            return at >= 0 and (at + len(window.text) < hidden[0] or at > hidden[1])

        chosen = self._choose(document.uri, query, candidates, still_there)
        snippets = [Snippet(w.display, w.text, "similar") for w in chosen]
        self._chosen[document.uri] = (key, snippets)
        return snippets

    def _choose(self, uri: str, query: frozenset[str], candidates: list[Window], still_there: Callable[[Window], bool]) -> list[Window]:
        scored = sorted(((jaccard(query, w.words), i) for i, w in enumerate(candidates)), key=lambda s: (-s[0], s[1]))
        chosen: list[Window] = []
        best: list[float] = []
        for score, i in scored:
            if score < MIN_SCORE or len(chosen) >= SIMILAR_SNIPPETS:
                break
            window = candidates[i]
            if any(c.display == window.display and c.first <= window.last and window.first <= c.last for c in chosen):
                continue
            chosen.append(window)
            best.append(score)
        previous = self._last.get(uri)
        if previous:
            # NOTE: a new choice changes the prompt's first tokens and costs a full prefill; keep the old one while it
            # is nearly as good for the new query (and none of it has become unlike the code at the cursor).
            if all(still_there(w) for w in previous):
                scores = [jaccard(query, w.words) for w in previous]
                if min(scores) >= MIN_SCORE / 2 and sum(scores) >= KEEP_RATIO * sum(best[: len(previous)]):
                    return previous
        self._last[uri] = chosen
        return chosen

    # ------------------------------------------------------------------------------------------ sources
    def _candidates(
        self, document: Document, display: str, hidden: tuple[int, int], documents: dict[str, Document], kind: str, budget_ms: float
    ) -> list[Window]:
        """Windows of this document (shown as `display`) outside `hidden` (the cursor line and what the prompt
        holds), of the other open documents of the family, and of the workspace's files nearest to this one
        (read for `budget_ms` at most)."""
        hidden_from, hidden_to = hidden
        # NOTE: this document's windows are not cached: its text changes with every keystroke. Cutting a large
        # one, or listing a large workspace, takes a while: the budget for reading files starts after both, or
        # they would starve it (and the choice, made once per line, would hold no file of the workspace).
        out = [w for w in windows_of(document.text[:MAX_FILE_BYTES], display) if w.end < hidden_from or w.start > hidden_to]
        here = uri_to_path(document.uri)
        nearby = self._nearby_files(here, kind)
        deadline = time.perf_counter() + budget_ms / 1000.0
        open_paths: set[Path] = set()
        for other in documents.values():
            if other.uri == document.uri or family(other.language_id) != kind:
                continue
            path = uri_to_path(other.uri)
            if path is not None:
                open_paths.add(normalize_path(path))
            out += self._windows_of(None, other)
        if here is not None:
            open_paths.add(normalize_path(here))
        read = 0
        for path in nearby:
            if path in open_paths:
                continue  # the open document's text is the truth, not the file on disk
            if read and time.perf_counter() > deadline:
                break  # NOTE: at least one file a lookup, however late the thread was scheduled
            out += self._windows_of(path, None)
            read += 1
        return out

    def _windows_of(self, path: Path | None, document: Document | None) -> list[Window]:
        """Windows of an open document (cached by content), else of the workspace file at `path` (by mtime, size)."""
        uri = document.uri if document is not None else path.as_uri() if path is not None else ""
        display = relative_display(uri, self.roots)
        found = cached_source(self._windows, path, document, lambda source: windows_of(source.decode("utf-8", "replace"), display))
        return found or []

    def _nearby_files(self, here: Path | None, kind: str) -> list[Path]:
        """Workspace files of the family, nearest to `here` first (same folder, then by shared path), at most SIMILAR_FILES."""
        listed_at, listing = self._listing(kind)
        if here is None:
            return listing[:SIMILAR_FILES]
        key = (here, kind)
        cached = self._nearby.get(key)
        if cached is not None and cached[0] == listed_at:
            return cached[1]
        parent = normalize_path(here).parent.parts

        def distance(path: Path) -> tuple[int, str]:
            parts = path.parent.parts
            shared = 0
            for a, b in zip(parts, parent):
                if a != b:
                    break
                shared += 1
            return (len(parent) - shared) + (len(parts) - shared), str(path)

        return keep(self._nearby, key, (listed_at, sorted(listing, key=distance)[:SIMILAR_FILES]))[1]

    def _listing(self, kind: str) -> tuple[float, list[Path]]:
        """(when it was made, the workspace's files of the family): MAX_LISTED directory entries, LISTING_TTL_S."""
        cached = self._listings.get(kind)
        now = time.monotonic()
        if cached is not None and now - cached[0] < LISTING_TTL_S:
            return cached
        extensions = _EXTENSIONS[kind]
        found: list[Path] = []
        visited = 0
        for root in self.roots:
            stack = [root]
            while stack and visited < MAX_LISTED:
                folder = stack.pop()
                try:
                    entries = sorted(os.scandir(folder), key=lambda e: e.name)
                except OSError:
                    continue
                for entry in entries:
                    visited += 1
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if entry.name not in _SKIPPED_DIRS:
                                stack.append(Path(entry.path))
                        elif entry.name.endswith(extensions) and entry.is_file(follow_symlinks=False):
                            found.append(normalize_path(Path(entry.path)))
                    except OSError:
                        continue
        self._listings[kind] = (now, found)
        return now, found

