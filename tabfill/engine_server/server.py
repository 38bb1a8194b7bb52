"""The engine's network side: asyncio connections speaking tabfill.completion.wire, feeding the scheduler.

Each connection authenticates with hello (within 5 s, one scrypt off the event loop) and becomes a tenant;
its generate frames are checked, limited per tenant and queued; scheduler events come back as delta/done
frames. A bad frame gets a typed error for that frame only; the connection and everyone else go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tabfill.completion import gc_pauses, wire
from tabfill.completion.types import Prompt, StopRule
from tabfill.engine_server.batch_api import BatchEvent, BatchRequest
from tabfill.engine_server.scheduler import WARM_PRIORITY_S, Busy, Job, Scheduler
from tabfill.engine_server.tokens import Tenant, TokenStore

log = logging.getLogger(__name__)

WRITE_BUFFER_LIMIT = 8 << 20  # a client that stops reading is dropped rather than buffered without bound


@dataclass(frozen=True)
class ModelCard:
    """What welcome and tokenizer frames tell front-ends about the model."""

    name: str
    vocab_size: int
    tokenizer_json: bytes
    special: dict[str, Any]  # bos/eos/unk token strings and ids
    kv_tokens: int  # positions one KV slot holds (prompt + answer)

    @property
    def tokenizer_id(self) -> str:
        return wire.tokenizer_id(self.tokenizer_json)


@dataclass(frozen=True)
class EngineConfig:
    max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES
    hello_timeout_s: float = wire.HELLO_TIMEOUT_S
    max_new_tokens: int = 512
    log_prompts: bool = False


@dataclass
class _TenantState:
    active: int = 0
    recent: deque[float] = field(default_factory=deque)  # generate arrival times within the last minute


class EngineServer:
    def __init__(self, card: ModelCard, scheduler: Scheduler, tokens: TokenStore, config: EngineConfig | None = None) -> None:
        self.card = card
        self.scheduler = scheduler
        self.tokens = tokens
        self.config = config or EngineConfig()
        self._tenants: dict[str, _TenantState] = {}
        self._salts: dict[str, bytes] = {}
        self._secret = os.urandom(16)  # per process: tenant salts differ across tenants and restarts
        self._connection_ids = itertools.count(1)
        self.connections = 0
        self.started = time.time()

    def salt(self, tenant: str) -> bytes:
        if tenant not in self._salts:
            self._salts[tenant] = hashlib.sha256(self._secret + tenant.encode()).digest()[:16]
        return self._salts[tenant]

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, ssl=ssl_context, limit=1 << 16)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self, reader, writer, next(self._connection_ids))
        self.connections += 1
        try:
            await connection.run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError) as exc:
            log.debug("connection %d ended: %s", connection.number, exc)
        except asyncio.CancelledError:
            log.debug("connection %d closed at shutdown", connection.number)
        finally:
            self.connections -= 1
            connection.release()
            writer.close()

    def admit(self, tenant: Tenant, count: bool = True) -> str | None:
        """Count a generate against the tenant's limits (`count`: False only checks, for a warm-up); the
        reason it is refused, or None."""
        state = self._tenants.setdefault(tenant.name, _TenantState())
        now = time.monotonic()
        while state.recent and state.recent[0] < now - 60:
            state.recent.popleft()
        if tenant.rpm and len(state.recent) >= tenant.rpm:
            return f"tenant {tenant.name} is over its limit of {tenant.rpm} requests per minute"
        if tenant.concurrent and state.active >= tenant.concurrent:
            return f"tenant {tenant.name} has {state.active} requests running (its limit)"
        if count:
            state.recent.append(now)
            state.active += 1
        return None

    def release(self, tenant: Tenant) -> None:
        self._tenants[tenant.name].active -= 1

    def status(self) -> dict[str, Any]:
        return {
            "type": "status", "model": self.card.name, "connections": self.connections,
            "uptime_s": round(time.time() - self.started, 1), "scheduler": self.scheduler.describe(), "gc": gc_pauses.describe(),
            # NOTE: only a backend that says so is asked from this thread (the batched engine is not thread-safe)
            **({"backend": _plain(report())} if callable(report := getattr(self.scheduler.engine, "status", None)) else {}),
        }


def _plain(value: Any) -> Any:
    """A describe() answer as msgpack can carry it (no tuples of odd types, no objects)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


