"""A scripted LSP server for the editor clients' typing-follow tests: it answers inline completions after a
set delay with the rest of a target line (after the indentation), finishes a cancelled request before it answers (as a server
mid-step does), and counts what the client did: requests in flight at once, cancels, tabfill/warm.

Usage: python fake_lsp.py TARGET [DELAY_MS]; it exits with code 3 at once while the file $FAKE_LSP_DIE_IF exists. `fake/configure` {delayMs} changes the delay; `fake/stats`
returns the counts, the documents as the server has them, the settings it was given and its process id.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any


class FakeServer:
    def __init__(self, target: str, delay_ms: float) -> None:
        self.target = target
        self.delay_ms = delay_ms
        self.documents: dict[str, list[str]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[dict[str, Any]] = []  # each inline request: position, times, cancelled
        self.cancelled: set[Any] = set()
        self.warm: list[dict[str, Any]] = []
        self.events: list[str] = []  # the order of inline requests and warm notifications
        self.initialization_options: Any = None
        self.configurations: list[Any] = []  # workspace/didChangeConfiguration settings, in order
        self.started = time.monotonic()
        self.writer: asyncio.StreamWriter | None = None
        self.out = sys.stdout.buffer

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.out.flush()

    def now_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)

    def apply(self, uri: str, changes: list[dict[str, Any]]) -> None:
        lines = self.documents.setdefault(uri, [""])
        for change in changes:
            if "range" not in change:
                self.documents[uri] = lines = change["text"].split("\n")
                continue
            start, end = change["range"]["start"], change["range"]["end"]
            text = "\n".join(lines)
            offsets = [0]
            for line in lines:
                offsets.append(offsets[-1] + len(line) + 1)
            a = offsets[min(start["line"], len(lines) - 1)] + start["character"] if start["line"] < len(lines) else len(text)
            b = offsets[min(end["line"], len(lines) - 1)] + end["character"] if end["line"] < len(lines) else len(text)
            text = text[:a] + change["text"] + text[b:]
            self.documents[uri] = lines = text.split("\n")

    async def inline(self, message: dict[str, Any]) -> None:
        params = message["params"]
        uri, position = params["textDocument"]["uri"], params["position"]
        record = {"line": position["line"], "character": position["character"], "at": self.now_ms()}
        self.requests.append(record)
        self.events.append("inline")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.delay_ms / 1000)
        self.in_flight -= 1
        record["answered"] = self.now_ms()
        if message["id"] in self.cancelled:
            record["cancelled"] = True
            self.send({"id": message["id"], "error": {"code": -32800, "message": "cancelled"}})
            return
        lines = self.documents.get(uri, [""])
        typed = (lines[position["line"]][: position["character"]] if position["line"] < len(lines) else "").lstrip()
        items = []
        if self.target.startswith(typed) and len(typed) < len(self.target):
            rest = self.target[len(typed) :]
            items.append({"insertText": rest, "range": {"start": position, "end": position}})
        self.send({"id": message["id"], "result": {"items": items}})

    def stats(self) -> dict[str, Any]:
        return {
            "maxInFlight": self.max_in_flight, "requests": self.requests, "cancelled": len(self.cancelled),
            "warm": self.warm, "events": self.events, "documents": {uri: "\n".join(lines) for uri, lines in self.documents.items()},
            "initializationOptions": self.initialization_options, "configurations": self.configurations, "pid": os.getpid(),
        }

    def handle(self, message: dict[str, Any]) -> None:
        method, params, msg_id = message.get("method"), message.get("params"), message.get("id")
        if method is None:
            return  # a response to something we did not ask
        if method == "textDocument/inlineCompletion":
            asyncio.get_running_loop().create_task(self.inline(message))
            return
        result: Any = None
        if method == "initialize":
            self.initialization_options = params.get("initializationOptions")
            result = {"capabilities": {"textDocumentSync": {"openClose": True, "change": 2}, "inlineCompletionProvider": True,
                                       "positionEncoding": "utf-16"}}
        elif method == "textDocument/didOpen":
            self.documents[params["textDocument"]["uri"]] = params["textDocument"]["text"].split("\n")
        elif method == "textDocument/didChange":
            self.apply(params["textDocument"]["uri"], params["contentChanges"])
        elif method == "workspace/didChangeConfiguration":
            self.configurations.append(params.get("settings"))
        elif method == "$/cancelRequest":
            self.cancelled.add(params["id"])
        elif method == "tabfill/warm":
            self.warm.append({**params["position"], "uri": params["textDocument"]["uri"], "at": self.now_ms()})
            self.events.append("warm")
        elif method == "tabfill/status":
            result = {"state": "ready", "model": "fake", "device": "cpu", "dtype": "", "template": "", "lastTimings": {}, "engine": {}}
        elif method == "fake/configure":
            self.delay_ms = float(params.get("delayMs", self.delay_ms))
        elif method == "fake/stats":
            result = self.stats()
        elif method == "exit":
            sys.exit(0)
        if msg_id is not None:
            self.send({"id": msg_id, "result": result})


async def main() -> None:
    if os.path.exists(os.environ.get("FAKE_LSP_DIE_IF", "\0")):
        sys.exit(3)  # a server that cannot start (the restart tests create this file)
    server = FakeServer(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 100.0)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        length = 0
        while True:
            line = await reader.readline()
            if not line:
                return
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        server.handle(json.loads(await reader.readexactly(length)))


if __name__ == "__main__":
    asyncio.run(main())
