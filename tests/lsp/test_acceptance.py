"""Acceptance signals (Copilot-style notifications and the item's accept command) and `tabfill stats`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.lsp.conftest import field, inline, lsp_session, open_document, server_capabilities, status

SOURCE = "import os\n\n\ndef read(path):\n    with open(path) as handle:\n        return handle.re"
END = (SOURCE.count("\n"), len(SOURCE.rsplit("\n", 1)[1]))


def server_args(tiny_model: Path) -> list[str]:
    return ["--model", str(tiny_model), "--deadline-ms", "60000"]


def stats_json(cache_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "TABFILL_CACHE_DIR": str(cache_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "tabfill.cli", "stats", "--json"], capture_output=True, text=True, env=env, check=True
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def row(data: dict[str, Any], language: str) -> dict[str, Any]:
    rows = {entry["language"]: entry for entry in data["languages"]}
    return rows[language]


def as_json(lsp: LanguageClient, item: types.InlineCompletionItem) -> Any:
    """The item as a client echoes it back (JSON, camelCase)."""
    return lsp.protocol._converter.unstructure(item, types.InlineCompletionItem)


async def suggestion(lsp: LanguageClient, uri: str) -> types.InlineCompletionItem:
    result = await inline(lsp, uri, *END)
    assert len(result.items) == 1, result
    item = result.items[0]
    assert isinstance(item.insert_text, str) and item.insert_text.strip(), "the tiny model must suggest something here"
    return item


async def test_items_carry_the_accept_command_and_signals_are_counted_once(tiny_model: Path, tmp_path: Path) -> None:
    async with lsp_session(server_args(tiny_model), cache_dir=tmp_path) as lsp:
        provider = server_capabilities(lsp).execute_command_provider
        assert provider is not None and "tabfill.accept" in provider.commands
        uri = "file:///tmp/accept.py"
        open_document(lsp, uri, SOURCE)
        item = await suggestion(lsp, uri)
        assert item.command is not None and item.command.command == "tabfill.accept"
        assert item.command.arguments is not None
        argument = item.command.arguments[0]
        assert isinstance(argument, dict)
        assert argument["language"] == "python" and isinstance(argument["id"], str) and argument["latencyMs"] >= 0
        assert isinstance(argument["source"], str) and argument["source"] != "none"  # where the answer came from (model, cache, ...)

        echoed = as_json(lsp, item)
        lsp.protocol.notify("textDocument/didShowCompletion", {"item": echoed})
        lsp.protocol.notify("textDocument/didShowCompletion", {"item": echoed})  # shown again while typing: once
        lsp.protocol.notify("textDocument/didPartiallyAcceptCompletion", {"item": echoed, "acceptedLength": 3})
        lsp.protocol.notify("textDocument/didPartiallyAcceptCompletion", {"item": echoed, "acceptedLength": 5})
        await lsp.workspace_execute_command_async(
            types.ExecuteCommandParams(command=item.command.command, arguments=list(item.command.arguments))
        )
        second = await suggestion(lsp, uri)  # answered, never shown: counts as a request only
        assert second.command is not None and second.command.arguments is not None
        second_argument = second.command.arguments[0]
        assert isinstance(second_argument, dict) and second_argument["id"] != argument["id"]
        current = await status(lsp)
        assert field(current, "lastLatencyMs") is not None and field(current, "lastLatencyMs") >= 0

    assert isinstance(item.insert_text, str)
    python = row(stats_json(tmp_path), "python")
    assert python["requests"] == 2 and python["suggested"] == 2 and python["latencySamples"] == 2
    assert python["shown"] == 1 and python["accepted"] == 1 and python["partial"] == 2
    assert python["acceptedChars"] == len(item.insert_text)  # partial accepts, then the whole item: counted once
    assert python["acceptanceRate"] == 1.0
    assert python["p50Ms"] is not None and python["p99Ms"] >= python["p50Ms"]
    assert row(stats_json(tmp_path), "all")["requests"] == 2


async def test_counts_add_up_across_server_processes(tiny_model: Path, tmp_path: Path) -> None:
    for _ in range(2):
        async with lsp_session(server_args(tiny_model), cache_dir=tmp_path) as lsp:
            uri = "file:///tmp/twice.py"
            open_document(lsp, uri, SOURCE)
            item = await suggestion(lsp, uri)
            lsp.protocol.notify("textDocument/didShowCompletion", {"item": as_json(lsp, item)})
    python = row(stats_json(tmp_path), "python")
    assert (python["requests"], python["shown"], python["accepted"]) == (2, 2, 0)
    assert python["acceptanceRate"] == 0.0


async def test_malformed_signals_are_ignored_and_a_bad_accept_is_an_error(tiny_model: Path, tmp_path: Path) -> None:
    async with lsp_session(server_args(tiny_model), cache_dir=tmp_path) as lsp:
        uri = "file:///tmp/bad.py"
        open_document(lsp, uri, SOURCE)
        for params in (None, 5, {}, {"item": 5}, {"item": {"insertText": "x"}}, {"item": {"command": {"arguments": ["x"]}}},
                       {"item": {"command": {"arguments": [{"id": 7}]}}}):
            lsp.protocol.notify("textDocument/didShowCompletion", params)
        item = await suggestion(lsp, uri)
        echoed = as_json(lsp, item)
        for length in (-1, "3", True, None):
            lsp.protocol.notify("textDocument/didPartiallyAcceptCompletion", {"item": echoed, "acceptedLength": length})
        for arguments in (None, [], ["id"], [{"id": ""}], [{"id": "x" * 65}]):
            with pytest.raises(Exception, match="tabfill.accept"):
                await lsp.workspace_execute_command_async(types.ExecuteCommandParams(command="tabfill.accept", arguments=arguments))
        again = await suggestion(lsp, uri)  # still serving
        assert again.insert_text == item.insert_text
    python = row(stats_json(tmp_path), "python")
    assert (python["shown"], python["accepted"], python["partial"], python["requests"]) == (0, 0, 0, 2)


async def test_counts_are_written_while_the_server_runs(tiny_model: Path, tmp_path: Path) -> None:
    async with lsp_session(server_args(tiny_model), cache_dir=tmp_path) as lsp:
        uri = "file:///tmp/running.py"
        open_document(lsp, uri, SOURCE)
        item = await suggestion(lsp, uri)
        lsp.protocol.notify("textDocument/didShowCompletion", {"item": as_json(lsp, item)})
        deadline = asyncio.get_running_loop().time() + 60  # a bound for slow machines; the flush is batched
        while True:
            rows = {entry["language"]: entry for entry in stats_json(tmp_path)["languages"]}
            if rows.get("python", {}).get("shown") == 1:
                break
            assert asyncio.get_running_loop().time() < deadline, rows
            await asyncio.sleep(0.2)
        assert rows["python"]["requests"] == 1


async def test_a_deadline_cut_answer_is_announced_when_whole_and_then_served_from_the_cache(tiny_model: Path, tmp_path: Path) -> None:
    async with lsp_session(["--model", str(tiny_model), "--deadline-ms", "1"], cache_dir=tmp_path) as lsp:
        announced: asyncio.Queue[Any] = asyncio.Queue()

        @lsp.feature("tabfill/completionReady")
        def on_ready(params: Any) -> None:
            announced.put_nowait(params)

        uri = "file:///tmp/ready.py"
        open_document(lsp, uri, SOURCE)
        first = await inline(lsp, uri, *END)
        assert all(as_json(lsp, item)["command"]["arguments"][0]["partial"] for item in first.items)
        for _ in range(60):  # on a slow machine the continuation may hit its time cap: asking there resumes it
            ready = await asyncio.wait_for(announced.get(), 60)
            assert field(field(ready, "textDocument"), "uri") == uri and field(field(ready, "textDocument"), "version") == 1
            assert (field(field(ready, "position"), "line"), field(field(ready, "position"), "character")) == END
            if field(ready, "finished"):
                break
            assert field(ready, "reason") == "timeLimit"
            await inline(lsp, uri, *END)
        assert field(ready, "finished")
        whole = await suggestion(lsp, uri)
        arguments = as_json(lsp, whole)["command"]["arguments"][0]
        assert (arguments["source"], arguments["partial"]) == ("continuation", False)
        if first.items:  # what was shown first is the start of the whole answer
            assert isinstance(first.items[0].insert_text, str) and isinstance(whole.insert_text, str)
            assert whole.insert_text.startswith(first.items[0].insert_text)


async def test_an_item_carries_its_pieces_where_the_model_was_unsure(tiny_model: Path, tmp_path: Path) -> None:
    """`pieces` in the accept argument: the insert text split where the model was unsure (with the bar at
    100 % a random model is unsure of every token after the first); none at 0 %."""
    async with lsp_session(server_args(tiny_model), init_options={"confidencePercent": 100}, cache_dir=tmp_path) as lsp:
        uri = "file:///tmp/pieces.py"
        open_document(lsp, uri, SOURCE)
        item = await suggestion(lsp, uri)
        pieces = as_json(lsp, item)["command"]["arguments"][0]["pieces"]
        assert len(pieces) >= 2 and all(pieces) and "".join(pieces) == item.insert_text
    async with lsp_session(server_args(tiny_model), init_options={"confidencePercent": 0}, cache_dir=tmp_path) as lsp:
        open_document(lsp, uri, SOURCE)
        item = await suggestion(lsp, uri)
        assert "pieces" not in as_json(lsp, item)["command"]["arguments"][0]
