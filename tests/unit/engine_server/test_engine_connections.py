"""The engine server over real sockets with a fake batched engine: auth, bad input, tenancy, scheduling."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from tabfill.completion import wire
from tests.unit.engine_server.fakes import collect, engine_server, generate_frame, hello, receive, send


def test_hello_gets_welcome_with_limits_and_a_generate_streams_deltas_then_done(tmp_path: Path) -> None:
    with engine_server(tmp_path) as running:
        sock = running.connect()
        send(sock, {"type": "hello", "token": running.tokens["alice"], "client": "test", "protocol": 1})
        welcome = receive(sock)
        assert welcome is not None
        assert (welcome["type"], welcome["model"], welcome["vocab_size"], welcome["tenant"]) == ("welcome", "fake-model", 100, "alice")
        assert welcome["limits"]["max_frame_bytes"] == 4096 and welcome["limits"]["max_new_tokens"] == 64
        send(sock, {"type": "tokenizer"})
        tokenizer = receive(sock)
        assert tokenizer is not None and wire.tokenizer_id(tokenizer["data"]) == welcome["tokenizer_id"]
        send(sock, generate_frame("r1", [5, 6, 7], 3))
        deltas, done = collect(sock, "r1")
        assert [d["token_ids"] for d in deltas] == [[8], [9], [10]]
        assert "".join(d["text"] for d in deltas) == "8,9,10,"
        assert done["finish"] == "length" and done["generated_tokens"] == 3 and done["prompt_tokens"] == 3
        assert set(done["timings"]) == {"queue_ms", "first_ms", "total_ms"}


def test_no_hello_within_the_timeout_is_unauthorized_and_closed(tmp_path: Path) -> None:
    with engine_server(tmp_path) as running:
        sock = running.connect()
        started = time.monotonic()
        error = receive(sock)
        assert error is not None and error["code"] == wire.UNAUTHORIZED
        assert 0.9 <= time.monotonic() - started < 5
        assert receive(sock) is None  # closed


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "hello", "token": "alice.wrong", "protocol": 1}, wire.UNAUTHORIZED),
        ({"type": "hello", "token": "nobody.x", "protocol": 1}, wire.UNAUTHORIZED),
        ({"type": "generate", "id": "r1", "prompt": [1], "max_new_tokens": 1}, wire.UNAUTHORIZED),
        ({"type": "hello", "token": "x", "protocol": 2}, wire.VERSION),
    ],
)
def test_a_bad_hello_is_a_typed_error_and_the_connection_closes(tmp_path: Path, frame, code) -> None:
    with engine_server(tmp_path) as running:
        sock = running.connect()
        send(sock, frame)
        error = receive(sock)
        assert error is not None and (error["type"], error["code"]) == ("error", code)
        assert receive(sock) is None


def test_bad_frames_get_typed_errors_and_the_connections_other_requests_are_unaffected(tmp_path: Path) -> None:
    with engine_server(tmp_path, step_delay_s=0.01) as running:
        sock = hello(running)
        send(sock, generate_frame("long", [1, 2], 40))
        # over the size limit, malformed msgpack, unknown type, ids outside the vocabulary, absurd max_new_tokens
        sock.sendall(struct.pack(">I", 10_000) + b"z" * 10_000)
        sock.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        send(sock, {"type": "launch_missiles", "id": "x"})
        send(sock, generate_frame("oov", [1, 100]))
        send(sock, generate_frame("absurd", [1, 2], 10**12))
        send(sock, generate_frame("long", [1, 2], 4))  # its id is already running
        errors = []
        deltas = []
        while True:
            frame = receive(sock)
            assert frame is not None
            if frame["type"] == "error":
                errors.append((frame["code"], frame.get("id")))
            elif frame["type"] == "delta":
                deltas.append(frame)
            elif frame["type"] == "done":
                break
        assert errors == [
            (wire.TOO_LARGE, None), (wire.BAD_REQUEST, None), (wire.BAD_REQUEST, "x"),
            (wire.BAD_REQUEST, "oov"), (wire.BAD_REQUEST, "absurd"), (wire.BAD_REQUEST, "long"),
        ]
        assert frame["id"] == "long" and frame["finish"] == "length" and len(deltas) == 40
        other = hello(running, "bob")  # and the engine serves everyone else
        send(other, generate_frame("b1", [3], 2))
        assert collect(other, "b1")[1]["finish"] == "length"


def test_tenants_do_not_share_prefix_hits(tmp_path: Path) -> None:
    with engine_server(tmp_path) as running:
        alice, bob = hello(running, "alice"), hello(running, "bob")
        prompt = list(range(1, 30))
        send(alice, generate_frame("a1", prompt, 1))
        assert collect(alice, "a1")[1]["cached_tokens"] == 0
        send(bob, generate_frame("b1", prompt, 1))
        assert collect(bob, "b1")[1]["cached_tokens"] == 0  # alice's prompt gives bob nothing
        send(alice, generate_frame("a2", prompt, 1))
        assert collect(alice, "a2")[1]["cached_tokens"] == len(prompt) - 1  # alice's own prompt is a hit


def test_a_newer_request_for_a_document_supersedes_the_older_one(tmp_path: Path) -> None:
    with engine_server(tmp_path, step_delay_s=0.01) as running:
        sock = hello(running)
        send(sock, generate_frame("old", [1], 60, document="file:///a.py"))
        send(sock, generate_frame("other", [1], 3, document="file:///b.py"))
        send(sock, generate_frame("new", [2], 3, document="file:///a.py"))
        done = {}
        while len(done) < 3:
            frame = receive(sock)
            assert frame is not None
            if frame["type"] == "done":
                done[frame["id"]] = frame["finish"]
        assert done == {"old": "superseded", "other": "length", "new": "length"}


def test_cancel_ends_the_request_and_frees_its_slot(tmp_path: Path) -> None:
    with engine_server(tmp_path, slots=1, step_delay_s=0.005) as running:
        sock = hello(running)
        send(sock, generate_frame("long", [1], 64))
        send(sock, generate_frame("queued", [2], 2))
        assert receive(sock)["id"] == "long"  # type: ignore[index]  # it is running
        send(sock, {"type": "cancel", "id": "long"})
        assert collect(sock, "long")[1]["finish"] == "cancelled"
        assert collect(sock, "queued")[1]["finish"] == "length"
        send(sock, {"type": "status"})
        status = receive(sock)
        while status is not None and status["type"] != "status":
            status = receive(sock)
        assert status is not None and status["scheduler"]["running"] == 0 and status["scheduler"]["queued"] == 0


def test_per_tenant_limits_answer_busy_for_that_tenant_only(tmp_path: Path) -> None:
    with engine_server(tmp_path, step_delay_s=0.01, limits={"alice": (1, 3)}) as running:
        alice, bob = hello(running, "alice"), hello(running, "bob")
        send(alice, generate_frame("a1", [1], 30))
        send(alice, generate_frame("a2", [1], 3))  # over alice's one concurrent request
        send(bob, generate_frame("b1", [1], 3))
        busy = receive(alice)
        while busy is not None and busy["type"] != "error":
            busy = receive(alice)
        assert busy is not None and (busy["code"], busy["id"]) == (wire.BUSY, "a2")
        assert collect(bob, "b1")[1]["finish"] == "length"
        assert collect(alice, "a1")[1]["finish"] == "length"
        send(alice, generate_frame("a3", [1], 1))
        assert collect(alice, "a3")[1]["finish"] == "length"
        send(alice, generate_frame("a4", [1], 1))  # the third served request within a minute (refused ones do not count)
        assert collect(alice, "a4")[1]["finish"] == "length"
        send(alice, generate_frame("a5", [1], 1))  # over rpm=3
        error = collect(alice, "a5")[1]
        assert (error["type"], error["code"]) == ("error", wire.BUSY)


def test_a_full_queue_answers_busy(tmp_path: Path) -> None:
    with engine_server(tmp_path, slots=1, max_queue=2, step_delay_s=0.02) as running:
        sock = hello(running)
        send(sock, generate_frame("r0", [1], 20))
        assert receive(sock)["type"] == "delta"  # type: ignore[index]  # r0 runs
        for i in range(1, 4):
            send(sock, generate_frame(f"r{i}", [1], 20))
        finishes = {}
        while len(finishes) < 4:
            frame = receive(sock)
            assert frame is not None
            if frame["type"] in ("done", "error"):
                finishes[frame["id"]] = frame.get("finish") or frame["code"]
        # one runs, two wait, the fourth is refused at once
        assert finishes == {"r0": "length", "r1": "length", "r2": "length", "r3": wire.BUSY}
