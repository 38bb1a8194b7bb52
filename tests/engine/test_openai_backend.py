"""A real `tabfill engine --backend openai+http://…` process in front of a small OpenAI-compatible HTTP server
written here (vLLM's shapes: streamed /v1/completions, /tokenize, cache_salt), driven by the tcp:// token
source of two tenants. No model is loaded anywhere (the served model's tokenizer is a tiny one), so this runs
with the fast tests."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench.engine_process import EngineProcess, make_tokens, start_engine
from tabfill.completion.remote import RemoteSource
from tabfill.completion.types import CancelToken, Deadline, Prompt, StopRule
from tests.support import build_tiny_tokenizer

API_KEY = "sk-upstream-secret"
PIECES = ["ret", "urn", " x", " +", " 1"]
PROBABILITIES = [0.9, 0.99, 0.8, 0.4, 0.95]  # streamed as each piece's logprob when a request asks


@dataclass
class Upstream:
    """What the fake server saw: completion bodies, their Authorization headers, streams closed early."""

    tokenizer_dir: Path
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def completions(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for body in self.bodies if body.get("stream")]


def serve_upstream(upstream: Upstream, port: int = 0) -> ThreadingHTTPServer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(upstream.tokenizer_dir / "tokenizer.json"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": "fake-coder", "object": "model", "owned_by": "vllm"}]})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize":
                self.reply(200, {"tokens": tokenizer.encode(body["prompt"], add_special_tokens=False).ids})
                return
            if self.path != "/v1/completions":
                self.reply(404, {"error": "not found"})
                return
            with upstream.lock:
                upstream.bodies.append(body)
                upstream.headers.append(self.headers.get("Authorization", ""))
            if body.get("priority"):
                self.reply(400, {"error": {"message": "priority needs --scheduling-policy priority"}})
                return
            if not body.get("stream"):
                self.reply(200, {"choices": [{"text": "x", "finish_reason": "length"}]})
                return
            self.stream(body)

        def stream(self, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            wanted = int(body["max_tokens"])
            try:
                for index in range(wanted):
                    piece = PIECES[index] if index < len(PIECES) else " +1"
                    finish = "length" if index == wanted - 1 else None
                    choice: dict[str, Any] = {"index": 0, "text": piece, "finish_reason": finish}
                    if body.get("logprobs"):
                        logprob = math.log(PROBABILITIES[index]) if index < len(PIECES) else 0.0
                        choice["logprobs"] = {"tokens": [piece], "token_logprobs": [logprob], "text_offset": [0], "top_logprobs": None}
                    self.event({"choices": [choice]})
                    time.sleep(0.02)
                self.event({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": wanted,
                                                     "prompt_tokens_details": {"cached_tokens": 3}}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                with upstream.lock:
                    upstream.aborted.append(body["request_id"])
            self.close_connection = True

        def event(self, payload: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EngineProcess, Upstream, dict[str, str]]]:
    root = tmp_path_factory.mktemp("gateway")
    build_tiny_tokenizer().save_pretrained(root / "tokenizer")
    upstream = Upstream(root / "tokenizer")
    server = serve_upstream(upstream)
    tokens = make_tokens(root / "tokens", "alice", "bob")
    engine = start_engine(
        root / "tokens", root / "engine.log", "--backend", f"openai+http://127.0.0.1:{server.server_address[1]}/v1",
        "--backend-model", str(root / "tokenizer"), "--backend-api-key", API_KEY, "--slots", "4", timeout_s=60,
    )
    try:
        yield engine, upstream, tokens
    finally:
        engine.stop()
        server.shutdown()
    assert API_KEY not in engine.log() and "return x" not in engine.log()


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


def test_tenants_complete_through_the_gateway_each_with_its_own_cache_salt(gateway, tmp_path: Path) -> None:
    engine, upstream, tokens = gateway
    alice = RemoteSource(engine.url, tokens["alice"], cache_dir=tmp_path)
    bob = RemoteSource(engine.url, tokens["bob"], cache_dir=tmp_path)
    try:
        ids = tuple(alice.tokenizer("def add(x):\n    ", add_special_tokens=False)["input_ids"])
        before = len(upstream.completions())
        answers = [remote.generate(Prompt(ids, 5, StopRule()), CancelToken(), Deadline.after_ms(20_000)) for remote in (alice, bob)]
        assert [(a.text, a.finish_reason, a.cached_tokens) for a in answers] == [("return x + 1", "length", 3)] * 2
        # each token's probability comes through the gateway's deltas, at its offset in the answer
        assert [offset for offset, _ in answers[0].confidence] == [0, 3, 6, 8, 10]
        assert [p for _, p in answers[0].confidence] == pytest.approx(PROBABILITIES, abs=1e-6)
        sent = upstream.completions()[before:]
        assert [body["prompt"] for body in sent] == [list(ids)] * 2  # token ids: the server tokenizes as we do
        assert all(body["max_tokens"] == 5 and body["temperature"] == 0 and body["logprobs"] == 1 for body in sent)
        salts = [body["cache_salt"] for body in sent]
        assert salts[0] != salts[1] and all(len(salt) >= 43 for salt in salts)  # no cross-tenant prefix reuse
        assert set(upstream.headers) == {f"Bearer {API_KEY}"}
        again = alice.generate(Prompt(ids, 2, StopRule()), CancelToken(), Deadline.after_ms(20_000))
        assert again.text == "return" and upstream.completions()[-1]["cache_salt"] == salts[0]  # stable per tenant
        backend = alice.status()["backend"]
        assert backend["kind"] == "vllm" and backend["prompts"].startswith("token ids")
    finally:
        alice.close()
        bob.close()


def test_cancel_and_supersede_close_the_upstream_stream(gateway, tmp_path: Path) -> None:
    engine, upstream, tokens = gateway
    alice = RemoteSource(engine.url, tokens["alice"], cache_dir=tmp_path)
    try:
        ids = tuple(alice.tokenizer("total = sum(", add_special_tokens=False)["input_ids"])
        long = Prompt(ids, 200, StopRule())
        cancel = CancelToken()
        threading.Timer(0.3, cancel.cancel).start()
        assert alice.generate(long, cancel, Deadline.after_ms(20_000)).finish_reason == "cancelled"
        cancelled = upstream.completions()[-1]["request_id"]
        assert wait_for(lambda: cancelled in upstream.aborted)

        first = alice.generate(long, CancelToken(), Deadline.after_ms(300), document="file:///a.py")
        assert first.finish_reason == "deadline" and first.text.startswith("return")
        superseded = upstream.completions()[-1]["request_id"]
        newer = alice.generate(Prompt(ids, 3, StopRule()), CancelToken(), Deadline.after_ms(20_000), document="file:///a.py")
        assert newer.text == "return x"
        assert wait_for(lambda: superseded in upstream.aborted)  # never two generations of one document upstream
        assert alice.resume(first.continuation, CancelToken(), Deadline.after_ms(2000)).finish_reason == "cancelled"
    finally:
        alice.close()


def test_warm_sends_the_prompt_upstream_with_one_token_to_generate(gateway, tmp_path: Path) -> None:
    engine, upstream, tokens = gateway
    alice = RemoteSource(engine.url, tokens["alice"], cache_dir=tmp_path)
    try:
        ids = list(alice.tokenizer("class Stack:\n    def push(self, item):\n        ", add_special_tokens=False)["input_ids"])
        alice.warm(ids, CancelToken(), document="file:///stack.py")
        assert wait_for(lambda: any(body["prompt"] == ids and body["max_tokens"] == 1 for body in upstream.completions()))
        assert wait_for(lambda: alice.status()["scheduler"]["warms"]["done"] >= 1)
    finally:
        alice.close()


def test_an_unreachable_upstream_answers_error_at_once_and_the_front_end_hears_of_it_once(tmp_path: Path) -> None:
    """The gateway's model server down: every request ends at once, the front-end's user is told once (it
    was told nothing: the engine itself was up), and once the server is back the next request is answered
    and the outage is over."""
    build_tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    tokens = make_tokens(tmp_path / "tokens", "alice")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = start_engine(tmp_path / "tokens", tmp_path / "engine.log", "--backend", f"openai+http://127.0.0.1:{port}/v1",
                          "--backend-model", str(tmp_path / "tokenizer"), timeout_s=60)
    alice = RemoteSource(engine.url, tokens["alice"], cache_dir=tmp_path)
    told: list[str | None] = []
    alice.on_outage = told.append
    server = None
    try:
        ids = tuple(alice.tokenizer("x = ", add_special_tokens=False)["input_ids"])
        for _ in range(3):
            started = time.monotonic()
            answer = alice.generate(Prompt(ids, 4, StopRule()), CancelToken(), Deadline.after_ms(5000))
            assert (answer.finish_reason, answer.text) == ("error", "") and time.monotonic() - started < 3
        assert alice.status()["backend"]["outage"]  # the gateway says why in its status
        assert len(told) == 1 and told[0] is not None
        assert "cannot reach its model server" in told[0] and f"127.0.0.1:{port}" in told[0]
        assert alice.describe()["backend_down"]

        server = serve_upstream(Upstream(tmp_path / "tokenizer"), port)
        answered = lambda: alice.generate(Prompt(ids, 2, StopRule()), CancelToken(), Deadline.after_ms(5000)).text == "return"  # noqa: E731
        assert wait_for(answered, timeout=40.0)  # the gateway's backoff ends, its next attempt gets through
        assert told[1:] == [None] and not alice.describe()["backend_down"]
    finally:
        alice.close()
        engine.stop()
        if server is not None:
            server.shutdown()
