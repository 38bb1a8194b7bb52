"""Real `tabfill serve --engine tcp://…` processes over LSP stdio against a real `tabfill engine` with the
default model: two tenants completing, the engine killed (-9) and restarted on the same port. Marked
`engine` (slow; run in .ci/run with `pytest -m ''`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from lsprotocol import types

from bench.engine_process import make_tokens, start_engine
from tabfill.completion.models import pull_default
from tests.lsp.conftest import field, inline, lsp_session, open_document, status

pytestmark = pytest.mark.engine

HEADER = "def fibonacci(n):\n"


def options(url: str, token: str) -> dict[str, object]:
    return {"engine": url, "engineToken": token, "deadlineMs": 60_000}


async def test_two_editors_of_two_tenants_complete_through_one_engine(tmp_path: Path) -> None:
    pull_default()
    tokens = make_tokens(tmp_path / "tokens", "alice", "bob")
    engine = start_engine(tmp_path / "tokens", tmp_path / "engine.log")
    try:
        async with lsp_session([], init_options=options(engine.url, tokens["alice"]), cache_dir=tmp_path / "a") as alice, \
                lsp_session([], init_options=options(engine.url, tokens["bob"]), cache_dir=tmp_path / "b") as bob:
            texts = []
            for lsp in (alice, bob):
                open_document(lsp, "file:///work/fib.py", HEADER)
                result = await inline(lsp, "file:///work/fib.py", 1, 0)
                assert len(result.items) == 1
                texts.append(result.items[0].insert_text)
            assert isinstance(texts[0], str) and texts[0].startswith("    ") and texts[0].strip()
            assert texts[0] == texts[1]  # the same greedy answer for both tenants
            described = field(await status(alice), "engine")
            assert field(described, "kind") == "team engine" and field(described, "tenant") == "alice" and field(described, "connected")
    finally:
        engine.stop()
    assert "def fibonacci" not in engine.log()  # no source code in the engine's log without --log-prompts


async def test_the_editor_answers_empty_says_so_once_and_recovers_after_kill_and_restart(tmp_path: Path) -> None:
    pull_default()
    tokens = make_tokens(tmp_path / "tokens", "alice")
    engine = start_engine(tmp_path / "tokens", tmp_path / "first.log")
    restarted = None
    try:
        async with lsp_session([], init_options=options(engine.url, tokens["alice"]), cache_dir=tmp_path / "a") as lsp:
            uri = "file:///work/fib.py"
            open_document(lsp, uri, HEADER)
            assert (await inline(lsp, uri, 1, 0)).items
            engine.kill()
            await asyncio.sleep(0.5)
            for character in range(3):  # keystrokes during the outage: empty at once, never hanging
                lsp.text_document_did_change(types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2 + character),
                    content_changes=[types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(1, character), types.Position(1, character)), text="z")],  # not the suggestion
                ))
                started = time.monotonic()
                result = await asyncio.wait_for(inline(lsp, uri, 1, character + 1), 5)
                assert not result.items or not result.items[0].insert_text
                assert time.monotonic() - started < 2
            warnings = [m.message for m in lsp.messages if m.type == types.MessageType.Warning and "engine" in m.message]
            assert len(warnings) == 1, warnings
            restarted = start_engine(tmp_path / "tokens", tmp_path / "second.log", port=engine.port)
            deadline = time.monotonic() + 30
            while not field(field(await status(lsp), "engine"), "connected") and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            open_document(lsp, "file:///work/other.py", HEADER)
            assert (await inline(lsp, "file:///work/other.py", 1, 0)).items
    finally:
        engine.stop()
        if restarted is not None:
            restarted.stop()
