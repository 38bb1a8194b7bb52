"""No lost answers: a deadline-cut answer's continuation ends whole or says why it stopped, and the next
request at that place resumes it — with a model slowed on purpose (every step sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from tabfill.completion import flights
from tabfill.completion.models import ProgressFn
from tabfill.completion.service import CompletionService
from tabfill.completion.source import TokenSource
from tabfill.completion.types import (
    CancelToken, CompletionRequest, Deadline, EngineInfo, Generation, Prompt, Resumable, Settings, Timings,
)
from tests.support import build_tiny_tokenizer

TEXT = "def area(r):\n    return "
WORDS = ("r", *[" + r"] * 39)  # 40 "tokens", one per step
WHOLE = "".join(WORDS)
STEP_S = 0.02  # each step of the slow model


@dataclass(eq=False)
class _Decoding:
    prompt: Prompt
    generated: int = 0  # how many of WORDS are generated so far
    dropped: bool = False  # the source ended it (as a team engine does when a newer request supersedes it)


@dataclass
class SlowSource:
    """Generates WORDS one per step, each step sleeping STEP_S; counts every step it runs."""

    info: EngineInfo = EngineInfo("slow", "cpu", "none", 0.0, "prefix-only")
    tokenizer: object = field(default_factory=build_tiny_tokenizer)
    steps: int = 0
    generates: int = 0
    resumes_from: list[int] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {"runner": "slow"}

    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline, corpus: Sequence[int] = (), *, document: str = "") -> Generation:
        self.generates += 1
        self.documents.append(document)
        return self._run(_Decoding(prompt), cancel, deadline)

    def resume(self, state: Resumable, cancel: CancelToken, deadline: Deadline) -> Generation:
        assert isinstance(state, _Decoding)
        self.resumes_from.append(state.generated)
        if state.dropped:
            return self._result(state, "cancelled")
        return self._run(state, cancel, deadline)

    def _run(self, state: _Decoding, cancel: CancelToken, deadline: Deadline) -> Generation:
        while state.generated < len(WORDS):
            if cancel.cancelled or deadline.expired:
                finish = "cancelled" if cancel.cancelled else "deadline"
                return self._result(state, finish)
            time.sleep(STEP_S)
            self.steps += 1
            state.generated += 1
        return self._result(state, "eos")

    @staticmethod
    def _result(state: _Decoding, finish: str) -> Generation:
        ids = tuple(range(state.generated))
        text = "".join(WORDS[: state.generated])
        return Generation(ids, text, finish, len(state.prompt.token_ids), Timings(), continuation=state if finish == "deadline" else None)  # type: ignore[arg-type]

    def warm(self, token_ids: list[int], cancel: CancelToken, *, document: str = "") -> int:
        return 0

    def close(self) -> None:
        pass


class Heard:
    """What the service told the editor: whole answers and stops, in order."""

    def __init__(self, service: CompletionService) -> None:
        self.events: list[tuple[str, str, str]] = []  # (uri, "ready" | reason, request id)
        self._changed = threading.Condition()
        service.on_ready = lambda request, completion: self._add(request, "ready")
        service.on_stopped = lambda request, reason: self._add(request, reason)

    def _add(self, request: CompletionRequest, what: str) -> None:
        with self._changed:
            self.events.append((request.uri, what, request.request_id))
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 20.0) -> list[tuple[str, str, str]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.events) >= count, timeout), self.events
            return list(self.events)

    def wait_for(self, event: tuple[str, str, str], timeout: float = 20.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: event in self.events, timeout), self.events


def serve(source: SlowSource) -> CompletionService:
    def opener(chosen: Settings, progress: ProgressFn) -> TokenSource:
        return source

    service = CompletionService(Settings(engine="slow://here", deadline_ms=60), opener=opener)
    service.load().result(10)
    return service


def ask(service: CompletionService, request_id: str, uri: str = "file:///a.py", text: str = TEXT) -> CompletionRequest:
    return CompletionRequest(uri, "python", 1, text, len(text), request_id)


@pytest.fixture
def short_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flights, "CONTINUE_MAX_MS", 150)  # the slow model needs ~800 ms for the whole answer


@pytest.mark.usefixtures("short_cap")
def test_a_continuation_that_hits_its_time_cap_says_so_and_the_same_place_resumes_it() -> None:
    source = SlowSource()
    service = serve(source)
    heard = Heard(service)
    try:
        first = service.complete(ask(service, "1"))
        assert first.finish_reason == "deadline" and WHOLE.startswith(first.text)
        assert heard.wait(1) == [("file:///a.py", "timeLimit", "1")]
        kept = service.flights.continuation("file:///a.py")
        assert kept is not None and kept.stopped == "timeLimit" and not kept.running
        generated, slices = source.steps, len(source.resumes_from)
        assert 0 < generated < len(WORDS)
        answers = [first]
        for attempt in range(2, 30):  # each request at that place goes on where the last one stopped
            if heard.events[-1][1] == "ready":
                break
            answers.append(service.complete(ask(service, str(attempt))))
            if answers[-1].finish_reason != "deadline":  # finished within this request's own deadline
                break
            heard.wait(attempt)
        assert heard.events[-1][1] == "ready" or answers[-1].text == WHOLE
        assert {what for _, what, _ in heard.events if what != "ready"} == {"timeLimit"}
        assert source.generates == 1 and source.steps == len(WORDS)  # no token was generated twice
        assert source.resumes_from == sorted(source.resumes_from) and source.resumes_from[slices] == generated
        assert all(WHOLE.startswith(answer.text) for answer in answers)
        cached = service.complete(ask(service, "last"))
        assert cached.source in ("cache", "continuation") and cached.text == WHOLE and source.steps == len(WORDS)
    finally:
        service.close()


@pytest.mark.usefixtures("short_cap")
def test_a_continuation_preempted_by_another_documents_request_says_so() -> None:
    source = SlowSource()
    service = serve(source)
    heard = Heard(service)
    try:
        assert service.complete(ask(service, "a")).finish_reason == "deadline"
        service.complete(ask(service, "b", uri="file:///b.py"))
        events = heard.wait(2)
        assert ("file:///a.py", "preempted", "a") in events
    finally:
        service.close()


@pytest.mark.usefixtures("short_cap")
def test_a_superseded_continuation_says_so_and_is_resumed_back_at_its_place() -> None:
    source = SlowSource()
    service = serve(source)
    heard = Heard(service)
    try:
        assert service.complete(ask(service, "1")).finish_reason == "deadline"
        time.sleep(0.05)  # its continuation is running
        service.complete(ask(service, "2", text=TEXT + "x"))  # the user typed: another place
        assert heard.wait(1)[0] == ("file:///a.py", "superseded", "1")
        before = source.generates
        heard.wait(2)  # the second place's continuation stops too
        back = service.complete(ask(service, "3"))  # the user deleted the "x"
        assert source.generates == before and WHOLE.startswith(back.text)
        assert source.resumes_from[-1] > 0  # it went on from what the first continuation had
    finally:
        service.close()


def test_a_continuation_dropped_before_it_ran_says_so() -> None:
    source = SlowSource()
    service = serve(source)
    heard = Heard(service)
    gate = threading.Event()
    try:
        answer = service.submit(ask(service, "a"))
        blocker = service._worker.submit(lambda token: gate.wait(5))  # queued behind the request: runs first
        assert answer.result(10).finish_reason == "deadline"  # its continuation now waits in the queue
        service._worker.submit(lambda token: None)  # another request drops it before it ran
        gate.set()
        blocker.result(10)
        assert heard.wait(1) == [("file:///a.py", "preempted", "a")]
        kept = service.flights.continuation("file:///a.py")
        assert kept is not None and kept.stopped == "preempted" and source.resumes_from == []
    finally:
        service.close()


class FailingSource(SlowSource):
    def resume(self, state: Resumable, cancel: CancelToken, deadline: Deadline) -> Generation:
        raise RuntimeError("the engine went away")


def test_a_continuation_whose_source_fails_says_so_and_is_not_kept() -> None:
    service = serve(FailingSource())
    heard = Heard(service)
    try:
        assert service.complete(ask(service, "a")).finish_reason == "deadline"
        assert heard.wait(1) == [("file:///a.py", "error", "a")]
        assert service.flights.continuation("file:///a.py") is None
    finally:
        service.close()


@pytest.mark.usefixtures("short_cap")
def test_a_continuation_the_source_dropped_is_started_over_not_answered_empty() -> None:
    source = SlowSource()
    service = serve(source)
    heard = Heard(service)
    try:
        first = service.complete(ask(service, "1"))
        assert first.finish_reason == "deadline"
        heard.wait(1)
        kept = service.flights.continuation("file:///a.py")
        assert kept is not None and isinstance(kept.state, _Decoding)
        kept.state.dropped = True  # e.g. the team engine superseded it meanwhile
        again = service.complete(ask(service, "2"))
        assert again.text and WHOLE.startswith(again.text) and again.finish_reason in ("deadline", "eos")
        assert source.generates == 2 and source.documents == ["file:///a.py"] * 2
    finally:
        service.close()


@dataclass(eq=False)
class _Prefilling(_Decoding):
    prefilled: int = 0  # prefill steps done (no token comes before PREFILL_STEPS of them)


PREFILL_STEPS = 10


@dataclass
class PrefillingSource(SlowSource):
    """SlowSource whose prompt takes PREFILL_STEPS steps before the first token; records each resume's slice."""

    slices_ms: list[tuple[int, float]] = field(default_factory=list)  # (tokens so far, the slice's deadline in ms)
    prefills_while_resumed: bool = True  # as the in-process engine

    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline, corpus: Sequence[int] = (), *, document: str = "") -> Generation:
        self.generates += 1
        return self._run(_Prefilling(prompt), cancel, deadline)

    def resume(self, state: Resumable, cancel: CancelToken, deadline: Deadline) -> Generation:
        assert isinstance(state, _Prefilling)
        self.slices_ms.append((state.generated, float(deadline.remaining_ms or 0.0)))
        return self._run(state, cancel, deadline)

    def _run(self, state: _Decoding, cancel: CancelToken, deadline: Deadline) -> Generation:
        assert isinstance(state, _Prefilling)
        while state.prefilled < PREFILL_STEPS:
            if cancel.cancelled or deadline.expired:
                return self._result(state, "cancelled" if cancel.cancelled else "deadline")
            time.sleep(STEP_S)
            state.prefilled += 1
        return super()._run(state, cancel, deadline)


