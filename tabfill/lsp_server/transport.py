"""Reading LSP frames from stdio: whole chunks at once, finding the next frame again after a malformed one.

pygls reads stdin one header line and one body at a time, each through a thread-pool round trip, and
yields to the event loop between messages: in a burst, every queued request then starts its work before
the `$/cancelRequest` or the newer request behind it has even been read. Here the pipe is read by the event
loop itself (`connect_read_pipe`), each chunk is split into every whole frame it holds, and the frames are
handled in order before any handler's task runs; a handler that yields once sees what else has arrived
(`TabfillServer.superseded`).

A frame is `Content-Length: N\\r\\n` (other headers ignored), an empty line, then N bytes of JSON. A header
block without a valid length, or garbage between frames, is skipped up to the next `Content-Length`; a
body that is not JSON but a JSON value followed by the start of a frame (its length was too long and took
in the next frame's first bytes) ends there, and that frame is read as the next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import BinaryIO

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
READ_CHUNK = 1 << 16
_MARK = b"content-length"
_HEADER_LINE = re.compile(rb"([!-9;-~]+)[ \t]*:[ \t]*(.*?)[ \t]*")
_DIGITS = re.compile(rb"[0-9]{1,12}")


def content_length(block: bytes) -> int | None:
    """The Content-Length of a header block (the lines before the empty line), None when it is malformed."""
    length = None
    for line in block.split(b"\r\n"):
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            return None
        if match.group(1).lower() == _MARK:
            if length is not None or _DIGITS.fullmatch(match.group(2)) is None:
                return None
            length = int(match.group(2))
    return length


class FrameParser:
    """Bytes in, whole message bodies out; what cannot be a frame is skipped and counted (`malformed`)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.malformed = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        bodies = []
        while (body := self._next()) is not None:
            bodies.append(body)
        return bodies

    def _next(self) -> bytes | None:
        buffer = self._buffer
        while buffer:
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
            if end < 0:
                if len(buffer) <= MAX_HEADER_BYTES:
                    return None  # the header block is not complete yet
                self._skip("no end of headers within 8 KB")
                continue
            length = content_length(bytes(buffer[:end]))
            if length is None or length > MAX_BODY_BYTES:
                self._skip(f"malformed header {bytes(buffer[:min(end, 80)])!r}")
                continue
            start = end + 4
            if len(buffer) < start + length:
                return None
            body = bytes(buffer[start : start + length])
            swallowed = _swallowed_frame(body)
            if swallowed is not None:  # the next frame starts inside this body: its length was too long
                body = body[:swallowed]
            del buffer[: start + len(body)]
            return body
        return None

    def _skip(self, why: str) -> None:
        """Drop bytes up to the next `Content-Length` (at least one byte, so this always moves on)."""
        self.malformed += 1
        buffer = self._buffer
        lower = bytes(buffer).lower()
        index = lower.find(_MARK, 1)
        if index < 0:  # keep only a first part of a `Content-Length` that may end the buffer
            partial = _partial_mark(lower[1:])
            index = len(lower) if partial is None else partial + 1
        dropped = index
        log.warning("skipped %d bytes of input: %s", dropped, why)
        del buffer[:dropped]


def _swallowed_frame(body: bytes) -> int | None:
    """Where the next frame starts inside a body that is not JSON (its length was too long and took in the
    next frame's first bytes): after the body's JSON value when `Content-Length` or a first part of it
    follows, else at a `Content-Length` inside it, else at a first part of one that ends it. None when the
    body is JSON, or no frame starts in it."""
    if body.rstrip()[-1:] in (b"}", b"]") and b"ontent-" not in body:
        return None  # NOTE: the usual case, without parsing the body twice
    try:
        json.loads(body)
        return None
    except ValueError:
        pass
    lower = body.lower()
    try:
        text = body.decode("utf-8")
        end = len(text[: json.JSONDecoder().raw_decode(text, len(text) - len(text.lstrip()))[1]].encode("utf-8"))
        if _MARK.startswith(lower[end:]) or lower[end:].startswith(_MARK):
            return end
    except ValueError:
        pass
    index = lower.find(_MARK)
    return index if index >= 0 else _partial_mark(lower)


def _partial_mark(lower: bytes) -> int | None:
    """Where a first part of `content-length` ends `lower` (the longest), None when none does."""
    for size in range(min(len(_MARK) - 1, len(lower)), 0, -1):
        if lower.endswith(_MARK[:size]):
            return len(lower) - size
    return None


async def read_frames(stdin: BinaryIO, parser: FrameParser, handle: Callable[[bytes], None]) -> None:
    """Feed stdin to `parser` and `handle` each body, until end of input."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def feed(data: bytes) -> None:
        for body in parser.feed(data):
            handle(body)

    class Pipe(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            feed(data)

        def eof_received(self) -> bool | None:
            if not ended.done():
                ended.set_result(None)
            return None

        def connection_lost(self, exc: Exception | None) -> None:
            if not ended.done():
                ended.set_result(None)

    try:
        transport, _ = await loop.connect_read_pipe(Pipe, stdin)
    except (ValueError, OSError):  # not a pipe, socket or character device (a regular file): read it in a thread
        read = getattr(stdin, "read1", stdin.read)
        while data := await loop.run_in_executor(None, read, READ_CHUNK):
            feed(data)
        return
    try:
        await ended
    finally:
        transport.close()
