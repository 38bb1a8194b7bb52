"""Line completion with and without each part of the syntax layer, in one process and one model load.

The LSP benchmark (`bench/run.py`) scores tabfill against tabfill with the plain prompt and the peers, under
the server's deadline. This one answers "which part of the prompt and post-processing earns what": the same
cases, whole answers (no deadline), through the same `DocumentStore` and `CompletionService` the server uses,
one variant after another on one loaded model:

- plain: the prefix only, plain newline rules (what `tabfill (plain prompt)` asks);
- postprocess: syntax post-processing on, no cross-file context;
- definitions: + the imported names' definitions (and recent edits);
- similar: + windows of similar code (the workspace, other open documents, this file outside the prompt);
- tabfill: everything, as the server's defaults ask.

    python -m bench.line_eval --cases 72
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # the in-process model: torch as every `tabfill` command runs it
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lsprotocol import types

from bench.cases import DATA, LineCase, line_cases
from bench.replay import case_uri, score_line
from tabfill.completion.service import CompletionService
from tabfill.completion.settings import parse_settings
from tabfill.completion.types import Completion, CompletionRequest, Settings
from tabfill.lsp_server.documents import DocumentStore

WHOLE_ANSWER_MS = 600_000  # no deadline: the whole answer is scored


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    syntax_postprocess: bool
    cross_file_context: bool
    definitions: bool = True
    similar: bool = True


VARIANTS = (
    Variant("plain", False, False),
    Variant("postprocess", True, False),
    Variant("definitions", True, True, similar=False),
    Variant("similar", True, True, definitions=False),
    Variant("tabfill", True, True),
)


@contextmanager
def _parts(store: DocumentStore, variant: Variant) -> Iterator[None]:
    """Switch the cross-file sources a variant leaves out (the store's own lookups, restored afterwards)."""
    saved = store.cross_file.snippets, store.similar.snippets
    if not variant.definitions:
        store.cross_file.snippets = lambda *args, **kwargs: []  # type: ignore[method-assign]
    if not variant.similar:
        store.similar.snippets = lambda *args, **kwargs: []  # type: ignore[method-assign]
    try:
        yield
    finally:
        store.cross_file.snippets, store.similar.snippets = saved  # type: ignore[method-assign]


def evaluate(service: CompletionService, cases: list[LineCase], variants: tuple[Variant, ...]) -> dict[str, list[dict[str, Any]]]:
    """Each case under every variant in turn (one case after another, so variants with the same prompt reuse
    its KV in the engine's live slot), each variant with its own `DocumentStore` over the workspace."""
    base = service.settings
    out: dict[str, list[dict[str, Any]]] = {variant.name: [] for variant in variants}
    stores = {variant.name: workspace_store() for variant in variants}
    try:
        for case in cases:
            for variant in variants:
                service.update_settings(dataclasses.replace(
                    base, syntax_postprocess=variant.syntax_postprocess, cross_file_context=variant.cross_file_context,
                    deadline_ms=WHOLE_ANSWER_MS,
                ))
                with _parts(stores[variant.name], variant):
                    out[variant.name].append(_complete_case(service, stores[variant.name], case, variant))
    finally:
        service.update_settings(base)
    return out


def workspace_store() -> DocumentStore:
    """A DocumentStore over bench/data as the workspace folder (what cross-file context may read)."""
    store = DocumentStore()
    store.set_workspace([types.WorkspaceFolder(DATA.resolve().as_uri(), "data")], None, None)
    return store


def complete_case(service: CompletionService, store: DocumentStore, case: LineCase, cross_file_context: bool = True) -> tuple[Completion, float]:
    """The case's document opened in `store`, the service's answer at its cursor and the ms `complete` took
    (the context lookup before it not counted), the document closed again."""
    uri = case_uri(case.name)
    text = case.prefix + case.suffix
    store.open(types.TextDocumentItem(uri, case.language_id, 1, text))
    offset = len(case.prefix)
    try:
        syntax, cross_file = store.request_context(uri, offset, cross_file_context, service.prompt_chars)
        request = CompletionRequest(uri, case.language_id, 1, text, offset, case.name, syntax=syntax, cross_file=cross_file)
        started = time.perf_counter()
        completion = service.complete(request)
        return completion, (time.perf_counter() - started) * 1000
    finally:
        store.close(uri)
        service.forget(uri)


def _complete_case(service: CompletionService, store: DocumentStore, case: LineCase, variant: Variant) -> dict[str, Any]:
    completion, ms = complete_case(service, store, case, variant.cross_file_context)
    row = {"case": case.name, "language": case.language_id, "verbatim": case.verbatim, **score_line(completion.text, case.expected)}
    row["ms"] = round(ms, 1)
    row["header_chars"] = len(service.last_cross_file)
    return row


SUBSETS = {"all": lambda row: True, "verbatim-free": lambda row: not row.get("verbatim"), "verbatim": lambda row: bool(row.get("verbatim"))}


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per variant: all cases, the verbatim-free ones and the verbatim ones (`subset`, language "all"), then
    each language's verbatim-free cases."""
    summary = []
    for name, rows in results.items():
        groups = [(subset, "all") for subset in SUBSETS] + [("verbatim-free", language) for language in sorted({row["language"] for row in rows})]
        for subset, language in groups:
            chosen = [row for row in rows if SUBSETS[subset](row) and language in ("all", row["language"])]
            if not chosen:
                continue
            summary.append({
                "variant": name, "subset": subset, "language": language, "cases": len(chosen),
                "exact_match": round(100 * sum(row["exact"] for row in chosen) / len(chosen), 1),
                "edit_similarity": round(sum(row["edit_similarity"] for row in chosen) / len(chosen), 3),
            })
    return summary


def measure(model: str, count: int, variants: tuple[Variant, ...] = VARIANTS, settings: Settings | None = None) -> dict[str, Any]:
    """Load `model` once, score `count` line cases under each variant: {"cases", "summary", "rows"}."""
    service = CompletionService(dataclasses.replace(settings or Settings(), model=model))
    try:
        service.load().result()
        results = evaluate(service, line_cases(count), variants)
    finally:
        service.close()
    return {"cases": count, "summary": summarize(results), "rows": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=72)
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
    parser.add_argument("--settings", default="{}", help='server settings as JSON, e.g. \'{"crossFileTokens": 256}\'')
    parser.add_argument("--out", type=Path, help="write the rows and the summary as JSON here")
    args = parser.parse_args(argv)
    chosen = tuple(v for v in VARIANTS if v.name in args.variants.split(","))
    settings, problems = parse_settings(json.loads(args.settings))
    if problems:
        parser.error("; ".join(problems))
    measured = measure(args.model, args.cases, chosen, settings)
    for row in measured["summary"]:
        print(f"{row['variant']:12s} {row['subset']:13s} {row['language']:11s} {row['cases']:3d} EM {row['exact_match']:5.1f} % ES {row['edit_similarity']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(measured, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