class _Connection:
    def __init__(self, server: EngineServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.number = number
        self.loop = asyncio.get_running_loop()
        self.frames = wire.FrameReader(server.config.max_frame_bytes)
        self.pending: deque[bytes | wire.ProtocolError] = deque()
        self.tenant: Tenant | None = None
        self.jobs: dict[str, Job] = {}  # this connection's open generations by the client's id
        self.warms: dict[str, Job] = {}  # its waiting or running warm-ups by their engine id
        self._warm_ids = itertools.count(1)
        self.closed = False

    # ---------------------------------------------------------------- frames in and out
    async def next_frame(self) -> dict[str, Any] | None:
        """The next well-formed frame; None at end of stream. Malformed ones raise ProtocolError."""
        while not self.pending:
            data = await self.reader.read(1 << 16)
            if not data:
                return None
            self.pending.extend(self.frames.feed(data))
        item = self.pending.popleft()
        if isinstance(item, wire.ProtocolError):
            raise item
        return wire.unpack_body(item)

    def send(self, frame: dict[str, Any]) -> None:
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(wire.pack(frame))
        if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            log.warning("connection %d does not read its answers; closing it", self.number)
            self.closed = True
            self.writer.transport.abort()

    def send_threadsafe(self, frame: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.send, frame)

    # ---------------------------------------------------------------- the conversation
    async def run(self) -> None:
        config = self.server.config
        try:
            frame = await asyncio.wait_for(self.next_frame(), config.hello_timeout_s)
            if frame is None:
                return
            hello = wire.parse_hello(frame)
        except (TimeoutError, asyncio.TimeoutError):
            self.send(wire.error_frame(wire.UNAUTHORIZED, f"no hello within {config.hello_timeout_s:.0f} s"))
            return
        except wire.ProtocolError as exc:
            code = exc.code if exc.code in (wire.VERSION, wire.TOO_LARGE) else wire.UNAUTHORIZED
            self.send(wire.error_frame(code, exc.message))
            return
        self.tenant = await self.loop.run_in_executor(None, self.server.tokens.authenticate, hello.token)
        if self.tenant is None:
            self.send(wire.error_frame(wire.UNAUTHORIZED, "unknown or wrong token"))
            return
        log.info("connection %d: tenant %s (%s)", self.number, self.tenant.name, hello.client or "no client name")
        self.send(self.welcome())
        while not self.closed:
            try:
                frame = await self.next_frame()
                if frame is None:
                    return
                self.dispatch(frame)
            except wire.ProtocolError as exc:
                self.send(wire.error_frame(exc.code, exc.message, exc.request_id))
                if exc.fatal:
                    return

    def welcome(self) -> dict[str, Any]:
        card, config, tenant = self.server.card, self.server.config, self.tenant
        assert tenant is not None
        return {
            "type": "welcome", "protocol": wire.PROTOCOL_VERSION, "model": card.name, "tokenizer_id": card.tokenizer_id,
            "vocab_size": card.vocab_size, "tenant": tenant.name, "features": list(wire.FEATURES),
            "limits": {
                "max_frame_bytes": config.max_frame_bytes, "max_prompt_tokens": self.max_prompt_tokens,
                "max_new_tokens": config.max_new_tokens, "concurrent": tenant.concurrent, "rpm": tenant.rpm,
            },
        }

    @property
    def max_prompt_tokens(self) -> int:
        return max(1, self.server.card.kv_tokens - 64)

    def dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "generate":
            self.generate(frame)
        elif kind == "warm":
            self.warm(frame)
        elif kind == "cancel":
            job = self.jobs.get(wire.parse_cancel(frame))
            if job is not None:
                self.server.scheduler.cancel(job.id)
        elif kind == "status":
            self.send(self.server.status())
        elif kind == "tokenizer":
            card = self.server.card
            self.send({"type": "tokenizer", "tokenizer_id": card.tokenizer_id, "data": card.tokenizer_json, "special": card.special})
        elif kind == "ping":
            self.send({"type": "pong"})
        else:
            raise wire.ProtocolError(wire.BAD_REQUEST, f"unknown frame type {kind[:40]!r}", frame.get("id") if isinstance(frame.get("id"), str) else None)

    def generate(self, frame: dict[str, Any]) -> None:
        server, tenant = self.server, self.tenant
        assert tenant is not None
        request = wire.parse_generate(
            frame, vocab_size=server.card.vocab_size, max_prompt_tokens=self.max_prompt_tokens,
            max_new_tokens=server.config.max_new_tokens,
        )
        if request.id in self.jobs:
            raise wire.ProtocolError(wire.BAD_REQUEST, f"request id {request.id!r} is already running", request.id)
        if len(request.prompt) + request.max_new_tokens + (1 if request.healing_text else 0) > server.card.kv_tokens:
            raise wire.ProtocolError(wire.TOO_LARGE, f"prompt and answer need more than the {server.card.kv_tokens} positions of a slot", request.id)
        refused = server.admit(tenant)
        if refused:
            raise wire.ProtocolError(wire.BUSY, refused, request.id)
        stop = request.stop
        prompt = Prompt(
            request.prompt, request.max_new_tokens, StopRule(stop.single_line, stop.block_indent, stop.max_lines),
            stop_token_ids=frozenset(stop.token_ids), healing_text=request.healing_text,
        )
        # NOTE: shortest deadline first; a priority class (0 = keystroke) weighs 10 s per step.
        priority = time.monotonic() + (request.deadline_ms or 60_000) / 1000 + 10.0 * request.priority
        batch = BatchRequest(f"{self.number}/{request.id}", prompt, server.salt(tenant.name), priority, request.corpus)
        job = Job(batch, self.document_key(request.document), self.on_event)
        if server.config.log_prompts:
            log.info("connection %d generate %s: %d prompt tokens %r", self.number, request.id, len(request.prompt), list(request.prompt))
        else:
            log.debug("connection %d generate %s: %d prompt tokens", self.number, request.id, len(request.prompt))
        self.jobs[request.id] = job
        try:
            server.scheduler.submit(job)
        except Busy as exc:
            del self.jobs[request.id]
            server.release(tenant)
            raise wire.ProtocolError(wire.BUSY, str(exc), request.id) from None

    def document_key(self, document: str) -> str:
        """The scheduler's key of a document: this connection's (so one front-end never supersedes another's
        request, whatever keys they send), hashed (the key may be a URI: never kept or logged in clear)."""
        return f"{self.number}:" + hashlib.sha256(document.encode()).hexdigest()[:32] if document else ""

    def warm(self, frame: dict[str, Any]) -> None:
        """Queue a warm-up (never answered). Dropped silently while the tenant is at its limits or a request
        of the document is open."""
        server, tenant = self.server, self.tenant
        assert tenant is not None
        request = wire.parse_warm(frame, vocab_size=server.card.vocab_size, max_prompt_tokens=self.max_prompt_tokens)
        if server.admit(tenant, count=False):
            return
        prompt = Prompt(request.prompt, 1, StopRule(single_line=False, max_lines=1 << 20))
        batch = BatchRequest(f"{self.number}/~warm{next(self._warm_ids)}", prompt, server.salt(tenant.name), time.monotonic() + WARM_PRIORITY_S)
        job = Job(batch, self.document_key(request.document), self.on_warm_event, warm=True)
        self.warms[job.id] = job
        if not server.scheduler.submit_warm(job):
            del self.warms[job.id]
        elif server.config.log_prompts:
            log.info("connection %d warm: %d prompt tokens %r", self.number, len(request.prompt), list(request.prompt))

    def on_warm_event(self, job: Job, event: BatchEvent) -> None:
        if event.finish is not None:
            self.loop.call_soon_threadsafe(self.warms.pop, job.id, None)

    def on_event(self, job: Job, event: BatchEvent) -> None:
        """Scheduler -> client, from any thread."""
        self.loop.call_soon_threadsafe(self._deliver, job, event)

    def _deliver(self, job: Job, event: BatchEvent) -> None:
        client_id = job.id.split("/", 1)[1]
        if event.token_ids or event.text:
            delta: dict[str, Any] = {"type": "delta", "id": client_id, "text": event.text, "token_ids": list(event.token_ids)}
            if event.confidence:
                delta["confidence"] = [[offset, round(probability, 4)] for offset, probability in event.confidence]
            self.send(delta)
        if event.finish is None:
            return
        if self.jobs.get(client_id) is job:
            del self.jobs[client_id]
            assert self.tenant is not None
            self.server.release(self.tenant)
        if event.unavailable:  # the model server behind this engine is down: the front-end tells its user once
            self.send(wire.error_frame(wire.UNAVAILABLE, event.unavailable, client_id))
            return
        now = time.perf_counter()
        started = job.admitted or now
        self.send({
            "type": "done", "id": client_id, "finish": event.finish,
            "prompt_tokens": event.prompt_tokens, "cached_tokens": event.cached_tokens, "generated_tokens": job.generated,
            "timings": {
                "queue_ms": round((started - job.submitted) * 1000, 2),
                "first_ms": round(((job.first_event or now) - job.submitted) * 1000, 2),
                "total_ms": round((now - job.submitted) * 1000, 2),
            },
        })

    def release(self) -> None:
        """The connection ended: its generations stop (their done frames go nowhere)."""
        self.closed = True
        for job in [*self.jobs.values(), *self.warms.values()]:
            self.server.scheduler.cancel(job.id)
