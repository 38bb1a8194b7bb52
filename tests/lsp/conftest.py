"""Start the real `tabfill serve` command over stdio and drive it like an editor (pytest-lsp)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from tests.support import make_tiny_model_dir

CLIENTS = {"vscode": "visual-studio-code", "neovim": "neovim"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def server_command(*args: str, log_file: Path | None = None) -> list[str]:
    logging = ["--log-file", str(log_file)] if log_file is not None else []
    return [sys.executable, "-m", "tabfill.cli", *logging, "serve", *args]


@contextlib.asynccontextmanager
async def lsp_session(
    server_args: list[str],
    client: str = "visual-studio-code",
    init_options: dict[str, Any] | None = None,
    position_encodings: list[str] | None = None,
    wait_ready: bool = True,
    cache_dir: Path | None = None,
    root_uri: str | None = None,
    log_file: Path | None = None,
) -> AsyncIterator[LanguageClient]:
    """A started, initialized server. No workspace folder unless `root_uri` is given: the workspace is what
    cross-file context may read, and a shared folder such as /tmp would put other tests' files in prompts."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["TABFILL_CACHE_DIR"] = str(cache_dir)
    config = ClientServerConfig(server_command=server_command(*server_args, log_file=log_file), server_env=env)
    lsp_client = await config.start()
    assert isinstance(lsp_client, LanguageClient)
    capabilities = client_capabilities(client)
    if position_encodings is not None:
        capabilities.general = types.GeneralClientCapabilities(position_encodings=position_encodings)
    _INIT_RESULTS[id(lsp_client)] = await lsp_client.initialize_session(
        types.InitializeParams(capabilities=capabilities, initialization_options=init_options, root_uri=root_uri)
    )
    try:
        if wait_ready:
            await wait_for_state(lsp_client, {"ready"})
        yield lsp_client
    finally:
        await lsp_client.shutdown_session()
        await lsp_client.stop()
        _INIT_RESULTS.pop(id(lsp_client), None)


_INIT_RESULTS: dict[int, types.InitializeResult] = {}


def server_capabilities(client: LanguageClient) -> types.ServerCapabilities:
    """What the server answered to `initialize` in this session."""
    return _INIT_RESULTS[id(client)].capabilities


async def status(client: LanguageClient) -> Any:
    return await client.protocol.send_request_async("tabfill/status", None)


def field(value: Any, name: str) -> Any:
    return value[name] if isinstance(value, dict) else getattr(value, name)


async def wait_for_state(client: LanguageClient, states: set[str], timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        current = await status(client)
        if field(current, "state") in states:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"server never reached {states}: {current}")
        await asyncio.sleep(0.05)


def open_document(client: LanguageClient, uri: str, text: str, language_id: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text))
    )


def change_document(client: LanguageClient, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
    """One incremental edit, as an editor sends it: replace `start`..`end` (line, character) with `text`."""
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(types.Position(*start), types.Position(*end)), text=text)],
        )
    )


async def inline(client: LanguageClient, uri: str, line: int, character: int) -> types.InlineCompletionList:
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line, character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
    )
    assert isinstance(result, types.InlineCompletionList), result  # the server always answers with a list
    return result


async def raw_request(client: LanguageClient, method: str, params: Any, msg_id: str) -> Any:
    """Send params exactly as given (no lsprotocol types), as a misbehaving client would."""
    future: Future[Any] = Future()
    client.protocol._request_futures[msg_id] = future
    client.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    return await asyncio.wrap_future(future)
