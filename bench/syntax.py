"""The syntax layer on a large file, in process: a didChange as the server applies it (text, line index and
tree), and the tree snapshot plus `context_at` at the cursor, while typing into a ~3,000-line Python file."""

from __future__ import annotations

import random
import time
from typing import Any

from lsprotocol import types

from bench.cases import DATA
from bench.report import percentile
from tabfill.lsp_server.documents import DocumentStore
from tabfill.lsp_server.positions import position_at
from tabfill.syntax_cache.context import context_at


def large_python_file(min_lines: int) -> str:
    """Real standard-library modules from bench/data, concatenated until the text has `min_lines` lines."""
    sources = [path.read_text(encoding="utf-8") for path in sorted((DATA / "python").glob("*.py"))]
    parts: list[str] = []
    lines = 0
    while lines < min_lines:
        for source in sources:
            parts.append(source)
            lines += source.count("\n")
            if lines >= min_lines:
                break
    return "".join(parts)


def _summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 0.5) or 0.0, 4),
        "p95_ms": round(percentile(samples_ms, 0.95) or 0.0, 4),
        "max_ms": round(max(samples_ms), 4),
    }


def measure(min_lines: int = 3000, keystrokes: int = 400, seed: int = 5) -> dict[str, Any]:
    text = large_python_file(min_lines)
    store = DocumentStore()
    uri = "file:///bench/large.py"
    document = store.open(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))
    rng = random.Random(seed)
    update_ms: list[float] = []
    context_ms: list[float] = []
    version = 1
    # Type short words at random places, as an editor reports them: one insertion per keystroke.
    offset = len(text) // 2
    for index in range(keystrokes):
        if index % 20 == 0:
            offset = rng.randrange(len(document.text))
        line, character = position_at(document, offset, "utf-16")
        version += 1
        change = types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(line, character), types.Position(line, character)), text="x"
        )
        params = types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version), content_changes=[change]
        )
        started = time.perf_counter()
        store.change(params, "utf-16")
        update_ms.append((time.perf_counter() - started) * 1000)
        offset += 1
        started = time.perf_counter()
        context_at(document, offset, store.snapshot(uri))  # what a request does on the event loop
        context_ms.append((time.perf_counter() - started) * 1000)
    return {
        "lines": text.count("\n") + 1,
        "chars": len(text),
        "incremental_update": _summary(update_ms),
        "context_at": _summary(context_ms),
    }