@pytest.mark.parametrize("in_process", [True, False])
def test_a_continuation_cut_before_its_first_token_prefills_in_long_slices(in_process: bool) -> None:
    """Nothing to publish while the prompt is prefilling: with a source that prefills only while resumed the
    background slices are PREFILL_SLICE_MS (a prefill chunk as wide as that allows), and 40 ms again once
    tokens come (type-through gets them); a remote source prefills on its own and keeps 40 ms slices."""
    source = PrefillingSource(prefills_while_resumed=in_process)
    service = serve(source)
    heard = Heard(service)
    try:
        first = service.complete(ask(service, "1"))
        assert (first.text, first.finish_reason) == ("", "deadline")  # cut while prefilling (60 ms of 200)
        assert heard.wait(1)[-1][1] in ("ready", "timeLimit")
        first_slice = source.slices_ms[0]
        assert first_slice[0] == 0
        expected_ms = flights.PREFILL_SLICE_MS if in_process else flights.CONTINUE_SLICE_MS
        assert expected_ms - 50 < first_slice[1] <= expected_ms + 1
        later = [ms for tokens, ms in source.slices_ms[1:] if tokens > 0]
        assert later and all(ms <= flights.CONTINUE_SLICE_MS + 1 for ms in later)
    finally:
        service.close()


