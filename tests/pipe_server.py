"""A TabfillServer in this process, served over OS pipes by its own `start_io` (the stdio path of
`tabfill serve`), over any token source: for fast tests of what arrives as bytes (bursts, fuzz)."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from typing import Any

from tabfill.completion.service import CompletionService
from tabfill.completion.source import TokenSource
from tabfill.completion.types import Settings
from tabfill.lsp_server.server import TabfillServer, create_server
from tabfill.lsp_server.transport import FrameParser


def frame(message: dict[str, Any] | bytes) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps({"jsonrpc": "2.0", **message}).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class PipeServer:
    def __init__(self, source: TokenSource, settings: Settings | None = None) -> None:
        service = CompletionService(settings or Settings(engine="fake://here", deadline_ms=60), opener=lambda _s, _p: source)
        self.server: TabfillServer = create_server(service=service)
        in_read, self._in = os.pipe()
        self._out, out_write = os.pipe()
        stdin, stdout = os.fdopen(in_read, "rb", 0), os.fdopen(out_write, "wb")
        self.thread = threading.Thread(target=self.server.start_io, args=(stdin, stdout), daemon=True)
        self.thread.start()
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self.responses: dict[Any, dict[str, Any]] = {}  # by id (None: answers to what had no usable id)
        self.null_id_errors: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        parser = FrameParser()
        while data := os.read(self._out, 1 << 16):
            for body in parser.feed(data):
                message = json.loads(body)
                with self._changed:
                    if "method" in message and "id" in message:  # a request from the server: accept it
                        self.send({"id": message["id"], "result": None})
                    elif "method" in message:
                        self.notifications.append(message)
                    elif message.get("id") is None:
                        self.null_id_errors.append(message)
                    else:
                        self.responses[message["id"]] = message
                    self._changed.notify_all()

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, *messages: dict[str, Any] | bytes) -> None:
        """Write the messages (dicts are framed; bytes are written as they are) in one go."""
        data = b"".join(message if isinstance(message, bytes) else frame(message) for message in messages)
        while data:
            data = data[os.write(self._in, data) :]

    def wait(self, ids: list[Any], timeout: float = 20.0) -> dict[Any, dict[str, Any]]:
        with self._changed:
            ok = self._changed.wait_for(lambda: all(i in self.responses for i in ids), timeout)
            assert ok, f"unanswered: {[i for i in ids if i not in self.responses][:20]}"
            return {i: self.responses[i] for i in ids}

    def request(self, method: str, params: Any, timeout: float = 20.0) -> dict[str, Any]:
        msg_id = self.next_id()
        self.send({"id": msg_id, "method": method, "params": params})
        return self.wait([msg_id], timeout)[msg_id]

    def start(self, wait_ready: bool = True) -> None:
        capabilities = {"general": {"positionEncodings": ["utf-16"]}, "textDocument": {"inlineCompletion": {}}}
        self.request("initialize", {"processId": None, "rootUri": None, "capabilities": capabilities})
        self.send({"method": "initialized", "params": {}})
        deadline = time.monotonic() + 20
        while wait_ready and self.request("tabfill/status", None)["result"]["state"] != "ready":
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.02)

    def close(self) -> None:
        if self.thread.is_alive():
            self.request("shutdown", None)
            self.send({"method": "exit"})
            self.thread.join(10)
        os.close(self._in)
