"""A real `tabfill engine` process with the default model, driven by the tcp:// token source and raw
frames. Marked `engine` (slow; run in .ci/run with `pytest -m ''`)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabfill.completion import wire
from tabfill.completion.models import pull_default
from tabfill.completion.remote import RemoteSource
from tabfill.completion.types import CancelToken, Deadline, Generation, Prompt, StopRule
from bench.engine_process import EngineProcess, make_tokens, start_engine
from tests.unit.engine_server.fakes import collect, generate_frame, receive, send

pytestmark = pytest.mark.engine

CODE = [
    "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n        return handle.",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(",
    "numbers = [1, 2, 3, 4]\nsquares = [n * n for n in numbers]\ntotal = sum(",
    "for index, name in enumerate(names):\n    print(",
    "def is_prime(n):\n    for k in range(2, n):\n        if n % k == 0:\n            return",
]


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    pull_default()
    path = tmp_path_factory.mktemp("engine") / "tokens"
    return path, make_tokens(path, "alice", "bob")


@pytest.fixture(scope="module")
def engine(tenants: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    process = start_engine(tenants[0], tmp_path_factory.mktemp("engine-log") / "engine.log", "--slots", "4")
    yield process
    process.stop()


def source(engine: EngineProcess, token: str, **kwargs) -> RemoteSource:
    return RemoteSource(engine.url, token, **kwargs)


def prompt_of(remote: RemoteSource, text: str, new_tokens: int = 16) -> Prompt:
    ids = remote.tokenizer(text, add_special_tokens=False)["input_ids"]
    return Prompt(tuple(ids), new_tokens, StopRule(single_line=False, max_lines=3))


def test_tenant_b_gets_no_cache_hit_from_tenant_a_prompt(engine: EngineProcess, tenants) -> None:
    _, tokens = tenants
    alice, bob = source(engine, tokens["alice"]), source(engine, tokens["bob"])
    try:
        text = "\n".join(CODE) * 2  # > 2 prefix blocks
        first = alice.generate(prompt_of(alice, text), CancelToken(), Deadline())
        again = alice.generate(prompt_of(alice, text), CancelToken(), Deadline())
        other = bob.generate(prompt_of(bob, text), CancelToken(), Deadline())
        assert first.cached_tokens == 0
        assert again.cached_tokens >= 64  # alice's own prompt is reused
        assert other.cached_tokens == 0  # bob gets nothing from alice's
        assert other.token_ids == first.token_ids  # and the same answer
    finally:
        alice.close()
        bob.close()


def _single_stream(prompts: list[Prompt]) -> list[tuple[int, ...]]:
    """The in-process engine's greedy answers, one at a time (the reference)."""
    import torch

    from tabfill.completion.engine import Engine, EngineInfo
    from tabfill.completion.models import load_model
    from tabfill.completion.runners import make_runner

    loaded = load_model("default", "cpu")
    runner = make_runner(loaded.model, torch.device("cpu"), max_tokens=1024, quantize=None, lean=True)
    engine = Engine(loaded.model, loaded.tokenizer, "cpu", EngineInfo("default", "cpu", "fp32", 0, "x"), runner=runner)
    return [engine.generate(p, CancelToken(), Deadline()).token_ids for p in prompts]


def test_concurrent_output_equals_single_stream_greedy(engine: EngineProcess, tenants) -> None:
    _, tokens = tenants
    remotes = [source(engine, tokens["alice"]), source(engine, tokens["bob"])]
    try:
        prompts = [prompt_of(remotes[0], text) for text in CODE]
        results: dict[int, Generation] = {}

        def run(index: int) -> None:
            results[index] = remotes[index % 2].generate(prompts[index], CancelToken(), Deadline())

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        reference = _single_stream(prompts)
        differing = [i for i in range(len(prompts)) if results[i].token_ids != reference[i]]
        print(f"batched vs single-stream: {len(differing)} of {len(prompts)} answers differ (float ties)")
        assert all(results[i].finish_reason in ("stop", "length", "eos") for i in results)
        assert len(differing) <= 1, [(results[i].text, reference[i]) for i in differing]
    finally:
        for remote in remotes:
            remote.close()