BUSY_URI = "file:///busy.py"


@dataclass
class BlockingSource(SlowSource):
    """SlowSource whose generation for BUSY_URI first waits for `gate` (a prefill chunk that cannot be cut);
    `whole_at_once`: any other generation is whole in its first step, whatever its deadline."""

    gate: threading.Event = field(default_factory=threading.Event)
    whole_at_once: bool = False

    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline, corpus: Sequence[int] = (), *, document: str = "") -> Generation:
        if document == BUSY_URI:
            assert self.gate.wait(10)
        elif self.whole_at_once:
            self.generates += 1
            return self._result(_Decoding(prompt, generated=len(WORDS)), "eos")
        return super().generate(prompt, cancel, deadline, corpus, document=document)


@pytest.mark.parametrize("whole_at_once", [False, True])
def test_a_request_waiting_behind_a_busy_worker_is_answered_at_its_deadline(whole_at_once: bool) -> None:
    """The worker is stuck in another document's chunk: the request is answered at its deadline with no text
    (not after the chunk, when the user has typed on); its job runs afterwards and the editor hears when the
    answer is whole, and finds it there."""
    source = BlockingSource(whole_at_once=whole_at_once)
    service = serve(source)
    heard = Heard(service)
    try:
        busy = service.submit(ask(service, "a", BUSY_URI))
        waiting = service.submit(ask(service, "b"))
        answer = waiting.result(timeout=5)
        assert not source.gate.is_set()  # answered while the worker was still busy
        assert (answer.text, answer.source, answer.finish_reason, answer.request_id) == ("", "none", flights.BUSY, "b")
        assert answer.timings.get("queued") > 0
        source.gate.set()
        assert busy.result(timeout=5).finish_reason != flights.BUSY  # its job had started: it answers itself
        heard.wait_for(("file:///a.py", "ready", "b"))
        again = service.complete(ask(service, "c"))
        assert (again.text, again.source) == (WHOLE, "cache" if whole_at_once else "continuation")
    finally:
        service.close()


def test_a_request_whose_job_runs_by_its_deadline_is_not_answered_early() -> None:
    """The alarm answers only jobs that have not started: a running one answers itself at its deadline."""
    source = SlowSource()
    service = serve(source)
    heard = Heard(service)
    try:
        answer = service.complete(ask(service, "1"))
        assert answer.source == "model" and answer.finish_reason == "deadline" and answer.text.startswith("r")
        heard.wait(1)
    finally:
        service.close()
