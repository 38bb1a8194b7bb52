"""Frames from bytes: split anywhere, malformed headers skipped to the next frame, overlong lengths undone."""

from __future__ import annotations

import json

from tabfill.lsp_server.transport import MAX_HEADER_BYTES, FrameParser, content_length


def frame(body: bytes, length: int | None = None, header: bytes | None = None) -> bytes:
    head = header if header is not None else b"Content-Length: %d\r\n" % (len(body) if length is None else length)
    return head + b"\r\n" + body


def feed_bytewise(parser: FrameParser, data: bytes, size: int = 1) -> list[bytes]:
    return [body for index in range(0, len(data), size) for body in parser.feed(data[index : index + size])]


def is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


BODIES = [json.dumps({"jsonrpc": "2.0", "id": i, "method": "m", "params": {"text": "é" * i}}).encode() for i in range(4)]


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    data = b"".join(frame(body) for body in BODIES)
    assert FrameParser().feed(data) == BODIES
    assert feed_bytewise(FrameParser(), data) == BODIES
    with_type = frame(BODIES[0], header=b"content-length:%d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n" % len(BODIES[0]))
    assert FrameParser().feed(with_type) == [BODIES[0]]


def test_malformed_headers_and_garbage_are_skipped_to_the_next_frame() -> None:
    garbage = [
        frame(b"{}", header=b"Content-Length: abc\r\n"),
        frame(b"{}", header=b"Content-Type: x\r\n"),  # no length
        b"\x00\xffjunk\r\n\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",  # two lengths
        frame(b"{}", header=b"Content-Length: 99999999999999\r\n"),  # larger than any message may be
        b"HTTP/1.1 200 OK garbage before a frame",
    ]
    data = b"".join(g + frame(body) for g, body in zip(garbage, BODIES * 2))
    for size in (1, 7, len(data)):
        parser = FrameParser()
        bodies = feed_bytewise(parser, data, size)
        # what is left of a malformed frame may come out as a body that is not JSON (answered with a parse error)
        assert [body for body in bodies if is_json(body)] == (BODIES * 2)[: len(garbage)]
        assert len(bodies) <= 2 * len(garbage) and parser.malformed >= len(garbage) - 1
    runaway = FrameParser()
    assert runaway.feed(b"x" * (MAX_HEADER_BYTES + 100)) == [] and runaway.malformed == 1  # no end of headers: dropped
    assert runaway.feed(frame(BODIES[1])) == [BODIES[1]]


def test_a_length_too_long_gives_the_next_frame_back_and_too_short_costs_one_message() -> None:
    for extra in range(1, 30):  # the overlong frame took in `extra` bytes of the next frame's header or body
        data = frame(BODIES[1], len(BODIES[1]) + extra) + frame(BODIES[2]) + frame(BODIES[3])
        assert feed_bytewise(FrameParser(), data) == [BODIES[1], BODIES[2], BODIES[3]], extra
    short = frame(BODIES[1], len(BODIES[1]) - 5) + frame(BODIES[2])
    parser = FrameParser()
    assert parser.feed(short) == [BODIES[1][:-5], BODIES[2]]  # the cut body is not JSON (a parse error); the next is whole


def test_content_length_header_rules() -> None:
    assert content_length(b"Content-Length: 12") == 12
    assert content_length(b"CONTENT-LENGTH:12 ") == 12
    assert content_length(b"Content-Length: -1") is None
    assert content_length(b"Content-Length: 1.5") is None
    assert content_length(b"Content-Type: text") is None
    assert content_length(b"Content-Length: 3\r\nno colon") is None
