"""The workspace as the syntax layer reads it: file URIs and paths, how a snippet names its file, language
families, and sources read once and cached (an open document by content, a file by mtime and size), bounded by bytes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

from cachetools import LRUCache

from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.languages import grammar_name
from tabfill.syntax_cache.sizes import approx_bytes, keep
from tabfill.syntax_cache.tree import encode

MAX_FILE_BYTES = 512 * 1024  # a file (or open document) larger than this is read only this far, or not at all


@dataclass(frozen=True)
class Snippet:
    """A piece of another file worth showing the model. `kind`: "definition" or "recent"."""

    path: str  # workspace-relative path (or the URI's path) for display
    text: str
    kind: str = "definition"


def uri_to_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    path = unquote(parsed.path)
    if os.name == "nt" and re.match(r"^/[A-Za-z]:", path):
        path = path[1:]
    return Path(path)


def family(language_id: str) -> str:
    """The language family whose files can inform each other (JavaScript, TypeScript and TSX are one)."""
    grammar = grammar_name(language_id) or language_id.lower()
    return "javascript" if grammar in ("javascript", "typescript", "tsx") else grammar


def relative_display(uri: str, roots: list[Path]) -> str:
    """How a snippet names its file: relative to the workspace root that holds it, else the full path (or URI)."""
    path = uri_to_path(uri)
    if path is None:
        return uri
    for root in roots:
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


T = TypeVar("T")
SourceCache = LRUCache[tuple[str, object], T]


def source_cache(max_bytes: int) -> SourceCache[T]:
    """A cache for `cached_source`: least recently used first out beyond `max_bytes` (approx_bytes of the values)."""
    return LRUCache(maxsize=max_bytes, getsizeof=approx_bytes)


def cached_source(cache: SourceCache[T], path: Path | None, document: Document | None, parse: Callable[[bytes], T]) -> T | None:
    """`parse` of an open document's text (cached by its content: Document.identity) or else of the file at
    `path` (cached by path, mtime and size; None when it cannot be read or is over MAX_FILE_BYTES), at most
    MAX_FILE_BYTES of it, through `cache`."""
    if document is not None:
        key: tuple[str, object] = (document.uri, document.identity[1:])
        text = document.text
        read: Callable[[], bytes] = lambda: encode(text[:MAX_FILE_BYTES])
    elif path is not None:
        try:
            stat = path.stat()
        except OSError:
            return None
        if stat.st_size > MAX_FILE_BYTES:
            return None
        key = (str(path), (stat.st_mtime_ns, stat.st_size))
        file = path
        read = lambda: file.read_bytes()[:MAX_FILE_BYTES]
    else:
        return None
    cached = cache.get(key)
    if cached is not None:
        return cached
    try:
        source = read()
    except OSError:
        return None
    return keep(cache, key, parse(source))


def normalize_path(path: Path) -> Path:
    """The resolved path (symlinks followed), or the normalized one when it cannot be resolved."""
    try:
        return path.resolve()
    except OSError:
        return Path(os.path.normpath(path))
