"""Cross-file context: the names a file imports, resolved to their definitions (signature and first
docstring/comment line) in other open documents and in files of the workspace folder, plus the most
recently edited regions of other documents.

Bounded: at most DEFINITION_FILES files read per lookup, workspace.MAX_FILE_BYTES per file,
DEFINITION_BUDGET_MS per lookup, and never a path outside the workspace roots nor the document's own file.
Definitions are cached per file (mtime and size) and per open document content, DEFINITION_CACHE_BYTES in all,
so a keystroke costs a few dictionary lookups.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from cachetools import LRUCache

from tabfill.syntax_cache.definitions import Definition, Import, definitions_in, imports_of
from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.tree import SyntaxSnapshot
from tabfill.syntax_cache.workspace import Snippet, cached_source, family, normalize_path, relative_display, source_cache, uri_to_path

__all__ = ["CrossFileIndex", "RecentEdits", "Snippet"]

DEFINITION_FILES = 12  # files read per lookup of imported definitions
DEFINITION_BUDGET_MS = 25.0
DEFINITION_SNIPPETS = 16
DEFINITION_CACHE_BYTES = 16 << 20  # definitions of files and open documents, least recently used out
RECENT_REGIONS = 8
RECENT_CONTEXT_LINES = 2  # lines kept on each side of an edited line
CROSS_FILE_GRAMMARS = ("python", "javascript", "typescript", "tsx")
_JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts")


class RecentEdits:
    """The most recently edited places (uri, line), newest last; regions are read at request time."""

    def __init__(self, capacity: int = RECENT_REGIONS * 4) -> None:
        self._places: deque[tuple[str, int]] = deque(maxlen=capacity)

    def record(self, document: Document, cp_offset: int, inserted: str) -> None:
        line = document.line_of(cp_offset)
        if self._places and self._places[-1][0] == document.uri and abs(self._places[-1][1] - line) <= RECENT_CONTEXT_LINES:
            self._places.pop()  # the same region, typed on: keep one entry, moved to the end
        self._places.append((document.uri, line + inserted.count("\n")))

    def forget(self, uri: str) -> None:
        kept = [place for place in self._places if place[0] != uri]
        self._places.clear()
        self._places.extend(kept)

    def regions(
        self, documents: dict[str, Document], exclude_uri: str, limit: int = RECENT_REGIONS, language_id: str | None = None
    ) -> list[Snippet]:
        """Recently edited regions of other open documents, newest first, non-overlapping; with `language_id`,
        only documents of the same language family (Python code does not help a Go completion)."""
        wanted = family(language_id) if language_id is not None else None
        out: list[Snippet] = []
        seen: list[tuple[str, int, int]] = []
        for uri, line in reversed(self._places):
            document = documents.get(uri)
            if uri == exclude_uri or document is None:
                continue
            if wanted is not None and family(document.language_id) != wanted:
                continue
            first, last = max(line - RECENT_CONTEXT_LINES, 0), min(line + RECENT_CONTEXT_LINES, document.line_count - 1)
            if any(u == uri and first <= b and a <= last for u, a, b in seen):
                continue
            seen.append((uri, first, last))
            text = "\n".join(document.line_text(row) for row in range(first, last + 1)).strip("\n")
            if text.strip():
                out.append(Snippet(relative_display(uri, []), text, "recent"))
            if len(out) >= limit:
                break
        return out


class CrossFileIndex:
    """Resolves imports to definitions; caches per file (mtime_ns, size) and per open document content."""

    def __init__(self, max_cached_bytes: int = DEFINITION_CACHE_BYTES, resolve_ttl_s: float = 5.0) -> None:
        self.roots: list[Path] = []
        self._files: LRUCache[tuple[str, object], list[Definition]] = source_cache(max_cached_bytes)
        # per document: (imports, open documents' contents) -> snippets, reused for `resolve_ttl_s` (files on disk
        # may change meanwhile; the open documents' contents are part of the key)
        self._resolved: dict[str, tuple[object, float, list[Snippet]]] = {}
        self._resolve_ttl_s = resolve_ttl_s

    def forget(self, uri: str) -> None:
        self._resolved.pop(uri, None)

    def set_roots(self, roots: list[Path]) -> None:
        resolved = []
        for root in roots:
            try:
                resolved.append(root.resolve())
            except OSError:
                continue
        self.roots = resolved
        self._resolved = {}  # what was found under the old roots

    def _inside(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def snippets(self, uri: str, snapshot: SyntaxSnapshot | None, documents: dict[str, Document], budget_ms: float = DEFINITION_BUDGET_MS) -> list[Snippet]:
        """Definitions of the names the document imports, in import order (bounded in files and time)."""
        if snapshot is None or snapshot.grammar not in CROSS_FILE_GRAMMARS or not self.roots and len(documents) < 2:
            return []
        imports = imports_of(snapshot)
        if not imports:
            return []
        key = (tuple(imports), tuple(sorted(d.identity for d in documents.values() if d.uri != uri)))
        now = time.monotonic()
        cached = self._resolved.get(uri)
        if cached is not None and cached[0] == key and now - cached[1] < self._resolve_ttl_s:
            return cached[2]
        snippets = self._resolve(uri, snapshot.grammar, imports, documents, budget_ms)
        self._resolved[uri] = (key, now, snippets)
        return snippets

    def _resolve(self, uri: str, grammar: str, imports: list[Import], documents: dict[str, Document], budget_ms: float) -> list[Snippet]:
        deadline = time.perf_counter() + budget_ms / 1000.0
        here = uri_to_path(uri)
        own = normalize_path(here) if here is not None else None
        open_by_path: dict[Path, Document] = {}
        for other in documents.values():
            other_path = uri_to_path(other.uri)
            if other_path is not None and other.uri != uri:
                open_by_path[normalize_path(other_path)] = other
        out: list[Snippet] = []
        files_read = 0
        for item in imports:
            # NOTE: at least one file a lookup, however late the thread was scheduled: a lookup makes progress
            if (files_read and time.perf_counter() > deadline) or files_read >= DEFINITION_FILES or len(out) >= DEFINITION_SNIPPETS:
                break
            for path in self._candidates(item.module, grammar, here):
                if path == own:
                    continue  # a self-import: the file on disk is an older copy of this very document
                document = open_by_path.get(path)
                if document is None and not (self._inside(path) and path.is_file()):
                    continue
                files_read += 1
                definitions = self._definitions(path, document, grammar)
                order = {name: i for i, name in enumerate(item.names)}
                chosen = [d for d in definitions if d.name in order or (item.default and d.default_export)]
                chosen.sort(key=lambda d: order.get(d.name, -1) if not d.default_export else -1)
                for definition in chosen[: DEFINITION_SNIPPETS - len(out)]:
                    out.append(Snippet(relative_display(path.as_uri(), self.roots), definition.render(), "definition"))
                break
        return out

    def _candidates(self, module: str, grammar: str, here: Path | None) -> list[Path]:
        out: list[Path] = []
        if grammar == "python":
            dots = len(module) - len(module.lstrip("."))
            parts = [p for p in module.lstrip(".").split(".") if p]
            bases: list[Path] = []
            if dots and here is not None:
                base = here.parent
                for _ in range(dots - 1):
                    base = base.parent
                bases = [base]
            elif not dots:
                bases = ([here.parent] if here is not None else []) + [r for root in self.roots for r in (root, root / "src")]
            for base in bases:
                stem = base.joinpath(*parts) if parts else base
                out += [stem.with_name(stem.name + ".py"), stem / "__init__.py"] if parts else [stem / "__init__.py"]
        else:
            if not module.startswith((".", "/")) or here is None:
                return []  # a package import (node_modules): not resolved
            stem = (here.parent / module) if module.startswith(".") else Path(module)
            out.append(stem)
            out += [stem.with_name(stem.name + ext) for ext in _JS_EXTENSIONS]
            out += [stem / f"index{ext}" for ext in _JS_EXTENSIONS]
        return [normalize_path(p) for p in out]

    def _definitions(self, path: Path, document: Document | None, grammar: str) -> list[Definition]:
        target_grammar = _grammar_for_path(path, grammar)
        found = cached_source(self._files, path, document, lambda source: definitions_in(target_grammar, source))
        return found or []


def _grammar_for_path(path: Path, fallback: str) -> str:
    name = path.name
    if name.endswith(".py"):
        return "python"
    if name.endswith(".tsx"):
        return "tsx"
    if name.endswith(".ts"):
        return "typescript"
    if name.endswith((".js", ".jsx", ".mjs", ".cjs")):
        return "javascript"
    return fallback
