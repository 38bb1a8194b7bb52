"""The request path with a tiny random model: cache, type-through, newest-wins, failure states."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabfill.completion.models import ModelError
from tabfill.completion.service import CompletionService
from tabfill.completion.types import CancelToken, CompletionRequest, Settings
from tabfill.completion.worker import Cancelled
from tabfill.syntax_cache.workspace import Snippet
from tests.support import make_tiny_model_dir

TEXT = "import os\n\n\ndef read(path):\n    with open(path) as handle:\n        return handle.re"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("service-model"))


@pytest.fixture()
def service(model_dir: Path) -> Iterator[CompletionService]:
    svc = CompletionService(Settings(model=str(model_dir), deadline_ms=60_000))
    svc.load().result()
    yield svc
    svc.close()


def request(text: str = TEXT, offset: int | None = None, uri: str = "file:///a.py", language: str = "python") -> CompletionRequest:
    return CompletionRequest(uri, language, 1, text, len(text) if offset is None else offset, "r")


def test_model_then_cache(service: CompletionService) -> None:
    first = service.complete(request())
    assert first.source == "model" and first.text
    assert [name for name, _ in first.timings.stages] == [
        "type_through", "context", "cache", "prompt", "prefill", "decode", "postprocess",
    ]
    # the time the server spent gathering the request's syntax and cross-file context is the first stage
    again = service.complete(dataclasses.replace(request(uri="file:///other.py"), lookup_ms=2.5))
    assert (again.source, again.text) == ("cache", first.text)
    assert [name for name, _ in again.timings.stages] == ["lookup", "type_through", "context", "cache"]
    assert again.timings.get("lookup") == 2.5


def test_type_through_answers_without_the_model(service: CompletionService) -> None:
    first = service.complete(request())
    assert len(first.text) >= 2
    typed = TEXT + first.text[:2]
    through = service.complete(request(typed))
    assert through.source == "type-through"
    assert through.text == first.text[2:]
    assert [name for name, _ in through.timings.stages] == ["type_through"]
    # typing something else falls back to the model (or the cache), never to a stale remainder
    other = service.complete(request(TEXT + "\u00e9"))
    assert other.source != "type-through"


def test_not_ready_and_disabled_and_none_mode_answer_at_once(model_dir: Path) -> None:
    svc = CompletionService(Settings(model=str(model_dir), enabled_languages=("python",)))
    try:
        idle = svc.complete(request())
        assert idle.text == "" and "idle" in idle.finish_reason
        svc.load().result()
        assert svc.complete(request(language="go")).finish_reason == "language disabled"
        inside = svc.complete(request("value = compute_it()", offset=10))
        assert inside.text == "" and "identifier" in inside.finish_reason
    finally:
        svc.close()


def test_failed_load_is_a_state_with_a_reason(tmp_path: Path) -> None:
    svc = CompletionService(Settings(model=str(tmp_path)))
    try:
        with pytest.raises(ModelError, match="config.json"):
            svc.load().result()
        assert svc.state == "failed" and "config.json" in svc.error
        result = svc.complete(request())
        assert result.text == "" and "failed" in result.finish_reason
    finally:
        svc.close()


def test_newer_request_for_the_same_document_cancels_the_older(service: CompletionService) -> None:
    gate = threading.Event()
    # occupy the worker so both requests queue behind it
    blocker = service._worker.submit(lambda _t: gate.wait(5))
    older_token = CancelToken()
    older = service.submit(request(TEXT + "  "), older_token)
    newer = service.submit(request())
    gate.set()
    blocker.result(5)
    assert newer.result(60).text
    with pytest.raises(Cancelled, match="superseded"):  # the newer text is not the older plus typing
        older.result(60)
    assert not older_token.cancelled  # the caller's token is the caller's; the job has its own


def test_identical_requests_in_flight_share_one_generation(service: CompletionService) -> None:
    gate, running = threading.Event(), threading.Event()

    def block(_token: CancelToken) -> None:
        running.set()
        gate.wait(5)

    blocker = service._worker.submit(block)
    running.wait(5)
    text = TEXT + "    "
    first = service.submit(request(text))
    second = service.submit(dataclasses.replace(request(text), request_id="second"))
    assert service._worker.pending == 1  # one model job for both
    gate.set()
    blocker.result(5)
    one, two = first.result(5), second.result(5)
    assert (one.text, one.source) == (two.text, two.source) and one.source == "model" and two.request_id == "second"


def test_a_shared_generation_stops_only_when_every_waiter_cancels(service: CompletionService) -> None:
    gate = threading.Event()
    blocker = service._worker.submit(lambda _t: gate.wait(5))
    text = TEXT + "        "
    first_token, second_token = CancelToken(), CancelToken()
    first = service.submit(request(text), first_token)
    second = service.submit(request(text), second_token)
    first_token.cancel("$/cancelRequest")
    gate.set()
    blocker.result(5)
    assert second.result(5).source == "model"  # still generated for the waiter that stayed

    gate.clear()
    blocker = service._worker.submit(lambda _t: gate.wait(5))
    text += "#"
    tokens = [CancelToken(), CancelToken()]
    futures = [service.submit(request(text), token) for token in tokens]
    for token in tokens:
        token.cancel("$/cancelRequest")
    gate.set()
    blocker.result(5)
    for future in futures:
        with pytest.raises(Cancelled):
            future.result(5)


def test_large_document_context_window_keeps_the_cursor_line(service: CompletionService) -> None:
    big = "x = 1\n" * 200_000 + "def f(a):\n    return a"
    assert service.complete(request(big)).source in ("model", "cache")
    mid = "def f(a):\n" + "    y = 1\n" * 10_000 + "    return a" + "\nz = 2\n" * 10_000
    inside = service.complete(request(mid, offset=mid.index("return a") + 3))  # inside `return`
    assert "identifier" in inside.finish_reason


def test_a_deadline_answer_is_completed_in_the_background_and_served_by_type_through(model_dir: Path) -> None:
    text = "def total(items):\n    result = 0\n    for item in items:\n        result += "
    unhurried = CompletionService(Settings(model=str(model_dir), deadline_ms=60_000))
    hurried = CompletionService(Settings(model=str(model_dir), deadline_ms=1))
    try:
        unhurried.load().result()
        hurried.load().result()
        full = unhurried.complete(request(text))
        partial = hurried.complete(request(text))
        assert partial.finish_reason == "deadline" and full.text.startswith(partial.text)
        give_up = time.monotonic() + 30
        while hurried.flights.continuation("file:///a.py") is not None and time.monotonic() < give_up:  # the background job publishes, then ends
            time.sleep(0.01)
        # served from the cache and by type-through, but its true origin is the background continuation
        # (it used to be reported as "cache" and "type-through", so no client ever saw "continuation")
        again = hurried.complete(request(text))
        assert (again.source, again.text) == ("continuation", full.text)
        if len(full.text) > 1:  # the user types the first character of the suggestion: the rest, no model
            typed = hurried.complete(request(text + full.text[0]))
            assert (typed.source, typed.text) == ("continuation", full.text[1:])
    finally:
        unhurried.close()
        hurried.close()


def test_the_prompt_span_cross_file_context_need_not_repeat(model_dir: Path, tmp_path: Path) -> None:
    """Before the cursor: the prefix window; after it: the suffix budget for a FIM model, nothing for a
    prefix-only one (it never sees the code after the cursor, so similar code there is worth showing)."""
    prefix_only = CompletionService(Settings(model=str(model_dir), max_prefix_tokens=100, max_suffix_tokens=50))
    fim = CompletionService(Settings(model=str(make_tiny_model_dir(tmp_path, fim_family="starcoder")), max_prefix_tokens=100, max_suffix_tokens=50))
    try:
        prefix_only.load().result()
        fim.load().result()
        assert prefix_only.prompt_chars == (300, 0) and prefix_only.window_chars == 300
        assert fim.prompt_chars == (300, 150)
    finally:
        prefix_only.close()
        fim.close()


def test_typing_a_new_line_keeps_the_cached_prompt_when_a_header_takes_part_of_the_budget(service: CompletionService) -> None:
    """The cross-file header's tokens come out of the prefix budget; a window that ignored it was cut again
    by the prompt builder a line at a time from its start, so each new line changed the prompt's first code
    tokens and the whole prefix after the header was prefilled again."""
    # text the tiny tokenizer splits like real code with a real one (about 3.5 characters per token)
    snippet = Snippet("lib.py", "\n".join("        result = self.function(argument, default=None)" for _ in range(12)), "similar")
    names = [f"{verb}_{noun}" for verb in ("read", "write", "open", "close", "parse", "load", "save", "send")
             for noun in ("file", "path", "name", "data", "line", "text", "item", "node")]
    body = "def run(self):\n" + "".join(f"        {name} = self.{name}(argument, default=None)\n" for name in names)
    first_text = body + "        result = "
    service.complete(CompletionRequest("file:///w.py", "python", 1, first_text, len(first_text), "a", cross_file=(snippet,)))
    first = service.last_generation
    assert first is not None and service.last_cross_file  # the header is in the prompt
    second_text = first_text + "x\n        y = "  # a short new line (the window's start snaps every 1/8 of it)
    service.complete(CompletionRequest("file:///w.py", "python", 2, second_text, len(second_text), "b", cross_file=(snippet,)))
    second = service.last_generation
    assert second is not None and second is not first
    # everything up to the first request's cursor line is reused: the prompt start did not move
    assert second.cached_tokens >= first.prompt_tokens - 8, (second.cached_tokens, first.prompt_tokens)


def test_a_superseded_request_is_answered_from_the_newest_generation(service: CompletionService) -> None:
    """The user typed "re" while the request for "handle." waited: it gets "re" + the newer request's answer
    (at its own place), not an error; a newer request that is not just typing (a deletion) still cancels it."""
    gate = threading.Event()
    blocker = service._worker.submit(lambda _t: gate.wait(5))
    before = TEXT[:-2]  # "... return handle."
    older = service.submit(dataclasses.replace(request(before), request_id="older"))
    newer = service.submit(request())
    gate.set()
    blocker.result(5)
    new, old = newer.result(60), older.result(60)
    assert new.source == "model" and new.text
    assert (old.text, old.offset, old.request_id, old.source) == ("re" + new.text, len(before), "older", "model")


def test_the_result_cache_is_bounded_by_the_bytes_of_answers_and_prompts(service: CompletionService) -> None:
    from tabfill.completion.service import RESULTS_CACHE_BYTES, _Result
    from tabfill.syntax_cache.sizes import approx_bytes, keep

    first = service.complete(request())
    assert first.source == "model"  # a real answer is kept with its prompt and counted
    assert service._results.currsize == sum(map(approx_bytes, [(r.text, r.prompt[1:]) for r in service._results.values()])) > len(TEXT)
    prompt = "x = compute(value)\n" * 3000  # 57 KB of prompt text per entry: 2,000 of them are seven times the bound
    for number in range(2000):
        key = (service.settings, number, 0, "", prompt + str(number), "")
        keep(service._results, key, _Result(f"answer {number}", 0, "stop", "cache", key))
        assert service._results.currsize <= RESULTS_CACHE_BYTES
    kept = list(service._results.values())
    assert sum(approx_bytes((r.text, r.prompt[1:])) for r in kept) <= RESULTS_CACHE_BYTES
    assert len(kept) * len(prompt) > RESULTS_CACHE_BYTES * 0.9  # the bound is used, not a small entry count
    assert service._results.get((service.settings, 1999, 0, "", prompt + "1999", "")) == kept[-1]  # the newest hits
    assert service._results.get((service.settings, 0, 0, "", prompt + "0", "")) is None


def test_pieces_start_where_the_model_was_unsure_and_follow_type_through_and_the_cache(model_dir: Path) -> None:
    """With the bar at 100 % every token after the first starts a piece (a random model is sure of nothing);
    type-through and the result cache keep the cuts; at 0 % the answer is one piece."""
    svc = CompletionService(Settings(model=str(model_dir), deadline_ms=60_000, confidence_percent=100))
    try:
        svc.load().result()
        first = svc.complete(request())
        generation = svc.last_generation
        assert generation is not None and first.source == "model" and len(first.text) >= 3
        starts = {offset for offset, probability in generation.confidence if probability < 1}
        assert first.cuts and set(first.cuts) <= starts and all(0 < cut < len(first.text) for cut in first.cuts)
        assert list(first.cuts) == sorted(first.cuts) and "".join(first.pieces()) == first.text
        through = svc.complete(request(TEXT + first.text[:2]))
        assert through.source == "type-through"
        assert through.cuts == tuple(cut - 2 for cut in first.cuts if cut > 2)
        cached = svc.complete(request(uri="file:///other.py"))
        assert (cached.source, cached.cuts) == ("cache", first.cuts)
        svc.update_settings(dataclasses.replace(svc.settings, confidence_percent=0))
        whole = svc.complete(request(uri="file:///third.py"))  # other settings: not the cached answer
        assert (whole.source, whole.text, whole.cuts) == ("model", first.text, ())
    finally:
        svc.close()
