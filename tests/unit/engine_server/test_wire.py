"""The frame format and each frame's schema checks (both ends use tabfill.completion.wire)."""

from __future__ import annotations

import msgpack
import pytest

from tabfill.completion import wire


def test_frames_split_across_reads_come_out_whole_and_in_order() -> None:
    data = wire.pack({"type": "a", "n": 1}) + wire.pack({"type": "b", "blob": b"x" * 300})
    reader = wire.FrameReader(1024)
    items = [item for i in range(0, len(data), 7) for item in reader.feed(data[i : i + 7])]
    assert [wire.unpack_body(item)["type"] for item in items] == ["a", "b"]  # type: ignore[arg-type]


def test_an_oversized_frame_becomes_one_too_large_error_and_the_next_frame_still_reads() -> None:
    reader = wire.FrameReader(100)
    big = wire.pack({"type": "generate", "blob": b"y" * 500})
    items = reader.feed(big[:50]) + reader.feed(big[50:] + wire.pack({"type": "status"}))
    assert isinstance(items[0], wire.ProtocolError) and items[0].code == wire.TOO_LARGE and not items[0].fatal
    assert wire.unpack_body(items[1]) == {"type": "status"}  # type: ignore[arg-type]
    assert len(items) == 2


@pytest.mark.parametrize("body", [b"\xc1\xc1", msgpack.packb([1, 2]), msgpack.packb({"no": "type"}), msgpack.packb({1: 2})])
def test_malformed_or_untyped_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(wire.ProtocolError) as caught:
        wire.unpack_body(body)
    assert caught.value.code == wire.BAD_REQUEST and not caught.value.fatal


def _generate(**changes):
    frame = {"type": "generate", "id": "r1", "prompt": [1, 2, 3], "max_new_tokens": 8,
             "stop": {"single_line": False, "block_indent": 4, "max_lines": 3, "token_ids": [0]},
             "healing_text": " x", "deadline_ms": 80, "priority": 0, "document": "file:///a.py", "corpus": [5, 6]}
    frame.update(changes)
    return frame


def test_a_well_formed_generate_is_parsed_whole() -> None:
    request = wire.parse_generate(_generate(), vocab_size=10, max_prompt_tokens=100, max_new_tokens=64)
    assert request == wire.Generate("r1", (1, 2, 3), 8, wire.Stop(False, 4, 3, (0,)), " x", 80, 0, "file:///a.py", (5, 6))


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"prompt": [1, 10]}, wire.BAD_REQUEST),  # outside the vocabulary
        ({"prompt": [1, -1]}, wire.BAD_REQUEST),
        ({"prompt": [1, True]}, wire.BAD_REQUEST),
        ({"prompt": []}, wire.BAD_REQUEST),
        ({"prompt": list(range(10)) * 11}, wire.TOO_LARGE),
        ({"max_new_tokens": 10**9}, wire.BAD_REQUEST),  # absurd
        ({"max_new_tokens": 0}, wire.BAD_REQUEST),
        ({"max_new_tokens": "8"}, wire.BAD_REQUEST),
        ({"stop": {"max_lines": 0}}, wire.BAD_REQUEST),
        ({"stop": {"token_ids": [99]}}, wire.BAD_REQUEST),
        ({"corpus": [1, 2, 77]}, wire.BAD_REQUEST),
        ({"deadline_ms": -5}, wire.BAD_REQUEST),
        ({"id": ""}, wire.BAD_REQUEST),
        ({"id": 7}, wire.BAD_REQUEST),
    ],
)
def test_bad_generate_frames_get_typed_errors_naming_the_request(changes, code) -> None:
    with pytest.raises(wire.ProtocolError) as caught:
        wire.parse_generate(_generate(**changes), vocab_size=10, max_prompt_tokens=100, max_new_tokens=64)
    assert caught.value.code == code
    assert not caught.value.fatal
    if isinstance(changes.get("id", "r1"), str) and changes.get("id", "r1"):
        assert caught.value.request_id == "r1"


def test_hello_checks_protocol_then_token() -> None:
    assert wire.parse_hello({"type": "hello", "token": "a.b", "protocol": 1, "client": "x"}) == wire.Hello("a.b", "x", 1)
    with pytest.raises(wire.ProtocolError) as caught:
        wire.parse_hello({"type": "hello", "token": "a.b", "protocol": 99})
    assert caught.value.code == wire.VERSION and caught.value.fatal
    with pytest.raises(wire.ProtocolError) as caught:
        wire.parse_hello({"type": "generate", "token": "a.b", "protocol": 1})
    assert caught.value.code == wire.UNAUTHORIZED
    with pytest.raises(wire.ProtocolError) as caught:
        wire.parse_hello({"type": "hello", "protocol": 1})
    assert caught.value.code == wire.UNAUTHORIZED
