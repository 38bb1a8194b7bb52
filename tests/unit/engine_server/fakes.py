"""A fake batched engine (the INTERFACES.md API, no model) and an in-process engine server around it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabfill.completion import wire
from tabfill.engine_server.batch_api import BatchEvent, BatchRequest
from tabfill.engine_server.scheduler import Scheduler
from tabfill.engine_server.server import EngineConfig, EngineServer, ModelCard
from tabfill.engine_server.tokens import TokenStore, add_tenant

VOCAB = 100


class FakeEngine:
    """Each step emits one token per row: token `(prompt[-1] + n) % VOCAB`, text "<id>,". Prefix hits are
    counted per salt, as the batched engine's salted prefix store does."""

    def __init__(self, step_delay_s: float = 0.0) -> None:
        self.rows: dict[str, tuple[BatchRequest, int]] = {}
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.seen: dict[bytes, list[tuple[int, ...]]] = {}
        self.step_delay_s = step_delay_s
        self.max_rows = 0
        self.fail_next = False
        self.log: list[tuple[str, str]] = []  # ("add" | "cancel", id) in call order
        self.sent_chars: dict[str, int] = {}

    @property
    def idle(self) -> bool:
        return not self.rows

    def add(self, request: BatchRequest) -> None:
        if len(request.prompt.token_ids) > 50:
            raise ValueError("too long for the fake")
        self.rows[request.id] = (request, 0)
        self.log.append(("add", request.id))
        self.started.append(request.id)
        self.max_rows = max(self.max_rows, len(self.rows))

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)
        self.log.append(("cancel", request_id))
        self.rows.pop(request_id, None)

    def _cached(self, request: BatchRequest) -> int:
        prompt = request.prompt.token_ids
        best = 0
        for seen in self.seen.get(request.salt, []):
            common = 0
            while common < min(len(seen), len(prompt) - 1) and seen[common] == prompt[common]:
                common += 1
            best = max(best, common)
        return best

    def step(self) -> list[BatchEvent]:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("fake step failure")
        if self.step_delay_s:
            threading.Event().wait(self.step_delay_s)
        events = []
        for request_id, (request, done) in list(self.rows.items()):
            prompt = request.prompt
            token = (prompt.token_ids[-1] + done + 1) % VOCAB
            done += 1
            finish = "length" if done >= prompt.max_new_tokens else None
            cached = self._cached(request)  # NOTE: every event says it, as the batched engine's do
            sent = self.sent_chars.get(request_id, 0)  # each token's text starts there; the fake is unsure of every other
            self.sent_chars[request_id] = sent + len(f"{token},")
            confidence = ((sent, 0.25 if done % 2 == 0 else 0.9),)
            events.append(BatchEvent(request_id, (token,), f"{token},", finish, cached, len(prompt.token_ids), confidence=confidence))
            if finish:
                del self.rows[request_id]
                self.seen.setdefault(request.salt, []).append(prompt.token_ids)
            else:
                self.rows[request_id] = (request, done)
        return events


def card() -> ModelCard:
    special = {"bos_token": None, "bos_token_id": None, "eos_token": "<eos>", "eos_token_id": 0, "unk_token": None,
               "unk_token_id": None, "pad_token": None, "pad_token_id": None}
    return ModelCard("fake-model", VOCAB, TINY_TOKENIZER_JSON, special, kv_tokens=256)


@dataclass
class Running:
    server: EngineServer
    engine: FakeEngine
    port: int
    tokens: dict[str, str]
    loop: asyncio.AbstractEventLoop

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@contextmanager
def engine_server(tmp_path: Path, *, slots: int = 4, max_queue: int = 8, step_delay_s: float = 0.0,
                  config: EngineConfig | None = None, limits: dict[str, tuple[int, int]] | None = None,
                  port: int = 0, ssl_context: Any = None) -> Iterator[Running]:
    token_file = tmp_path / "tokens"
    tokens = {}
    for name in ("alice", "bob"):
        concurrent, rpm = (limits or {}).get(name, (0, 0))
        tokens[name] = add_tenant(token_file, name, concurrent, rpm)
    engine = FakeEngine(step_delay_s)
    scheduler = Scheduler(engine, slots=slots, max_queue=max_queue)
    server = EngineServer(card(), scheduler, TokenStore(token_file), config or EngineConfig(max_frame_bytes=4096, hello_timeout_s=1.0, max_new_tokens=64))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        listener = await server.listen("127.0.0.1", port, ssl_context)
        holder["port"] = listener.sockets[0].getsockname()[1]
        holder["listener"] = listener
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(10)
    ready.wait(10)
    scheduler.start()
    try:
        yield Running(server, engine, holder["port"], tokens, loop)
    finally:
        async def stop() -> None:
            holder["listener"].close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        scheduler.close()


# ------------------------------------------------------------------ raw frames over a socket


def send(sock: socket.socket, frame: dict[str, Any]) -> None:
    sock.sendall(wire.pack(frame))


def receive(sock: socket.socket, reader: wire.FrameReader | None = None, timeout: float = 10.0) -> dict[str, Any] | None:
    """The next frame, or None when the engine closed the connection."""
    reader = reader or _READERS.setdefault(id(sock), wire.FrameReader(64 << 20))
    sock.settimeout(timeout)
    pending = _PENDING.setdefault(id(sock), [])
    while not pending:
        data = sock.recv(1 << 16)
        if not data:
            return None
        pending.extend(reader.feed(data))
    item = pending.pop(0)
    assert isinstance(item, bytes)
    return wire.unpack_body(item)


_READERS: dict[int, wire.FrameReader] = {}
_PENDING: dict[int, list[Any]] = {}


def hello(running: Running, tenant: str = "alice") -> socket.socket:
    sock = running.connect()
    _READERS.pop(id(sock), None)
    _PENDING.pop(id(sock), None)
    send(sock, {"type": "hello", "token": running.tokens[tenant], "client": "test", "protocol": wire.PROTOCOL_VERSION})
    welcome = receive(sock)
    assert welcome is not None and welcome["type"] == "welcome", welcome
    return sock


def generate_frame(request_id: str, prompt: list[int], max_new_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    return {"type": "generate", "id": request_id, "prompt": prompt, "max_new_tokens": max_new_tokens, **extra}


def collect(sock: socket.socket, request_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Frames for `request_id` until its done (or error); other ids' frames are skipped."""
    frames = []
    while True:
        frame = receive(sock)
        assert frame is not None, "the engine closed the connection"
        if frame.get("id") != request_id:
            continue
        if frame["type"] in ("done", "error"):
            return frames, frame
        frames.append(frame)


def _tiny_tokenizer_json() -> bytes:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer.to_str().encode()


TINY_TOKENIZER_JSON = _tiny_tokenizer_json()
