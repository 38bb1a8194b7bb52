"""The front-end's connection to a team engine: one socket, a reader thread, reconnection with backoff.

Requests are streams: frames for a request id land in its queue. When the connection drops, every open
stream ends with a synthetic `done{finish: "error"}`, `on_state("down", why)` is called once per outage,
and a background thread reconnects (0.25 s doubling to 5 s) until the engine is back (`on_state("up")`).
Nothing here ever blocks longer than the caller's own timeout.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack

from tabfill.completion import wire

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 5.0
MAX_INCOMING_FRAME_BYTES = 64 << 20  # the tokenizer frame is a few MB


class EngineUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    @staticmethod
    def parse(url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("tcp", "tcps") or not parts.hostname or not parts.port:
            raise ValueError(f"engine address {url!r}: expected tcp://HOST:PORT or tcps://HOST:PORT")
        return Endpoint(parts.hostname, parts.port, parts.scheme == "tcps")


@dataclass(frozen=True)
class Welcome:
    model: str
    tokenizer_id: str
    vocab_size: int
    tenant: str
    limits: dict[str, Any]
    tokenizer_json: bytes
    special: dict[str, Any]
    features: frozenset[str] = frozenset()  # optional frames the engine takes (e.g. "warm")


class EngineClient:
    def __init__(self, url: str, token: str, client: str = "tabfill", cache_dir: Path | None = None,
                 on_state: Callable[[str, str], None] | None = None) -> None:
        self.endpoint = Endpoint.parse(url)
        self.url = url
        self.token = token
        self.client = client
        self.cache_dir = cache_dir
        self.on_state = on_state or (lambda state, why: None)
        self.welcome: Welcome | None = None
        self.reconnects = 0
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # frames must not interleave; never held with _lock
        self._sock: socket.socket | None = None
        self._streams: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()  # status/pong/errors without an id
        self._closed = False
        self._connected = threading.Event()
        self._reconnecting = False

    # ---------------------------------------------------------------- connection
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, timeout_s: float = 10.0) -> Welcome:
        """Connect (retrying until `timeout_s`); raises EngineUnavailable with the last reason."""
        give_up = time.monotonic() + timeout_s
        delay = BACKOFF_FIRST_S
        while True:
            try:
                return self._connect_once()
            except (OSError, EngineUnavailable, ValueError) as exc:
                if isinstance(exc, EngineUnavailable) and exc.args and str(exc.args[0]).startswith(("unauthorized", "version")):
                    raise
                if time.monotonic() + delay > give_up:
                    raise EngineUnavailable(f"cannot reach the engine at {self.url}: {exc}") from None
                time.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)

    def _connect_once(self) -> Welcome:
        raw = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=CONNECT_TIMEOUT_S)
        sock: socket.socket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.endpoint.tls:
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=self.endpoint.host)
            sock.settimeout(wire.HELLO_TIMEOUT_S + 5)
            reader = wire.FrameReader(MAX_INCOMING_FRAME_BYTES)
            sock.sendall(wire.pack({"type": "hello", "token": self.token, "client": self.client, "protocol": wire.PROTOCOL_VERSION}))
            frame = _read_frame(sock, reader)
            if frame.get("type") == "error":
                raise EngineUnavailable(f"{frame.get('code')}: {frame.get('message')}")
            if frame.get("type") != "welcome":
                raise EngineUnavailable(f"expected welcome, got {frame.get('type')!r}")
            tokenizer_json, special = self._tokenizer(sock, reader, str(frame["tokenizer_id"]))
            welcome = Welcome(str(frame["model"]), str(frame["tokenizer_id"]), int(frame["vocab_size"]), str(frame.get("tenant", "")),
                              dict(frame.get("limits", {})), tokenizer_json, special,
                              frozenset(str(f) for f in frame.get("features", ()) if isinstance(f, str)))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._sock, self.welcome = sock, welcome
        self._connected.set()
        threading.Thread(target=self._read_loop, args=(sock, reader), name="tabfill-engine-reader", daemon=True).start()
        return welcome

    def _tokenizer(self, sock: socket.socket, reader: wire.FrameReader, wanted: str) -> tuple[bytes, dict[str, Any]]:
        """The engine's tokenizer, from the cache by id or fetched once (and checked against its id)."""
        path = self.cache_dir / "engine-tokenizers" / f"{wanted}.msgpack" if self.cache_dir else None
        if path is not None and path.is_file():
            cached = msgpack.unpackb(path.read_bytes(), raw=False)
            if wire.tokenizer_id(cached["data"]) == wanted:
                return cached["data"], cached["special"]
        sock.sendall(wire.pack({"type": "tokenizer"}))
        frame = _read_frame(sock, reader)
        data = frame.get("data")
        if frame.get("type") != "tokenizer" or not isinstance(data, bytes) or wire.tokenizer_id(data) != wanted:
            raise EngineUnavailable("the engine sent no valid tokenizer")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(".tmp")
            staging.write_bytes(msgpack.packb({"data": data, "special": frame["special"]}, use_bin_type=True))
            staging.replace(path)
        return data, dict(frame["special"])

    def _read_loop(self, sock: socket.socket, reader: wire.FrameReader) -> None:
        why = "the engine closed the connection"
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                for item in reader.feed(data):
                    if isinstance(item, wire.ProtocolError):
                        raise item
                    self._route(wire.unpack_body(item))
        except (OSError, wire.ProtocolError) as exc:
            why = f"connection to the engine lost: {exc}"
        self._lost(sock, why)

    def _route(self, frame: dict[str, Any]) -> None:
        request_id = frame.get("id")
        with self._lock:
            stream = self._streams.get(request_id) if isinstance(request_id, str) else None
            if stream is not None and frame["type"] in ("done", "error"):
                self._streams.pop(str(request_id), None)
        if stream is not None:
            stream.put(frame)
        elif request_id is None:
            self._replies.put(frame)  # status, pong, or an error about the connection
        else:
            log.debug("dropping a %s frame for a request that has ended", frame.get("type"))

    def _lost(self, sock: socket.socket, why: str) -> None:
        with self._lock:
            if self._sock is not sock:
                return
            self._sock = None
            streams, self._streams = self._streams, {}
            start = not self._closed and not self._reconnecting
            self._reconnecting = self._reconnecting or start
        self._connected.clear()
        try:
            sock.close()
        except OSError:
            pass
        for request_id, stream in streams.items():
            stream.put({"type": "done", "id": request_id, "finish": "error", "message": why})
        if start:
            log.warning("%s; reconnecting", why)
            self.on_state("down", why)
            threading.Thread(target=self._reconnect, name="tabfill-engine-reconnect", daemon=True).start()

    def _reconnect(self) -> None:
        delay = BACKOFF_FIRST_S
        previous = self.welcome
        while not self._closed:
            time.sleep(delay)
            try:
                welcome = self._connect_once()
            except (OSError, EngineUnavailable, ValueError, KeyError) as exc:
                log.debug("reconnect failed: %s", exc)
                delay = min(BACKOFF_MAX_S, delay * 2)
                continue
            with self._lock:
                self._reconnecting = False
            self.reconnects += 1
            if previous is not None and welcome.tokenizer_id != previous.tokenizer_id:
                log.warning("the engine now serves %s with another tokenizer; restart the editor's server", welcome.model)
            self.on_state("up", f"reconnected to the engine at {self.url}")
            return

    # ---------------------------------------------------------------- requests
    def open_stream(self, frame: dict[str, Any]) -> queue.Queue[dict[str, Any]]:
        """Send a generate frame; its delta/done/error frames arrive in the returned queue (at once a
        done{finish: "error"} when there is no connection)."""
        stream: queue.Queue[dict[str, Any]] = queue.Queue()
        request_id = frame["id"]
        with self._lock:
            sock = self._sock
            if sock is not None:
                self._streams[request_id] = stream
        if sock is None or not self._send(sock, frame):
            with self._lock:
                self._streams.pop(request_id, None)
            stream.put({"type": "done", "id": request_id, "finish": "error", "message": "no connection to the engine"})
        return stream

    def cancel(self, request_id: str) -> None:
        with self._lock:
            sock = self._sock if request_id in self._streams else None
        if sock is not None:
            self._send(sock, {"type": "cancel", "id": request_id})

    def send(self, frame: dict[str, Any]) -> bool:
        """Send a frame that gets no answer (warm); False when there is no connection."""
        with self._lock:
            sock = self._sock
        return sock is not None and self._send(sock, frame)

    def request(self, frame: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        """A frame without an id (status, ping) and its answer; raises EngineUnavailable."""
        with self._lock:
            sock = self._sock
        try:
            while True:  # NOTE: an error about an earlier id-less frame (a warm) is not this answer
                self._replies.get_nowait()
        except queue.Empty:
            pass
        if sock is None or not self._send(sock, frame):
            raise EngineUnavailable("no connection to the engine")
        try:
            return self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise EngineUnavailable("the engine did not answer") from None

    def _send(self, sock: socket.socket, frame: dict[str, Any]) -> bool:
        try:
            with self._send_lock:
                sock.sendall(wire.pack(frame))
            return True
        except OSError as exc:
            self._lost(sock, f"connection to the engine lost: {exc}")
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._lost(sock, "closed")


def _read_frame(sock: socket.socket, reader: wire.FrameReader) -> dict[str, Any]:
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise EngineUnavailable("the engine closed the connection")
        items = reader.feed(data)
        if items:
            if len(items) > 1:
                raise EngineUnavailable("unexpected frames during the handshake")
            item = items[0]
            if isinstance(item, wire.ProtocolError):
                raise EngineUnavailable(item.message)
            return wire.unpack_body(item)