def test_cancel_in_the_middle_frees_the_slot(engine: EngineProcess, tenants) -> None:
    _, tokens = tenants
    remote = source(engine, tokens["alice"])
    try:
        long = Prompt(prompt_of(remote, CODE[0]).token_ids, 200, StopRule(single_line=False, max_lines=200))
        cancel = CancelToken()
        threading.Timer(0.5, cancel.cancel).start()
        assert remote.generate(long, cancel, Deadline.after_ms(30_000)).finish_reason == "cancelled"
        deadline = time.monotonic() + 10
        while remote.status()["scheduler"]["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert remote.status()["scheduler"]["running"] == 0
        after = remote.generate(prompt_of(remote, CODE[2]), CancelToken(), Deadline.after_ms(30_000))
        assert after.finish_reason in ("stop", "length", "eos")
    finally:
        remote.close()


def test_a_newer_request_of_the_document_supersedes_the_running_one(engine: EngineProcess, tenants) -> None:
    _, tokens = tenants
    remote = source(engine, tokens["bob"])
    try:
        long = Prompt(prompt_of(remote, CODE[1]).token_ids, 200, StopRule(single_line=False, max_lines=200))
        first = remote.generate(long, CancelToken(), Deadline.after_ms(300), document="file:///work/stack.py")
        assert first.finish_reason == "deadline" and first.continuation is not None
        newer = remote.generate(prompt_of(remote, CODE[4]), CancelToken(), Deadline(), document="file:///work/stack.py")
        assert newer.finish_reason in ("stop", "length", "eos")
        assert remote.resume(first.continuation, CancelToken(), Deadline.after_ms(5000)).finish_reason == "cancelled"
        assert remote.last_done["finish"] == "superseded"
        assert remote.status()["scheduler"]["running"] == 0
    finally:
        remote.close()


def test_a_warmed_prompt_is_reused_by_the_next_request(engine: EngineProcess, tenants) -> None:
    _, tokens = tenants
    remote = source(engine, tokens["alice"])
    try:
        ids = prompt_of(remote, "\n".join(reversed(CODE)) * 2).token_ids  # a prompt no other test sent
        done_before = remote.status()["scheduler"]["warms"]["done"]
        remote.warm(list(ids), CancelToken(), document="file:///work/warm.py")
        deadline = time.monotonic() + 60
        while remote.status()["scheduler"]["warms"]["done"] == done_before and time.monotonic() < deadline:
            time.sleep(0.05)
        typed = remote.tokenizer(" x", add_special_tokens=False)["input_ids"]
        generation = remote.generate(Prompt((*ids, *typed), 8, StopRule()), CancelToken(), Deadline(), document="file:///work/warm.py")
        assert generation.finish_reason in ("stop", "length", "eos")
        assert generation.cached_tokens >= len(ids) - 32  # all whole 32-token blocks of the warmed prompt
    finally:
        remote.close()


def test_bad_input_gets_typed_errors_and_the_engine_serves_on(engine: EngineProcess, tenants) -> None:
    _, tokens = tenants
    silent = socket.create_connection(("127.0.0.1", engine.port), timeout=10)
    sock = socket.create_connection(("127.0.0.1", engine.port), timeout=10)
    send(sock, {"type": "hello", "token": tokens["bob"], "client": "test", "protocol": 1})
    welcome = receive(sock)
    assert welcome is not None and welcome["type"] == "welcome"
    vocab = welcome["vocab_size"]
    send(sock, generate_frame("good", [1, 2, 3], 24))
    sock.sendall(struct.pack(">I", 2 << 20) + b"\0" * (2 << 20))
    sock.sendall(struct.pack(">I", 2) + b"\xc1\xc1")
    send(sock, {"type": "format_disk"})
    send(sock, generate_frame("oov", [1, vocab]))
    send(sock, generate_frame("absurd", [1], 10**9))
    codes = []
    while True:
        frame = receive(sock, timeout=60)
        assert frame is not None
        if frame["type"] == "error":
            codes.append(frame["code"])
        if frame["type"] == "done":
            break
    assert frame["id"] == "good" and frame["finish"] in ("stop", "length", "eos")
    assert sorted(codes) == sorted([wire.TOO_LARGE, wire.BAD_REQUEST, wire.BAD_REQUEST, wire.BAD_REQUEST, wire.BAD_REQUEST])
    error = receive(silent, timeout=10)  # no hello within 5 s
    assert error is not None and error["code"] == wire.UNAUTHORIZED
    send(sock, generate_frame("after", [4, 5], 2))
    assert collect(sock, "after")[1]["finish"] in ("stop", "length", "eos")


def test_the_source_reconnects_after_the_engine_is_killed_and_restarted(tenants, tmp_path: Path) -> None:
    token_file, tokens = tenants
    first = start_engine(token_file, tmp_path / "first.log")
    states: list[str] = []
    remote = source(first, tokens["alice"], on_state=lambda state, why: states.append(state))
    restarted = None
    try:
        assert remote.generate(prompt_of(remote, CODE[3]), CancelToken(), Deadline()).finish_reason != "error"
        first.kill()
        time.sleep(0.5)
        started = time.monotonic()
        down = remote.generate(prompt_of(remote, CODE[3]), CancelToken(), Deadline.after_ms(80))
        assert (down.finish_reason, down.text) == ("error", "") and time.monotonic() - started < 0.5
        restarted = start_engine(token_file, tmp_path / "second.log", port=first.port)
        deadline = time.monotonic() + 30
        while states[-1:] != ["up"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert states == ["down", "up"]
        assert remote.generate(prompt_of(remote, CODE[3]), CancelToken(), Deadline()).finish_reason != "error"
    finally:
        remote.close()
        if restarted is not None:
            restarted.stop()
