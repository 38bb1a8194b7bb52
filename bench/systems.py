"""The systems under test, each a child process driven the way its users drive it:

- `tabfill`: `tabfill serve` over LSP stdio (didOpen/didChange, inlineCompletion, $/cancelRequest);
- `transformers`: bench/naive_peer.py (plain `generate` on tabfill's prompt builder, no healing, no cache across requests);
- `llama.cpp`: llama-cpp-python's server on the same GGUF file, one HTTP request per keystroke like
  llama.vim, the older request abandoned (connection closed); its Llama object reuses the KV of the
  longest common prompt prefix (what llama.vim asks for with `cache_prompt`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lsp_client import LspClient, RpcError
from bench.machine import Usage, process_usage
from tabfill.completion.fim import FimTemplate, build_prompt, detect_template
from tabfill.completion.prompt import MULTI_LINE_MAX_LINES
from tabfill.completion.types import Prompt, Settings, StopRule
from tabfill.syntax_cache.context import Mode, SyntaxContext, context_at
from tabfill.syntax_cache.document import Document

REPO = Path(__file__).resolve().parent.parent


class Cancelled(Exception):
    pass


EMPTY = "empty"  # tabfill answered with no item (over LSP it cannot say whether the model ran)
UNKNOWN = "unknown"  # an item without a source (a server from before the accept argument carried it)


@dataclass
class Pending:
    """One completion request in flight."""

    sent_s: float
    task: asyncio.Task[str] = field(init=False)
    received_s: float | None = None
    text: str | None = None
    error: str | None = None
    cancelled: bool = False
    source: str | None = None  # where the answer came from: "model", "cache", "type-through", ... or EMPTY
    extra: dict[str, Any] = field(default_factory=dict)


def _utf16_position(text: str, offset: int) -> dict[str, int]:
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return {"line": line, "character": len(text[start:offset].encode("utf-16-le")) // 2}


class System(ABC):
    name: str
    pid: int = 0
    sends_ids = False  # its requests carry an id (handle.extra["id"]) that its `_cancel` sends

    @abstractmethod
    async def start(self) -> None: ...

    async def open(self, uri: str, language_id: str, text: str) -> None:
        return None

    async def insert(self, uri: str, old_text: str, offset: int, inserted: str) -> None:
        return None

    async def close_document(self, uri: str) -> None:
        return None

    @abstractmethod
    async def _complete(self, uri: str, language_id: str, text: str, offset: int, handle: Pending) -> str: ...

    async def _cancel(self, handle: Pending) -> None:
        handle.task.cancel()

    def request(self, uri: str, language_id: str, text: str, offset: int) -> Pending:
        loop = asyncio.get_running_loop()
        handle = Pending(loop.time())
        handle.task = asyncio.create_task(self._complete(uri, language_id, text, offset, handle))

        def finished(task: asyncio.Task[str]) -> None:
            handle.received_s = loop.time()
            if task.cancelled():
                handle.cancelled = True
            elif isinstance(task.exception(), Cancelled):
                handle.cancelled = True
            elif task.exception() is not None:
                handle.error = f"{type(task.exception()).__name__}: {task.exception()}"
            else:
                handle.text = task.result()
                if handle.source is None:
                    handle.source = "model"  # the peers: every answer is generated for its request

        handle.task.add_done_callback(finished)
        return handle

    async def cancel(self, handle: Pending) -> None:
        if handle.task.done():
            return
        if "id" not in handle.extra and self.sends_ids:
            # NOTE: the next key came before the request task ran at all (a loaded machine falls behind the
            # replay's clock): nothing was sent, so there is nothing to cancel on the other side.
            handle.task.cancel()
            return
        await self._cancel(handle)

    async def settle(self, uri: str, language_id: str, text: str, offset: int, handle: Pending, timeout_s: float) -> Pending | None:
        """After an answer cut by a deadline: wait until the server says the whole answer is ready and ask
        again at the same place, as an editor plugin does. None when nothing more is coming (the peers)."""
        return None

    def usage(self) -> Usage:
        return process_usage(self.pid)

    @abstractmethod
    async def stop(self) -> None: ...


def _context(language_id: str, text: str, offset: int) -> SyntaxContext:
    return context_at(Document("file:///bench", language_id, 0, text), offset)


class TabfillSystem(System):
    sends_ids = True

    def __init__(
        self, name: str, model: str, options: dict[str, Any] | None = None, root: Path | None = None, ready_timeout_s: float = 600,
    ) -> None:
        self.name = name
        self.ready_timeout_s = ready_timeout_s
        self.model = model
        self.options = options or {}
        self.root = root or REPO / "bench" / "data"
        self.client: LspClient | None = None
        self.versions: dict[str, int] = {}
        self.status: dict[str, Any] = {}
        self.ready: dict[tuple[str, int], asyncio.Event] = {}  # tabfill/completionReady by (uri, version)

    async def start(self) -> None:
        self.client = await LspClient.spawn([sys.executable, "-m", "tabfill.cli", "serve"])
        self.client.handlers["tabfill/completionReady"] = self._on_ready
        self.pid = self.client.process.pid
        capabilities = {"general": {"positionEncodings": ["utf-16"]}, "textDocument": {"inlineCompletion": {}}}
        await self.client.request(
            "initialize",
            {"processId": os.getpid(), "rootUri": self.root.as_uri(), "capabilities": capabilities,
             "initializationOptions": {"model": self.model, **self.options},
             "workspaceFolders": [{"uri": self.root.as_uri(), "name": "data"}]},
        )
        self.client.notify("initialized", {})
        began = time.monotonic()
        deadline = began + self.ready_timeout_s
        while time.monotonic() < deadline:
            self.status = await self.client.request("tabfill/status", None)
            if self.status["state"] in ("ready", "failed"):
                break
            # NOTE: asked every 20 ms in the first seconds: a front-end of a team engine is ready in about one,
            # and a 200 ms poll added up to 0.2 s to the start-up bench.team reports
            await asyncio.sleep(0.02 if time.monotonic() - began < 5 else 0.2)
        if self.status.get("state") != "ready":
            raise RuntimeError(f"tabfill did not get ready: {self.status} {self.client.messages}")

    async def open(self, uri: str, language_id: str, text: str) -> None:
        assert self.client is not None
        self.versions[uri] = 1
        self.client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language_id, "version": 1, "text": text}})

    async def insert(self, uri: str, old_text: str, offset: int, inserted: str) -> None:
        assert self.client is not None
        self.versions[uri] += 1
        position = _utf16_position(old_text, offset)
        change = {"range": {"start": position, "end": position}, "text": inserted}
        self.client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": self.versions[uri]}, "contentChanges": [change]})

    async def close_document(self, uri: str) -> None:
        assert self.client is not None
        self.client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        for key in [key for key in self.ready if key[0] == uri]:
            del self.ready[key]

    def _ready_event(self, uri: str, version: int) -> asyncio.Event:
        return self.ready.setdefault((uri, version), asyncio.Event())

    def _on_ready(self, params: Any) -> None:
        document = params.get("textDocument", {}) if isinstance(params, dict) else {}
        if isinstance(document.get("uri"), str) and isinstance(document.get("version"), int):
            self._ready_event(document["uri"], document["version"]).set()

    async def settle(self, uri: str, language_id: str, text: str, offset: int, handle: Pending, timeout_s: float) -> Pending | None:
        assert self.client is not None
        if handle.text is None:
            return None
        if not handle.extra.get("partial"):
            if handle.text:
                return None
            # an empty answer says nothing over LSP: the status says whether the deadline cut it
            generation = (await self.client.request("tabfill/status", None)).get("engine", {}).get("lastGeneration") or {}
            if generation.get("finishReason") != "deadline":
                return None
        try:
            await asyncio.wait_for(self._ready_event(uri, self.versions[uri]).wait(), timeout_s)
        except asyncio.TimeoutError:
            return None
        again = self.request(uri, language_id, text, offset)
        await asyncio.wait_for(asyncio.shield(again.task), timeout_s)
        return again

    async def _complete(self, uri: str, language_id: str, text: str, offset: int, handle: Pending) -> str:
        assert self.client is not None
        params = {"textDocument": {"uri": uri}, "position": _utf16_position(text, offset), "context": {"triggerKind": 2}}
        request_id, future = self.client.send_request("textDocument/inlineCompletion", params)
        handle.extra["id"] = request_id
        try:
            result = await future
        except RpcError as exc:
            if exc.code == -32800:
                raise Cancelled() from exc
            raise
        items = result["items"] if isinstance(result, dict) else result or []
        if not items:
            handle.source = EMPTY
            return ""
        handle.source = answer_source(items[0])
        handle.extra["partial"] = answer_argument(items[0]).get("partial") is True
        pieces = answer_argument(items[0]).get("pieces")
        if isinstance(pieces, list) and pieces and all(isinstance(piece, str) for piece in pieces):
            handle.extra["pieces"] = pieces  # where the model was unsure: the plugins draw the first piece
        insert = items[0]["insertText"]
        return insert if isinstance(insert, str) else insert["value"]

    async def _cancel(self, handle: Pending) -> None:
        assert self.client is not None
        if "id" not in handle.extra:  # NOTE: a busy event loop had not sent it yet: drop it unsent
            handle.task.cancel()
            return
        self.client.notify("$/cancelRequest", {"id": handle.extra["id"]})

    async def stop(self) -> None:
        if self.client is not None:
            self.status = await self.client.request("tabfill/status", None)
            await self.client.close()


def answer_argument(item: dict[str, Any]) -> dict[str, Any]:
    """The argument tabfill puts in its item's `tabfill.accept` command ({} when there is none)."""
    command = item.get("command")
    arguments = command.get("arguments") if isinstance(command, dict) else None
    argument = arguments[0] if isinstance(arguments, list) and arguments else None
    return argument if isinstance(argument, dict) else {}


