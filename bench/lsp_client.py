"""A small LSP client over a child process's stdio, written for measuring: it frames JSON-RPC itself so
the time from writing a request to reading its response is not hidden behind a framework."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import itertools
import json
import os
from typing import Any


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class LspClient:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.messages: list[str] = []  # window/showMessage texts, for the report
        self.handlers: dict[str, Callable[[Any], None]] = {}  # server notifications by method
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def spawn(cls, command: list[str], env: dict[str, str] | None = None) -> LspClient:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        return cls(process)

    def _write(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def _read_loop(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                length = 0
                while True:
                    line = await stdout.readline()
                    if not line:
                        raise EOFError("server closed its output")
                    if line in (b"\r\n", b"\n"):
                        break
                    name, _, value = line.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                message = json.loads(await stdout.readexactly(length))
                self._dispatch(message)
        except (EOFError, asyncio.IncompleteReadError) as exc:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(EOFError(str(exc)))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message:
            if message["method"] == "window/showMessage":
                self.messages.append(message["params"]["message"])
            handler = self.handlers.get(message["method"])
            if handler is not None and "id" not in message:
                handler(message.get("params"))
            if "id" in message:  # a request from the server (e.g. workDoneProgress/create): accept it
                self._write({"id": message["id"], "result": None})
            return
        future = self._pending.pop(int(message.get("id") or 0), None)
        if future is None or future.done():
            return
        if "error" in message:
            future.set_exception(RpcError(message["error"]["code"], message["error"]["message"]))
        else:
            future.set_result(message.get("result"))

    def send_request(self, method: str, params: Any) -> tuple[int, asyncio.Future[Any]]:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._write({"id": request_id, "method": method, "params": params})
        return request_id, future

    async def request(self, method: str, params: Any) -> Any:
        _, future = self.send_request(method, params)
        return await future

    def expect(self, request_id: int) -> asyncio.Future[Any]:
        """A future for the answer to a request sent by `write_raw` (an RpcError when it is an error)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return future

    def write_raw(self, data: bytes) -> None:
        """Bytes as they are: frames built elsewhere, or malformed on purpose."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)

    def notify(self, method: str, params: Any) -> None:
        self._write({"method": method, "params": params})

    async def drain(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.drain()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.request("shutdown", None), 10)
            self.notify("exit", None)
            await asyncio.wait_for(self.process.wait(), 10)
        except (asyncio.TimeoutError, EOFError, RpcError, ConnectionError):
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
