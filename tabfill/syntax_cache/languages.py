"""Tree-sitter grammars by LSP language id, from the per-language grammar wheels (no downloads)."""

from __future__ import annotations

import importlib
import logging
import re
import threading
from collections.abc import Callable

from tree_sitter import Language

log = logging.getLogger(__name__)

# A name in the languages we read (for text rules that need no parse).
IDENTIFIER = re.compile(r"[A-Za-z_]\w*")

# LSP language id -> (module, function returning the grammar pointer)
_GRAMMARS: dict[str, tuple[str, str]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),  # the JavaScript grammar parses JSX
    "jsx": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
}

# The grammar's name for a language id (several ids share a grammar).
_CANONICAL = {
    "javascriptreact": "javascript",
    "jsx": "javascript",
    "typescriptreact": "tsx",
}

_lock = threading.Lock()
_loaded: dict[str, Language | None] = {}
_reported: set[str] = set()


def grammar_name(language_id: str) -> str:
    """The grammar a language id uses ("" when there is none)."""
    language_id = language_id.lower()
    if language_id not in _GRAMMARS:
        return ""
    return _CANONICAL.get(language_id, language_id)


def supported_languages() -> tuple[str, ...]:
    return tuple(sorted(_GRAMMARS))


def language_for(language_id: str) -> Language | None:
    """The grammar for an LSP language id, or None (text rules apply; logged once per id)."""
    key = language_id.lower()
    with _lock:
        if key in _loaded:
            return _loaded[key]
    spec = _GRAMMARS.get(key)
    language: Language | None = None
    if spec is None:
        _report_once(key, "no tree-sitter grammar for language %r: using text rules (indentation, brackets)")
    else:
        module_name, function_name = spec
        try:
            module = importlib.import_module(module_name)
            function: Callable[[], object] = getattr(module, function_name)
            language = Language(function())
        except Exception as exc:  # a broken or missing wheel must not take the server down
            _report_once(key, f"grammar for %r failed to load ({type(exc).__name__}: {exc}): using text rules")
    with _lock:
        _loaded[key] = language
    return language


def _report_once(key: str, message: str) -> None:
    with _lock:
        if key in _reported:
            return
        _reported.add(key)
    log.info(message, key)
