"""The real server command over stdio, with a tiny random-init model (fast)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from tabfill.completion.service import CompletionService
from tabfill.completion.types import Completion, CompletionRequest, Settings
from tests.lsp.conftest import CLIENTS, change_document, field, inline, lsp_session, open_document, raw_request, server_capabilities, status, wait_for_state

SOURCE = "import os\n\n\ndef read(path):\n    with open(path) as handle:\n        return handle.re"


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> Iterator[CompletionService]:
    """The same model in-process: what the server must answer, computed without LSP."""
    service = CompletionService(Settings(model=str(tiny_model), deadline_ms=60_000))
    service.load().result()
    yield service
    service.close()


def expected(service: CompletionService, text: str, offset: int, uri: str = "file:///ref.py") -> Completion:
    return service.complete(CompletionRequest(uri, "python", 1, text, offset))


def server_args(tiny_model: Path) -> list[str]:
    return ["--model", str(tiny_model), "--deadline-ms", "60000"]


@pytest.mark.parametrize("client", CLIENTS.values(), ids=list(CLIENTS))
async def test_inline_and_plain_completion_match_the_engine(tiny_model: Path, reference: CompletionService, client: str) -> None:
    want = expected(reference, SOURCE, len(SOURCE))
    assert want.text, "the tiny model should produce some text for this prompt"
    async with lsp_session(server_args(tiny_model), client=client) as lsp:
        capabilities = server_capabilities(lsp)
        assert capabilities.inline_completion_provider is not None
        assert capabilities.completion_provider is not None
        sync = capabilities.text_document_sync
        assert getattr(sync, "change", sync) == types.TextDocumentSyncKind.Incremental
        uri = "file:///work/read.py"
        open_document(lsp, uri, SOURCE)
        last_line = SOURCE.count("\n")
        column = len(SOURCE.rsplit("\n", 1)[1])
        result = await inline(lsp, uri, last_line, column)
        assert result is not None and len(result.items) == 1
        item = result.items[0]
        assert item.insert_text == want.text
        assert item.range == types.Range(types.Position(last_line, column), types.Position(last_line, column + want.replace_chars))

        plain = await lsp.text_document_completion_async(
            types.CompletionParams(types.TextDocumentIdentifier(uri), types.Position(last_line, column))
        )
        assert isinstance(plain, types.CompletionList) and len(plain.items) == 1
        assert plain.items[0].text_edit is not None and plain.items[0].text_edit.new_text == want.text


async def test_incremental_edits_are_applied(tiny_model: Path, reference: CompletionService) -> None:
    async with lsp_session(server_args(tiny_model)) as lsp:
        uri = "file:///work/edit.py"
        open_document(lsp, uri, "def f(x):\n    return x\n")
        # replace "x" in the return with "handle.re" and type at the end, as an editor would
        change_document(lsp, uri, 2, (1, 11), (1, 12), "handle.re")
        text = "def f(x):\n    return handle.re\n"
        result = await inline(lsp, uri, 1, 20)
        want = expected(reference, text, text.index("\n", 10))
        assert [i.insert_text for i in result.items] == ([want.text] if want.text else [])


@pytest.mark.parametrize("encoding, units", [("utf-16", 14), ("utf-8", 20), ("utf-32", 13)])
async def test_position_encodings_with_emoji_and_cjk(tiny_model: Path, reference: CompletionService, encoding: str, units: int) -> None:
    # the cursor goes after `漢字` on line 2: 13 code points, 14 UTF-16 units (the emoji is 2), 20 UTF-8 bytes
    text = 'import re\n\ns = "😀" + "漢字\nprint(s)\n'
    line2 = 's = "😀" + "漢字'
    assert (len(line2), len(line2.encode("utf-16-le")) // 2, len(line2.encode())) == (13, 14, 20)
    cursor_cp = text.index(line2) + len(line2)
    want = expected(reference, text, cursor_cp)
    async with lsp_session(server_args(tiny_model), position_encodings=[encoding]) as lsp:
        assert server_capabilities(lsp).position_encoding == encoding
        uri = f"file:///work/enc-{encoding}.py"
        open_document(lsp, uri, text)
        result = await inline(lsp, uri, 2, units)
        texts = [item.insert_text for item in result.items]
        assert texts == ([want.text] if want.text else [])
        if result.items:
            assert result.items[0].range == types.Range(types.Position(2, units), types.Position(2, units))
        # one code unit into the emoji (utf-16 surrogate / utf-8 continuation) snaps to its start
        if encoding != "utf-32":
            inside = await inline(lsp, uri, 2, 6)
            at_start = expected(reference, text, text.index("😀"))
            assert [i.insert_text for i in inside.items] == ([at_start.text] if at_start.text else [])


async def test_bad_input_gets_errors_and_the_server_keeps_serving(tiny_model: Path, reference: CompletionService) -> None:
    async with lsp_session(server_args(tiny_model)) as lsp:
        uri = "file:///work/bad.py"
        open_document(lsp, uri, SOURCE)
        base = {"textDocument": {"uri": uri}, "context": {"triggerKind": 1}}
        bad_positions = [{"line": 0, "character": -1}, {"line": -3, "character": 0}, {"line": 0, "character": 1.5}, {"line": "x", "character": 0}]
        for number, position in enumerate(bad_positions):
            started = time.monotonic()
            with pytest.raises(JsonRpcException) as error:
                request = raw_request(lsp, "textDocument/inlineCompletion", {**base, "position": position}, f"bad-{number}")
                await asyncio.wait_for(request, 1.0)
            assert error.value.code == -32602, position
            assert time.monotonic() - started < 1.0
        with pytest.raises(JsonRpcException) as error:
            await asyncio.wait_for(inline(lsp, "file:///never/opened.py", 0, 0), 1.0)
        assert error.value.code == -32602 and "not open" in str(error.value.message)
        with pytest.raises(JsonRpcException) as error:  # a malformed request: params of the wrong shape
            await asyncio.wait_for(raw_request(lsp, "textDocument/inlineCompletion", ["not", "an", "object"], "bad-shape"), 1.0)
        assert error.value.code == -32602
        # past the end: clamped to the end of the document / line
        want = expected(reference, SOURCE, len(SOURCE))
        past_end = await inline(lsp, uri, 999, 0)
        past_line = await inline(lsp, uri, SOURCE.count("\n"), 999)
        for result in (past_end, past_line):
            assert [i.insert_text for i in result.items] == [want.text]
        # a body that is not JSON at all: answered with a ParseError (id null), and nothing breaks
        garbage = b"{not json"
        assert lsp.protocol.writer is not None
        lsp.protocol.writer.write(b"Content-Length: %d\r\n\r\n" % len(garbage) + garbage)
        # still serving
        assert field(await status(lsp), "state") == "ready"
        assert [i.insert_text for i in (await inline(lsp, uri, 999, 0)).items] == [want.text]


async def test_large_document_and_crlf(tiny_model: Path, reference: CompletionService) -> None:
    big = "x = 1  # filler line for size\n" * 35_000  # ~1 MB
    text = big + "def read(path):\r\n    return pa"
    async with lsp_session(server_args(tiny_model)) as lsp:
        uri = "file:///work/big.py"
        open_document(lsp, uri, text)
        started = time.monotonic()
        result = await asyncio.wait_for(inline(lsp, uri, 35_001, 13), 30)
        elapsed = time.monotonic() - started
        want = expected(reference, text, len(text))
        assert [i.insert_text for i in result.items] == ([want.text] if want.text else [])
        assert elapsed < 30


async def test_model_that_fails_to_load_is_reported_once_and_server_keeps_serving(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    async with lsp_session(["--model", str(missing)], wait_ready=False) as lsp:
        state = await wait_for_state(lsp, {"failed"}, timeout_s=60)
        assert "config.json" in field(state, "error")
        uri = "file:///work/f.py"
        open_document(lsp, uri, "def f():\n    ")
        result = await asyncio.wait_for(inline(lsp, uri, 1, 4), 1.0)
        assert list(result.items) == []
        errors = [m for m in lsp.messages if m.type == types.MessageType.Error]
        assert len(errors) == 1 and "config.json" in errors[0].message


async def test_requests_before_the_model_is_ready_get_an_empty_answer_at_once(tiny_model: Path) -> None:
    async with lsp_session(server_args(tiny_model), wait_ready=False) as lsp:
        uri = "file:///work/early.py"
        open_document(lsp, uri, "def f():\n    ")
        result = await asyncio.wait_for(inline(lsp, uri, 1, 4), 2.0)  # the loader thread holds the GIL during imports
        assert result is not None
        state = field(await status(lsp), "state")
        if state != "ready":
            assert list(result.items) == []


async def test_settings_from_initialization_options_and_configuration(tiny_model: Path) -> None:
    options = {"enabledLanguages": ["go"], "maxNewTokens": "many"}
    async with lsp_session(server_args(tiny_model), init_options=options) as lsp:
        uri = "file:///work/s.py"
        open_document(lsp, uri, SOURCE)
        end_line, end_col = SOURCE.count("\n"), len(SOURCE.rsplit("\n", 1)[1])
        result = await inline(lsp, uri, end_line, end_col)
        assert list(result.items) == []  # python is not enabled
        warnings = [m.message for m in lsp.messages if m.type == types.MessageType.Warning]
        assert any("maxNewTokens" in w for w in warnings)
        lsp.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"tabfill": {"enabledLanguages": ["*"]}})
        )
        result = await inline(lsp, uri, end_line, end_col)
        assert len(result.items) == 1


async def test_shutdown_and_exit_end_with_code_zero(tiny_model: Path) -> None:
    async with lsp_session(server_args(tiny_model)) as lsp:
        process = lsp._server
    assert process is not None and process.returncode == 0


async def test_progress_is_reported_while_loading(tiny_model: Path) -> None:
    async with lsp_session(server_args(tiny_model)) as lsp:
        await asyncio.sleep(0.2)
        kinds = [type(v).__name__ for values in lsp.progress_reports.values() for v in values]
        assert kinds and kinds[0] == "WorkDoneProgressBegin" and kinds[-1] == "WorkDoneProgressEnd"