def answer_source(item: dict[str, Any]) -> str:
    """The `source` tabfill puts in its item's `tabfill.accept` argument; any string is its own category."""
    source = answer_argument(item).get("source")
    return source if isinstance(source, str) and source else UNKNOWN


def peer_prompt(prefix: str, suffix: str, template: FimTemplate | None, tokenizer: Any, multi: bool, block_indent: int = 0) -> Prompt:
    """The prompt the peers get: tabfill's default budgets, template and stop rule (single line, or the
    block's indent for several), no token healing (plain tokens)."""
    settings = Settings()
    return build_prompt(
        prefix, suffix, template, tokenizer,
        max_prefix_tokens=settings.max_prefix_tokens, max_suffix_tokens=settings.max_suffix_tokens,
        max_new_tokens=settings.max_new_tokens if multi else settings.single_line_max_new_tokens,
        stop=StopRule(single_line=not multi, block_indent=block_indent if multi else 0,
                      max_lines=MULTI_LINE_MAX_LINES if multi else 1), heal=False,
    )


class _PromptWindow:
    """The peers see the same text window as tabfill's prompt (prefix-only for a model without FIM)."""

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.template = detect_template(self.tokenizer)

    def prompt(self, text: str, offset: int, multi: bool) -> tuple[str, int]:
        """The prompt's prefix text and its token allowance for new tokens."""
        prompt = peer_prompt(text[:offset], text[offset:], self.template, self.tokenizer, multi)
        return text[offset - prompt.prefix_chars : offset], prompt.max_new_tokens


