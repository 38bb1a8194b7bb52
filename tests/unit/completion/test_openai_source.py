"""The OpenAI-compatible token source against recorded-shape fakes of vLLM, SGLang and llama.cpp."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tabfill.completion.openai_source import OpenAISource
from tabfill.completion.tokenizer_file import CharTokenizer, FileTokenizer
from tabfill.completion.types import CancelToken, Deadline, Prompt, StopRule
from tests.support import FIM_FAMILIES, build_tiny_tokenizer
from tests.unit.completion.openai_fakes import LLAMA_CPP_FIELDS, SGLANG_FIELDS, VLLM_FIELDS, FakeServer

KEY = "sk-secret-tenant-key"
SLACK_S = 0.25  # scheduling slack on a shared 2-core machine; deadlines below are 100-300 ms


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> FileTokenizer:
    directory = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer(FIM_FAMILIES["qwen2.5-coder"]).save_pretrained(directory)
    return FileTokenizer.from_directory(Path(directory))


@pytest.fixture
def sources() -> Iterator[list[OpenAISource]]:
    made: list[OpenAISource] = []
    yield made
    for source in made:
        source.close()


def _source(made: list[OpenAISource], server: FakeServer, tokenizer: object, **options: object) -> OpenAISource:
    source = OpenAISource("http://engine.test:8000/v1", tokenizer, transport=server.transport(), **options)  # type: ignore[arg-type]
    made.append(source)
    return source


def _prompt(tokenizer: FileTokenizer | CharTokenizer, text: str = "def inc(x):\n    ", single_line: bool = True, healing: str = "") -> Prompt:
    return Prompt(tuple(tokenizer.encode(text)), 24, StopRule(single_line=single_line, max_lines=8), frozenset({0}), healing)


def test_vllm_request_carries_documented_fields_and_token_ids(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("vllm", tokenize=tokenizer.encode)
    source = _source(sources, server, tokenizer, model="Qwen/Qwen2.5-Coder-1.5B", api_key=KEY)
    assert source.detect()
    prompt = _prompt(tokenizer, "def inc(x):\n    ret", healing="ret")
    generation = source.generate(prompt, CancelToken(), Deadline.after_ms(5000))
    assert (generation.text, generation.finish_reason) == ("return x + 1", "stop")  # cut at the newline by the stop rule
    body = server.streamed()[-1]
    assert set(body) <= VLLM_FIELDS
    # the healed token goes back: the server continues after the whole prefix
    assert body["prompt"] == list(prompt.token_ids) + tokenizer.encode("ret")
    assert (body["temperature"], body["stream"], body["max_tokens"], body["stop"]) == (0, True, 24, ["\n"])
    assert body["model"] == "Qwen/Qwen2.5-Coder-1.5B" and body["stop_token_ids"] == [0]
    assert len(body["cache_salt"]) == 43 and KEY not in body["cache_salt"]
    assert "priority" not in body  # the fake runs without --scheduling-policy priority, and said so to the probe
    assert body["stream_options"] == {"include_usage": True}
    described = source.describe()
    assert described["kind"] == "vllm" and described["prompts"].startswith("token ids")
    assert "cache_salt (per API key)" in described["extras"] and "priority" not in described["extras"]


def test_each_token_s_probability_reaches_the_generation(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    """The server's logprobs become the generation's confidence, at each token's offset in its text, so the
    service draws the answer up to where the model was unsure (as with the in-process engine); a warm-up
    does not ask for them."""
    server = FakeServer("vllm", tokenize=tokenizer.encode, probabilities=(0.95, 0.9, 0.3, 0.8))
    source = _source(sources, server, tokenizer)
    assert source.detect()
    generation = source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(5000))
    assert generation.text == "return x + 1"
    assert [offset for offset, _ in generation.confidence] == [0, 6, 8, 10]  # "return", " x", " +", " 1"
    assert [p for _, p in generation.confidence] == pytest.approx([0.95, 0.9, 0.3, 0.8])
    assert server.streamed()[-1]["logprobs"] == 1
    source.warm(list(_prompt(tokenizer).token_ids), CancelToken())
    waited = time.monotonic() + 5
    while len(server.streamed()) < 2 and time.monotonic() < waited:  # the warm-up is sent from the source's loop
        time.sleep(0.01)
    warm = server.streamed()[1]
    assert warm["max_tokens"] == 1 and "logprobs" not in warm


def test_vllm_with_priority_scheduling_gets_priorities(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("vllm", tokenize=tokenizer.encode, priority_scheduling=True)
    source = _source(sources, server, tokenizer, api_key=KEY)
    source.detect()
    source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(5000))
    source.warm(list(_prompt(tokenizer).token_ids), CancelToken())
    deadline = time.monotonic() + 5
    while len(server.streamed()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    typing, warm = server.streamed()
    assert (typing["priority"], warm["priority"], warm["max_tokens"]) == (0, 1, 1)


def test_a_tokenizer_that_differs_from_the_servers_sends_text(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("vllm", tokenize=lambda text: [7] * len(text))
    source = _source(sources, server, tokenizer)
    source.detect()
    prompt = _prompt(tokenizer, "def inc(x):\n    ret", healing="ret")
    source.generate(prompt, CancelToken(), Deadline.after_ms(5000))
    body = server.streamed()[-1]
    assert body["prompt"] == "def inc(x):\n    ret" + "ret"  # text: the server tokenizes it itself
    assert "differently" in str(source.describe()["prompts"])


def test_deadline_cut_hands_back_the_open_stream(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("vllm", tokenize=tokenizer.encode, delay_s=0.12, pieces=("return", " x", " +", " 1", "\n"))
    source = _source(sources, server, tokenizer)
    source.detect()
    started = time.monotonic()
    first = source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(300))
    assert time.monotonic() - started < 0.3 + SLACK_S  # never past the deadline
    assert first.finish_reason == "deadline" and first.continuation is not None
    assert "return x + 1".startswith(first.text) and first.text != "return x + 1"
    rest = source.resume(first.continuation, CancelToken(), Deadline.after_ms(5000))
    assert (rest.text, rest.finish_reason, rest.continuation) == ("return x + 1", "stop", None)
    assert len(server.streamed()) == 1  # the continuation is the same request, not a new one


def test_a_preempted_resume_leaves_the_stream_open(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("vllm", tokenize=tokenizer.encode, delay_s=0.1)
    source = _source(sources, server, tokenizer)
    source.detect()
    first = source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(100))
    preempted = CancelToken()
    preempted.cancel("preempted")
    assert source.resume(first.continuation, preempted, Deadline.after_ms(1000)).finish_reason == "cancelled"
    assert source.resume(first.continuation, CancelToken(), Deadline.after_ms(5000)).text == "return x + 1"
    assert len(server.streamed()) == 1 and server.closed_early == []


def test_dropping_the_continuation_closes_its_stream(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("vllm", tokenize=tokenizer.encode, delay_s=0.2)
    source = _source(sources, server, tokenizer)
    source.detect()
    generation = source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(50))
    assert generation.finish_reason == "deadline"
    request_id = server.streamed()[-1]["request_id"]
    del generation
    gc.collect()
    _wait_for(lambda: request_id in server.closed_early)


def test_sglang_cancel_closes_the_stream_and_aborts_by_rid(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("sglang", tokenize=tokenizer.encode, delay_s=0.2)
    source = _source(sources, server, tokenizer, api_key=KEY)
    source.detect()
    cancel = CancelToken()
    started = time.monotonic()
    import threading

    threading.Timer(0.1, cancel.cancel).start()
    generation = source.generate(_prompt(tokenizer), cancel, Deadline.after_ms(5000))
    assert generation.finish_reason == "cancelled" and time.monotonic() - started < 0.1 + SLACK_S
    body = server.streamed()[-1]
    assert set(body) <= SGLANG_FIELDS and body["rid"].startswith("tabfill-") and body["cache_salt"]
    _wait_for(lambda: server.bodies("/abort_request") == [{"rid": body["rid"]}])
    _wait_for(lambda: body["rid"] in server.closed_early)
    assert source.describe()["kind"] == "sglang"


def test_llama_cpp_gets_its_cache_options_and_reports_cached_tokens(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("llama.cpp", tokenize=tokenizer.encode, cached_tokens=5)
    source = _source(sources, server, tokenizer, api_key=KEY)
    source.detect()
    generation = source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(5000))
    assert generation.text == "return x + 1" and generation.cached_tokens == 5
    body = server.streamed()[-1]
    assert body["cache_prompt"] is True and 0 <= body["id_slot"] < 4 and body["t_max_predict_ms"] > 0


def test_llama_cpp_gets_fim_prompts_through_infill_with_the_context_as_extra(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    from tabfill.completion.fim import TEMPLATES, build_prompt

    server = FakeServer("llama.cpp", tokenize=tokenizer.encode, cached_tokens=11)
    source = _source(sources, server, tokenizer)
    source.detect()
    header = "# from util.py:\n# def helper(x): ...\n"
    prompt = build_prompt("def inc(x):\n    ", "\nprint(inc(1))\n", TEMPLATES["qwen2.5-coder"], tokenizer, max_prefix_tokens=200,
                          max_suffix_tokens=50, max_new_tokens=24, stop=StopRule(), context=header, max_context_tokens=60)
    generation = source.generate(prompt, CancelToken(), Deadline.after_ms(5000))
    assert generation.text == "return x + 1" and generation.cached_tokens == 11
    body = server.bodies("/infill")[-1]
    assert set(body) <= LLAMA_CPP_FIELDS
    assert (body["input_prefix"], body["input_suffix"]) == ("def inc(x):\n    ", "\nprint(inc(1))\n")
    assert body["input_extra"] == [{"filename": "context", "text": header}]
    assert body["cache_prompt"] is True and body["stream"] is True and body["n_predict"] == 24


def test_the_server_finishing_first_reports_usage(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    server = FakeServer("vllm", tokenize=tokenizer.encode, pieces=("return", " x"), cached_tokens=9)
    source = _source(sources, server, tokenizer)
    source.detect()
    generation = source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(5000))
    assert (generation.text, generation.finish_reason) == ("return x", "length")
    _wait_for(lambda: source.describe()["lastStream"]["cachedTokens"] == 9)  # type: ignore[index]


def _failing(status: int, headers: dict[str, str] | None = None) -> FakeServer:
    def fail(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(status, headers=headers, json={"error": "no"}) if request.url.path == "/v1/completions" else None

    return FakeServer("vllm", fail=fail)


def _down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        (FakeServer("vllm", fail=lambda r: _down(r) if r.url.path == "/v1/completions" else None), "connection refused"),
        (_failing(401), "rejected the API key"),
        (_failing(429, {"retry-after": "2"}), "rate-limiting"),
        (_failing(503), "HTTP 503"),
        (FakeServer("vllm", pieces=("x",), first_delay_s=1.0), "no first byte"),
    ],
    ids=["down", "401", "429", "5xx", "slow-first-byte"],
)
def test_failures_answer_empty_in_time_and_report_one_outage(
    sources: list[OpenAISource], tokenizer: FileTokenizer, server: FakeServer, reason: str
) -> None:
    messages: list[str | None] = []
    source = _source(sources, server, tokenizer, first_byte_timeout_s=0.3)
    source.on_outage = messages.append
    source.detect()
    for _ in range(6):  # keystrokes during the outage
        started = time.monotonic()
        generation = source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(150))
        assert generation.text == "" and time.monotonic() - started < 0.15 + SLACK_S
        time.sleep(0.1)
    _wait_for(lambda: len(messages) == 1)
    assert reason in str(messages[0]) and source.describe()["outage"]
    time.sleep(0.3)
    assert len(messages) == 1  # one message per outage, not per keystroke
    calls = len(server.streamed())
    assert calls < 6  # inside the backoff nothing is sent


def test_malformed_stream_is_an_outage_and_recovery_is_reported(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    broken = {"on": True}

    def fail(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/v1/completions" and broken["on"]:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"data: {not json\n\n")
        return None

    messages: list[str | None] = []
    server = FakeServer("vllm", tokenize=tokenizer.encode, fail=fail)
    source = _source(sources, server, tokenizer)
    source.on_outage = messages.append
    source.detect()
    assert source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(1000)).text == ""
    assert messages and "malformed" in str(messages[0])
    broken["on"] = False
    time.sleep(0.6)  # past the first backoff: the next request reconnects
    assert source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(5000)).text == "return x + 1"
    assert messages[1:] == [None] and source.describe()["outage"] == ""


def test_a_stream_cut_short_by_the_server_is_not_a_whole_answer(sources: list[OpenAISource], tokenizer: FileTokenizer) -> None:
    """llama-cpp-python ends a running stream with [DONE] (no finish reason) when another request arrives."""

    def interrupted(request: httpx.Request) -> httpx.Response | None:
        if request.url.path != "/v1/completions":
            return None
        body = b'data: {"choices": [{"index": 0, "text": "return", "finish_reason": null}]}\n\ndata: [DONE]\n\n'
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    source = _source(sources, FakeServer("vllm", fail=interrupted), tokenizer)
    source.detect()
    generation = source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(5000))
    assert (generation.text, generation.finish_reason) == ("return", "error")  # shown, never cached as whole
    assert source.describe()["outage"] == ""  # the server is fine


def test_an_unreachable_server_at_start_is_an_outage_not_a_crash(sources: list[OpenAISource]) -> None:
    messages: list[str | None] = []
    server = FakeServer("vllm", fail=_down)
    source = _source(sources, server, CharTokenizer())
    source.on_outage = messages.append
    assert not source.detect()
    assert len(messages) == 1 and source.describe()["kind"] == "not detected yet"


def test_the_key_is_never_shown_nor_logged(sources: list[OpenAISource], tokenizer: FileTokenizer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def fail(request: httpx.Request) -> httpx.Response | None:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(401, json={"error": "bad key"}) if request.url.path == "/v1/completions" else None

    source = _source(sources, FakeServer("vllm", fail=fail), tokenizer, api_key=KEY)
    source.detect()
    source.generate(_prompt(tokenizer), CancelToken(), Deadline.after_ms(500))
    assert f"Bearer {KEY}" in seen  # it is sent ...
    shown = str(source.describe()) + repr(source) + caplog.text
    assert KEY not in shown  # ... and nowhere else


def _wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.01)
    assert condition(), "condition not met in time"  # type: ignore[operator]


def test_opening_a_server_source_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tabfill.completion.sources import open_source\n"
        "from tabfill.completion.types import Settings\n"
        "source = open_source(Settings(engine='openai+http://127.0.0.1:9/v1'), lambda stage, fraction: None)\n"
        "print(source.describe()['kind'], source.info.device)\n"
        "source.close()\n"
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert result.stdout.splitlines() == ["not detected yet remote", "[]"], result.stdout + result.stderr


def test_the_service_reports_an_outage_once_and_never_caches_its_empty_answers(tokenizer: FileTokenizer) -> None:
    from tabfill.completion.service import CompletionService
    from tabfill.completion.types import CompletionRequest, Settings

    down = {"on": True}

    def fail(request: httpx.Request) -> httpx.Response | None:
        return _down(request) if down["on"] and request.url.path == "/v1/completions" else None

    server = FakeServer("vllm", tokenize=tokenizer.encode, fail=fail, pieces=("return", " x", "\n"))
    made: list[OpenAISource] = []

    def opener(settings: Settings, progress: object) -> OpenAISource:
        source = _source(made, server, tokenizer)
        source.detect()
        source.info = _info()
        return source

    service = CompletionService(Settings(engine="openai+http://engine.test:8000/v1", deadline_ms=2000), opener=opener)
    messages: list[str | None] = []
    service.on_outage = messages.append
    service.load().result(10)
    text = "def inc(x):\n    "
    request = CompletionRequest("file:///a.py", "python", 1, text, len(text))
    try:
        for _ in range(4):
            assert service.complete(request).text == ""
        assert len(messages) == 1 and "connection refused" in str(messages[0])
        assert service.describe_engine()["outage"]
        down["on"] = False
        time.sleep(0.6)  # the backoff after one failed attempt
        answer = service.complete(request)
        assert (answer.text, answer.source) == ("return x", "model")  # the server's answer, not a cached empty one
        assert messages[1:] == [None]
    finally:
        service.close()


def _info() -> object:
    from tabfill.completion.types import EngineInfo

    return EngineInfo("fake", "remote", "server's", 0.0, "qwen2.5-coder")
