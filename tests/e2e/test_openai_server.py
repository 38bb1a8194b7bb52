"""`tabfill serve --engine openai+http://…` in front of a real OpenAI-compatible server: llama-cpp-python's
(the `llama_cpp.server` of llama-cpp-python[server]==0.3.36) serving the default model's GGUF file.

Marked `server`; run in .ci/run. The server is built once into the tabfill cache (bench/run.py
ensure_llama_cpp: compiles llama.cpp, about 10 minutes on a 2-core machine) and reused afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lsprotocol import types

from tabfill.lsp_server.server import _plain
from tests.lsp.conftest import inline, lsp_session, open_document, status

pytestmark = pytest.mark.server

DOCUMENT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return "
CURSOR = (DOCUMENT.count("\n"), len(DOCUMENT.rsplit("\n", 1)[1]))  # (line, character) at the end


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server as a child process (restartable on the same port)."""

    def __init__(self, python: Path, gguf: Path, log: Path) -> None:
        self.python, self.gguf, self.log = python, gguf, log
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"openai+http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.python), "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
                 "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            time.sleep(0.3)
        raise AssertionError(f"llama_cpp.server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    from bench.run import ensure_llama_cpp
    from tabfill.completion.models import preset_gguf

    started = time.monotonic()
    python, how = ensure_llama_cpp(install=True)
    assert python is not None, how
    print(f"llama-cpp-python server: {how} in {time.monotonic() - started:.0f} s")
    gguf = preset_gguf("default")
    assert gguf is not None
    server = LlamaServer(python, gguf, tmp_path_factory.mktemp("llama") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _status(client: object) -> dict[str, Any]:
    """tabfill/status as plain JSON values (pygls hands custom results over as namedtuples)."""
    return _plain(await status(client))  # type: ignore[arg-type, no-any-return]


async def _messages_after(client: object, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(client.messages) < count and time.monotonic() < deadline:  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)


def _serve_args(server: LlamaServer, tmp_path: Path, deadline_ms: int) -> tuple[str, list[str]]:
    """The document's URI (written to disk) and `tabfill serve`'s arguments for this server."""
    path = tmp_path / "fib.py"
    path.write_text(DOCUMENT)
    return path.as_uri(), ["--engine", server.url, "--engine-model", "default", "--deadline-ms", str(deadline_ms)]


async def test_serve_in_front_of_llama_cpp_python_gives_real_completions(llama_server: LlamaServer, tmp_path: Path) -> None:
    uri, args = _serve_args(llama_server, tmp_path, 60_000)
    async with lsp_session(args) as lsp:
        engine = (await _status(lsp))["engine"]
        assert engine["kind"] == "llama-cpp-python" and engine["prompts"].startswith("text")
        assert engine["tokenizer"].endswith("tokenizer.json")  # the served model's tokenizer, read without transformers
        open_document(lsp, uri, DOCUMENT)
        result = await inline(lsp, uri, *CURSOR)
        assert result.items, "no completion from the server"
        text = result.items[0].insert_text
        assert isinstance(text, str) and text.strip() and "\n" not in text
        assert "fibonacci" in text or "n" in text  # the model continues the recursion it sees
        after = await _status(lsp)
        assert after["engine"]["requests"] >= 1 and after["engine"]["failures"] == 0
        assert after["engine"]["lastGeneration"]["finishReason"] in ("stop", "length", "eos")


async def test_a_team_engine_in_front_of_llama_cpp_python_serves_an_editor(llama_server: LlamaServer, tmp_path: Path) -> None:
    """`tabfill engine --backend openai+http://…` (tokens, tenants, scheduling; no model) between the editor's
    `tabfill serve --engine tcp://…` and the server."""
    from bench.engine_process import make_tokens, start_engine

    tokens = make_tokens(tmp_path / "tokens", "alice")
    engine = start_engine(tmp_path / "tokens", tmp_path / "engine.log", "--backend", llama_server.url, "--backend-model", "default", timeout_s=120)
    try:
        uri, _ = _serve_args(llama_server, tmp_path, 60_000)
        options = {"engine": engine.url, "engineToken": tokens["alice"], "deadlineMs": 60_000}
        async with lsp_session([], init_options=options, cache_dir=tmp_path / "front") as lsp:
            described = (await _status(lsp))["engine"]
            assert described["kind"] == "team engine" and described["connected"]
            assert described["model"].endswith(f"127.0.0.1:{llama_server.port}/v1")  # the engine serves the server's model
            open_document(lsp, uri, DOCUMENT)
            result = await inline(lsp, uri, *CURSOR)
            assert result.items, "no completion through the team engine"
            text = result.items[0].insert_text
            assert isinstance(text, str) and text.strip() and "\n" not in text
    finally:
        engine.stop()
    assert "fibonacci" not in engine.log()  # no source code in the gateway's log


async def test_an_engine_outage_is_one_message_and_serving_resumes(llama_server: LlamaServer, tmp_path: Path) -> None:
    uri, args = _serve_args(llama_server, tmp_path, 500)
    line, character = CURSOR
    async with lsp_session(args) as lsp:
        open_document(lsp, uri, DOCUMENT)
        llama_server.stop()
        try:
            for _ in range(5):  # keystrokes while the server is down: empty answers, each within the deadline
                started = time.monotonic()
                assert not (await inline(lsp, uri, line, character)).items
                assert time.monotonic() - started < 2.0
            await _messages_after(lsp, 1, 5)
            warnings = [m for m in lsp.messages if m.type == types.MessageType.Warning and "engine unavailable" in m.message]
            assert len(warnings) == 1, lsp.messages
            assert (await _status(lsp))["engine"]["outage"]
        finally:
            llama_server.start()
        deadline = time.monotonic() + 120
        items: Any = ()
        while not items and time.monotonic() < deadline:  # the backoff passes, a request reconnects
            await asyncio.sleep(1.0)
            items = (await inline(lsp, uri, line, character)).items
            if not items:  # a deadline-cut answer goes on in the background: ask again when it has text
                await asyncio.sleep(2.0)
        assert items, "no completion after the server came back"
        assert (await _status(lsp))["engine"]["outage"] == ""
        assert len([m for m in lsp.messages if "engine unavailable" in m.message]) == 1


def test_doctor_reports_the_engine(llama_server: LlamaServer) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tabfill.cli", "doctor", "--engine", llama_server.url, "--engine-model", "default"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TABFILL_ENGINE_API_KEY": "sk-not-shown"},
    )
    assert result.returncode == 0, result.stderr
    assert "engine kind: llama-cpp-python" in result.stdout and "sk-not-shown" not in result.stdout + result.stderr