class TransformersSystem(System):
    name = "transformers"
    sends_ids = True

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.process: asyncio.subprocess.Process | None = None
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.naive_peer", "--model", self.model_dir,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=REPO,
        )
        self.pid = self.process.pid
        assert self.process.stdout is not None
        ready = json.loads(await asyncio.wait_for(self.process.stdout.readline(), 600))
        assert ready.get("ready"), ready
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            message = json.loads(line)
            future = self.waiting.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result(message)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())

    async def _complete(self, uri: str, language_id: str, text: str, offset: int, handle: Pending) -> str:
        self.next_id += 1
        request_id = handle.extra["id"] = self.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        context = _context(language_id, text, offset)
        self._send({"id": request_id, "prefix": text[:offset], "suffix": text[offset:],
                    "multi": context.mode is Mode.MULTI, "block_indent": context.block_indent})
        answer = await future
        if answer.get("cancelled"):
            raise Cancelled()
        return str(answer["text"])

    async def _cancel(self, handle: Pending) -> None:
        self._send({"cancel": handle.extra["id"]})

    async def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaCppSystem(System):
    name = "llama.cpp"

    def __init__(self, python: Path, gguf: Path, model_dir: str, threads: int = 2) -> None:
        self.python, self.gguf, self.threads = python, gguf, threads
        self.window = _PromptWindow(model_dir)
        self.port = _free_port()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            str(self.python), "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
            "--port", str(self.port), "--n_threads", str(self.threads), "--n_ctx", "2048",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        self.pid = self.process.pid
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                status, _ = await self._http("GET", "/v1/models", None)
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.3)
        raise RuntimeError("llama.cpp server did not start")

    async def _http(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            payload = json.dumps(body).encode() if body is not None else b""
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
            )
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()  # NOTE: closing the connection is how a client abandons a request here
        head, _, rest = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), rest

    async def _complete(self, uri: str, language_id: str, text: str, offset: int, handle: Pending) -> str:
        multi = _context(language_id, text, offset).mode is Mode.MULTI
        prompt, max_new_tokens = self.window.prompt(text, offset, multi)
        body = {
            "prompt": prompt,
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "top_k": 1,
            "stop": ["\n\n\n"] if multi else ["\n"],
        }
        status, rest = await self._http("POST", "/v1/completions", body)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {rest[:200]!r}")
        if b"\r\n" in rest[:12] and rest[:1] in b"0123456789abcdef":  # chunked transfer encoding
            rest = _unchunk(rest)
        return str(json.loads(rest)["choices"][0]["text"])

    async def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out
