"""The team engine's wire format (docs/ENGINE_PROTOCOL.md): msgpack maps in length-prefixed frames.

A frame is a 4-byte big-endian length followed by that many bytes of one msgpack map with a "type" key.
This module has no I/O of its own: it packs frames, splits a byte stream into frames and checks each
incoming frame against its schema, raising `ProtocolError` with the typed error code to answer with.
Both ends use it: the engine (tabfill.engine_server) and the front-end (tabfill.completion.remote); it lives
in completion/ because the engine imports completion/, never the other way.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 1 << 20  # 1 MiB; the tokenizer frame (engine -> front-end) is exempt on the client
HEADER = struct.Struct(">I")
HELLO_TIMEOUT_S = 5.0

# Typed error codes (error.code).
UNAUTHORIZED = "unauthorized"
BUSY = "busy"
TOO_LARGE = "too_large"
BAD_REQUEST = "bad_request"
VERSION = "version"
INTERNAL = "internal"
UNAVAILABLE = "unavailable"  # a request the engine cannot run: its model server is unreachable (a gateway)
ERROR_CODES = (UNAUTHORIZED, BUSY, TOO_LARGE, BAD_REQUEST, VERSION, INTERNAL, UNAVAILABLE)

# Optional frames this engine takes, listed in welcome.features (a front-end sends them only when listed).
FEATURES = ("warm",)

# Finish reasons of a done frame.
FINISHES = ("stop", "length", "eos", "cancelled", "superseded", "error")

MAX_ID_CHARS = 128
MAX_DOCUMENT_KEY_CHARS = 256
MAX_CORPUS_TOKENS = 4096


class ProtocolError(Exception):
    """A frame that cannot be served: `code` is the typed error to send, `request_id` the generate it concerns
    (None: the connection's), `fatal` when the connection must close (the stream is no longer in sync)."""

    def __init__(self, code: str, message: str, request_id: str | None = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.fatal = fatal


def pack(frame: Mapping[str, Any]) -> bytes:
    body = bytes(msgpack.packb(frame, use_bin_type=True))
    return HEADER.pack(len(body)) + body


def tokenizer_id(tokenizer_json: bytes) -> str:
    """The id of a tokenizer: the start of its tokenizer.json's sha256 (front-ends cache by it and check it)."""
    return hashlib.sha256(tokenizer_json).hexdigest()[:24]


def error_frame(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        frame["id"] = request_id
    return frame


def unpack_body(body: bytes) -> dict[str, Any]:
    """One frame body -> its map. Malformed msgpack or a non-map is a (non-fatal) bad_request: the length
    prefix already delimited it, so the stream stays in sync."""
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, ValueError...)
        raise ProtocolError(BAD_REQUEST, f"malformed msgpack: {type(exc).__name__}") from None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ProtocolError(BAD_REQUEST, "a frame must be a map with a string 'type'")
    return value


class FrameReader:
    """Splits a byte stream into frame bodies. Feed bytes, take complete bodies in order. A frame whose
    length is over `max_frame_bytes` becomes a (non-fatal) too_large error in its place: its body is skipped
    as it arrives, never buffered, and the frames after it are read as usual."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized body still to discard

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        self._buffer += data
        items: list[bytes | ProtocolError] = []
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    break
            if len(self._buffer) < HEADER.size:
                break
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_frame_bytes:
                del self._buffer[: HEADER.size]
                self._skip = length
                items.append(ProtocolError(TOO_LARGE, f"frame of {length} bytes is over the limit of {self.max_frame_bytes}"))
                continue
            if len(self._buffer) < HEADER.size + length:
                break
            items.append(bytes(self._buffer[HEADER.size : HEADER.size + length]))
            del self._buffer[: HEADER.size + length]
        return items


# ----------------------------------------------------------------------------- schema checks


def _field(frame: Mapping[str, Any], name: str, kind: type | tuple[type, ...], request_id: str | None = None, default: Any = ...) -> Any:
    if name not in frame:
        if default is ...:
            raise ProtocolError(BAD_REQUEST, f"{frame.get('type')}: missing field {name!r}", request_id)
        return default
    value = frame[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolError(BAD_REQUEST, f"{frame.get('type')}: field {name!r} must not be a boolean", request_id)
    if not isinstance(value, kind):
        raise ProtocolError(BAD_REQUEST, f"{frame.get('type')}: field {name!r} has the wrong type ({type(value).__name__})", request_id)
    return value


@dataclass(frozen=True)
class Hello:
    token: str
    client: str
    protocol: int


def parse_hello(frame: Mapping[str, Any]) -> Hello:
    if frame.get("type") != "hello":
        raise ProtocolError(UNAUTHORIZED, "the first frame must be hello", fatal=True)
    protocol = _field(frame, "protocol", int, default=0)
    if protocol != PROTOCOL_VERSION:
        raise ProtocolError(VERSION, f"protocol {protocol} is not supported (engine speaks {PROTOCOL_VERSION})", fatal=True)
    token = frame.get("token")
    if not isinstance(token, str) or not token or len(token) > 512:
        raise ProtocolError(UNAUTHORIZED, "missing or invalid token", fatal=True)
    client = frame.get("client")
    return Hello(token, client[:200] if isinstance(client, str) else "", protocol)


@dataclass(frozen=True)
class Stop:
    single_line: bool = True
    block_indent: int = 0
    max_lines: int = 1
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Generate:
    """A checked generate frame. `prompt` ids are checked against the vocabulary by the engine."""

    id: str
    prompt: tuple[int, ...]
    max_new_tokens: int
    stop: Stop
    healing_text: str
    deadline_ms: int
    priority: int
    document: str
    corpus: tuple[int, ...]


def _ids(value: Any, name: str, request_id: str | None, limit: int, vocab_size: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ProtocolError(BAD_REQUEST, f"generate: {name} must be a list of token ids", request_id)
    if len(value) > limit:
        raise ProtocolError(TOO_LARGE, f"generate: {name} has {len(value)} tokens, the limit is {limit}", request_id)
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            raise ProtocolError(BAD_REQUEST, f"generate: {name} holds {token!r}, outside the vocabulary [0, {vocab_size})", request_id)
    return tuple(value)


def parse_generate(frame: Mapping[str, Any], *, vocab_size: int, max_prompt_tokens: int, max_new_tokens: int) -> Generate:
    raw_id = frame.get("id")
    if not isinstance(raw_id, str) or not raw_id or len(raw_id) > MAX_ID_CHARS:
        raise ProtocolError(BAD_REQUEST, f"generate: 'id' must be a string of 1-{MAX_ID_CHARS} characters")
    request_id = raw_id
    prompt = _ids(_field(frame, "prompt", (list, tuple), request_id), "prompt", request_id, max_prompt_tokens, vocab_size)
    if not prompt:
        raise ProtocolError(BAD_REQUEST, "generate: the prompt is empty", request_id)
    wanted = _field(frame, "max_new_tokens", int, request_id)
    if not 1 <= wanted <= max_new_tokens:
        raise ProtocolError(BAD_REQUEST, f"generate: max_new_tokens must be in [1, {max_new_tokens}], got {wanted}", request_id)
    raw_stop = _field(frame, "stop", dict, request_id, default={})
    stop = Stop(
        single_line=bool(_field(raw_stop, "single_line", bool, request_id, default=True)),
        block_indent=_field(raw_stop, "block_indent", int, request_id, default=0),
        max_lines=_field(raw_stop, "max_lines", int, request_id, default=1),
        token_ids=_ids(raw_stop.get("token_ids", []), "stop.token_ids", request_id, 64, vocab_size),
    )
    if not (0 <= stop.block_indent <= 1024 and 1 <= stop.max_lines <= 1024):
        raise ProtocolError(BAD_REQUEST, "generate: stop.block_indent or stop.max_lines out of range", request_id)
    healing = _field(frame, "healing_text", str, request_id, default="")
    deadline_ms = _field(frame, "deadline_ms", int, request_id, default=0)
    priority = _field(frame, "priority", int, request_id, default=0)
    document = _field(frame, "document", str, request_id, default="")
    if len(healing) > 256 or not 0 <= deadline_ms <= 600_000 or not -100 <= priority <= 100 or len(document) > MAX_DOCUMENT_KEY_CHARS:
        raise ProtocolError(BAD_REQUEST, "generate: healing_text, deadline_ms, priority or document out of range", request_id)
    corpus = _ids(frame.get("corpus", []), "corpus", request_id, MAX_CORPUS_TOKENS, vocab_size)
    return Generate(request_id, prompt, wanted, stop, healing, deadline_ms, priority, document, corpus)


@dataclass(frozen=True)
class Warm:
    """A checked warm frame: a prompt expected soon, to prefill into the tenant's prefix cache."""

    prompt: tuple[int, ...]
    document: str


def parse_warm(frame: Mapping[str, Any], *, vocab_size: int, max_prompt_tokens: int) -> Warm:
    prompt = _ids(_field(frame, "prompt", (list, tuple)), "warm prompt", None, max_prompt_tokens, vocab_size)
    document = _field(frame, "document", str, default="")
    if len(prompt) < 2 or len(document) > MAX_DOCUMENT_KEY_CHARS:
        raise ProtocolError(BAD_REQUEST, "warm: the prompt needs 2 tokens or more, the document key at most 256 characters")
    return Warm(prompt, document)


def parse_cancel(frame: Mapping[str, Any]) -> str:
    request_id = frame.get("id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_CHARS:
        raise ProtocolError(BAD_REQUEST, "cancel: 'id' must be a non-empty string")
    return request_id
