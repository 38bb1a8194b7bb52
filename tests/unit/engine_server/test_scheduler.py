"""The scheduler thread against a fake batched engine: supersede, deadline order, bounded queue, failures."""

from __future__ import annotations

import threading
import time

import pytest

from tabfill.completion import heap
from tabfill.completion.types import Prompt, StopRule
from tabfill.engine_server.batch_api import BatchEvent, BatchRequest
from tabfill.engine_server.scheduler import Busy, Job, Scheduler
from tests.unit.engine_server.fakes import FakeEngine


class Recorder:
    def __init__(self) -> None:
        self.events: dict[str, list[BatchEvent]] = {}
        self.finished = threading.Condition()

    def __call__(self, job: Job, event: BatchEvent) -> None:
        with self.finished:
            self.events.setdefault(job.id, []).append(event)
            self.finished.notify_all()

    def finish(self, request_id: str, timeout: float = 5.0) -> str:
        with self.finished:
            assert self.finished.wait_for(lambda: any(e.finish for e in self.events.get(request_id, [])), timeout), request_id
            finishes = [e.finish for e in self.events[request_id] if e.finish]
        assert len(finishes) == 1, finishes  # exactly one last event
        return str(finishes[0])


def job(request_id: str, recorder: Recorder, *, document: str = "", priority: float = 0.0, new_tokens: int = 3, warm: bool = False) -> Job:
    prompt = Prompt((1, 2, 3), new_tokens, StopRule())
    return Job(BatchRequest(request_id, prompt, b"salt", priority), document, recorder, warm=warm)


def warm(request_id: str, recorder: Recorder, document: str = "", new_tokens: int = 1) -> Job:
    return job(request_id, recorder, document=document, priority=3600.0, new_tokens=new_tokens, warm=True)


def test_a_newer_request_for_the_same_document_supersedes_the_running_one_at_once() -> None:
    engine, recorder = FakeEngine(step_delay_s=0.01), Recorder()
    scheduler = Scheduler(engine, slots=2)
    scheduler.start()
    try:
        scheduler.submit(job("a1", recorder, document="doc", new_tokens=500))
        time.sleep(0.05)
        scheduler.submit(job("a2", recorder, document="doc"))
        assert recorder.finish("a1") == "superseded"
        assert recorder.finish("a2") == "length"
        # never two generations of one document at once: a1 leaves the engine before a2 joins it
        assert engine.log == [("add", "a1"), ("cancel", "a1"), ("add", "a2")]
    finally:
        scheduler.close()


def test_waiting_requests_start_shortest_deadline_first_and_a_full_queue_answers_busy() -> None:
    engine, recorder = FakeEngine(), Recorder()
    scheduler = Scheduler(engine, slots=1, max_queue=3)  # not started: everything waits
    for request_id, priority in (("late", 30.0), ("soon", 10.0), ("middle", 20.0)):
        scheduler.submit(job(request_id, recorder, priority=priority))
    with pytest.raises(Busy):
        scheduler.submit(job("one-too-many", recorder))
    scheduler.start()
    try:
        for request_id in ("late", "soon", "middle"):
            assert recorder.finish(request_id) == "length"
        assert engine.started == ["soon", "middle", "late"]
        assert "one-too-many" not in recorder.events
    finally:
        scheduler.close()


def test_cancel_of_a_running_request_frees_its_slot_for_the_next() -> None:
    engine, recorder = FakeEngine(step_delay_s=0.005), Recorder()
    scheduler = Scheduler(engine, slots=1)
    scheduler.start()
    try:
        scheduler.submit(job("long", recorder, new_tokens=10_000))
        scheduler.submit(job("next", recorder))
        time.sleep(0.05)
        assert "next" not in engine.started
        assert scheduler.cancel("long")
        assert recorder.finish("long") == "cancelled"
        assert recorder.finish("next") == "length"
        assert engine.cancelled == ["long"]
        assert not scheduler.cancel("long")  # ended: nothing to cancel
    finally:
        scheduler.close()


def test_a_failing_step_fails_its_requests_and_the_scheduler_keeps_serving() -> None:
    engine, recorder = FakeEngine(), Recorder()
    engine.fail_next = True
    scheduler = Scheduler(engine, slots=2)
    scheduler.start()
    try:
        scheduler.submit(job("doomed", recorder))
        assert recorder.finish("doomed") == "error"
        scheduler.submit(job("fine", recorder))
        assert recorder.finish("fine") == "length"
    finally:
        scheduler.close()


def test_a_request_the_engine_refuses_ends_with_error_and_others_run() -> None:
    engine, recorder = FakeEngine(), Recorder()
    scheduler = Scheduler(engine, slots=2)
    scheduler.start()
    try:
        long_prompt = Prompt(tuple(range(60)), 3, StopRule())
        scheduler.submit(Job(BatchRequest("too-long", long_prompt, b"s", 0.0), "", recorder))
        scheduler.submit(job("ok", recorder))
        assert recorder.finish("too-long") == "error"
        assert recorder.finish("ok") == "length"
    finally:
        scheduler.close()


