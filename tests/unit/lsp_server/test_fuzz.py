"""Fuzzed LSP traffic over the stdio path (the server in this process, a fake model): the server never dies,
every request in a readable frame gets a result or a JSON-RPC error, and each document is the replay of
its edits. The same strategies drive `python -m bench.soak` against the real `tabfill serve`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from bench.lsp_fuzz import Traffic, answered, frame, sessions
from tests.pipe_server import PipeServer
from tests.unit.completion.test_continuations import SlowSource

EXAMPLES = itertools.count()


@pytest.fixture(scope="module")
def pipe() -> Iterator[PipeServer]:
    server = PipeServer(SlowSource())
    server.start()
    yield server
    server.close()


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=sessions)
def test_fuzzed_traffic_is_answered_and_documents_replay(pipe: PipeServer, steps: list[tuple[Any, ...]]) -> None:
    example = next(EXAMPLES)
    traffic = Traffic(f"file:///fuzz/{example}/doc", next_id=(example + 1) * 1_000_000)  # ids unique across examples
    frames = [data for item in steps for data in traffic.frames(item)]
    checks = traffic.checks()
    frames += [frame({"id": check_id, "method": "tabfill/status", "params": {"textDocument": {"uri": uri}}}) for check_id, uri, _ in checks]
    pipe.send(*frames)
    answers = pipe.wait(traffic.expected + [check_id for check_id, _, _ in checks], timeout=60)
    assert pipe.thread.is_alive()
    unanswered = [i for i in traffic.expected if not answered(answers[i])]
    assert unanswered == []
    internal = [answers[i]["error"] for i in traffic.expected if answers[i].get("error", {}).get("code") == -32603]
    assert internal == []
    for check_id, uri, expected in checks:
        document = answers[check_id]["result"]["document"]
        assert (document or {}).get("sha256", "") == expected, uri


def test_an_edit_ending_past_the_line_end_is_applied_as_sent(pipe: PipeServer) -> None:
    """Found by the fuzz: pygls' own document copy clamped the range end (character 1000 on the line "a") to
    the line's last character in place, before tabfill's handler saw it, so the "a" was never deleted."""
    traffic = Traffic("file:///fuzz/past-line-end/doc", next_id=9_000_000_000)
    steps = [("open", 1, "python", "a"), ("change", 1, 5, [(0.0, 0.0, "", "ok"), (0.5, 0.0, "", "past line end")])]
    frames = [data for item in steps for data in traffic.frames(item)]
    (check_id, uri, expected), = [check for check in traffic.checks() if "doc1" in check[1]]
    pipe.send(*frames, frame({"id": check_id, "method": "tabfill/status", "params": {"textDocument": {"uri": uri}}}))
    document = pipe.wait([check_id], timeout=60)[check_id]["result"]["document"]
    assert document["length"] == 0
    assert document["sha256"] == expected