def test_a_warm_up_starts_only_when_no_keystroke_request_waits() -> None:
    engine, recorder = FakeEngine(), Recorder()
    scheduler = Scheduler(engine, slots=1)  # not started: everything waits
    scheduler.submit(job("typing-1", recorder, document="a"))
    assert scheduler.submit_warm(warm("rest", recorder, document="b"))
    scheduler.submit(job("typing-2", recorder, document="c"))
    scheduler.start()
    try:
        assert recorder.finish("rest") == "length"
        assert engine.started == ["typing-1", "typing-2", "rest"]
        assert scheduler.describe()["warms"] == {"waiting": 0, "started": 1, "done": 1, "dropped": 0}
    finally:
        scheduler.close()


def test_a_keystroke_request_takes_the_slot_of_a_running_warm_up() -> None:
    engine, recorder = FakeEngine(step_delay_s=0.005), Recorder()
    scheduler = Scheduler(engine, slots=1)
    scheduler.start()
    try:
        assert scheduler.submit_warm(warm("rest", recorder, document="a", new_tokens=10_000))
        assert wait_until(lambda: "rest" in engine.started)
        scheduler.submit(job("typing", recorder, document="b"))
        assert recorder.finish("rest") == "cancelled"
        assert recorder.finish("typing") == "length"
        assert engine.log == [("add", "rest"), ("cancel", "rest"), ("add", "typing")]
        assert scheduler.describe()["warms"]["dropped"] == 1
    finally:
        scheduler.close()


def test_warm_ups_give_way_to_their_document_and_a_newer_warm_up_replaces_the_older() -> None:
    engine, recorder = FakeEngine(), Recorder()
    scheduler = Scheduler(engine, slots=2)  # not started
    assert scheduler.submit_warm(warm("w1", recorder, document="a"))
    assert scheduler.submit_warm(warm("w2", recorder, document="a"))  # the cursor moved: w1 is stale
    assert recorder.finish("w1") == "superseded"
    scheduler.submit(job("typing", recorder, document="a"))  # the keystroke came: its own prefill warms
    assert recorder.finish("w2") == "superseded"
    assert not scheduler.submit_warm(warm("w3", recorder, document="a"))  # a request of the document is open
    scheduler.start()
    try:
        assert recorder.finish("typing") == "length"
        time.sleep(0.05)
        assert engine.started == ["typing"]
        assert scheduler.describe()["warms"] == {"waiting": 0, "started": 0, "done": 0, "dropped": 2}
    finally:
        scheduler.close()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return bool(predicate())


def test_a_keystroke_superseding_an_unanswered_one_keeps_its_document_s_place() -> None:
    """An editor typing faster than the engine answers keeps the place of its first unanswered keystroke (it
    would else go to the back of the queue at every key); once answered, a new keystroke queues anew. How
    the requests ended is counted."""
    engine, recorder = FakeEngine(), Recorder()
    scheduler = Scheduler(engine, slots=1)  # not started: everything waits
    scheduler.submit(job("a1", recorder, document="a", priority=10.0))
    scheduler.submit(job("b1", recorder, document="b", priority=20.0))
    scheduler.submit(job("a2", recorder, document="a", priority=30.0))  # a1 unanswered: a2 keeps 10.0
    assert recorder.finish("a1") == "superseded"
    scheduler.start()
    try:
        assert recorder.finish("a2") == "length" and recorder.finish("b1") == "length"
        assert engine.started == ["a2", "b1"]
        answered = job("a3", recorder, document="a", priority=40.0)
        scheduler.submit(answered)
        assert recorder.finish("a3") == "length"
        assert answered.request.priority == 40.0  # a2 was answered: nothing to inherit
        outcomes = scheduler.describe()["outcomes"]
        assert outcomes == {"supersededWithoutTokens": 1, "length": 3}
    finally:
        scheduler.close()


def test_the_scheduler_gives_freed_heap_back_when_idle_and_between_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """As `tabfill serve`'s worker: a trim after IDLE_TRIM_S idle following work (never while idle from the
    start, never twice for one idle spell), and every BUSY_TRIM_S of steps without a pause."""
    import tabfill.engine_server.scheduler as scheduler_module

    trims: list[str] = []
    monkeypatch.setattr(scheduler_module, "IDLE_TRIM_S", 0.05)
    monkeypatch.setattr(scheduler_module, "BUSY_TRIM_S", 0.05)
    monkeypatch.setattr(heap, "trim", lambda: trims.append("trim") or True)
    engine, recorder = FakeEngine(step_delay_s=0.01), Recorder()
    scheduler = Scheduler(engine, slots=1)
    scheduler.start()
    try:
        time.sleep(0.2)
        assert trims == []  # no work yet: nothing to give back
        scheduler.submit(job("long", recorder, new_tokens=30))  # ~0.3 s of steps without a pause
        assert recorder.finish("long") == "length"
        busy = len(trims)
        assert busy >= 2  # between steps, the work never paused
        time.sleep(0.3)
        assert len(trims) == busy + 1  # once after the work, not again while idle
    finally:
        scheduler.close()
