"""The scheduler thread: the one thread that owns the model and drives `BatchedEngine.step()`.

Keystroke scheduling: a newer request for the same document supersedes the queued or running one at once
(never two generations for one document); waiting requests start shortest-deadline first; the wait queue is
bounded and a full queue answers busy rather than growing. The network side calls `submit` and `cancel`
from its own thread; only this thread calls the engine's add/cancel/step.

Warm-ups (`submit_warm`): a prompt expected soon, prefilled (one token generated) so that its KV is in the
tenant's prefix store when the keystroke comes. They are the lowest class: started only when no keystroke
request waits, at most WARM_SLOTS at once, taken off the engine when a keystroke request needs their slot,
replaced by a newer warm-up of their document and dropped by any request of it; never answered.

Freed heap memory goes back to the system as in `tabfill serve`'s worker (tabfill.completion.worker): a trim
after IDLE_TRIM_S idle following some work, and between two steps every BUSY_TRIM_S of work without a pause.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tabfill.completion import heap
from tabfill.completion.worker import BUSY_TRIM_S, IDLE_TRIM_S
from tabfill.engine_server.batch_api import BackendUnavailable, BatchEvent, BatchRequest

log = logging.getLogger(__name__)

WARM_SLOTS = 2  # warm-ups prefilling at once (the engine prefills one chunk per step anyway)
WARM_PRIORITY_S = 3600.0  # a warm-up's priority: after every keystroke request in the engine's own order
IDLE = "idle"  # _take_work: nothing to do for IDLE_TRIM_S after some work


class StepEngine(Protocol):
    """What the scheduler needs of a batched engine (tabfill.completion.batching.BatchedEngine)."""

    def add(self, request: BatchRequest) -> None: ...
    def cancel(self, request_id: str) -> None: ...
    def step(self) -> list[BatchEvent]: ...
    @property
    def idle(self) -> bool: ...


class Busy(Exception):
    """The wait queue is full: answer `busy`."""


@dataclass(eq=False)
class Job:
    """One generation. `sink(job, event)` is called for each of its events (on any thread, exactly one event
    with `finish` set, the last). `document` ("" = none) scopes supersession."""

    request: BatchRequest
    document: str
    sink: Callable[[Job, BatchEvent], None]
    warm: bool = False  # a warm-up: prefill only, lowest class, never answered
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float = 0.0
    first_event: float = 0.0
    generated: int = 0
    finished: bool = False

    @property
    def id(self) -> str:
        return str(self.request.id)


def final_event(job: Job, finish: str, unavailable: str = "") -> BatchEvent:
    return BatchEvent(job.id, (), "", finish, 0, len(job.request.prompt.token_ids), unavailable)


class Scheduler:
    def __init__(self, engine: StepEngine, *, slots: int, max_queue: int = 64) -> None:
        self.engine = engine
        self.slots = slots
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Job]] = []  # (priority, arrival, job); dropped jobs stay until popped
        self._queued: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._documents: dict[str, Job] = {}
        self._warms: OrderedDict[str, Job] = OrderedDict()  # waiting warm-ups, oldest first (at most max_queue)
        self._to_cancel: list[str] = []
        self._arrivals = itertools.count()
        self._closed = False
        self.steps = 0
        self.generated_tokens = 0
        self.step_seconds = 0.0
        self.warm_counts = {"started": 0, "done": 0, "dropped": 0}
        # How keystroke requests ended (finish -> count; "...WithoutTokens": ended before their first token)
        # and how long they waited for a slot and for their first event (ms, summed): where an engine that
        # cannot keep up loses its answers.
        self.outcomes: dict[str, int] = {}
        self.waits = {"admitted": 0, "admitWaitMs": 0, "firstEvents": 0, "firstEventMs": 0}
        self._thread = threading.Thread(target=self._run, name="tabfill-scheduler", daemon=True)

    # ------------------------------------------------------------------ network side (any thread)
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _wake_engine(self) -> None:
        """An engine whose step waits for I/O (the OpenAI backend) returns from it to take new work."""
        wake = getattr(self.engine, "wake", None)
        if callable(wake):
            wake()

    def submit(self, job: Job) -> None:
        """Queue `job`, superseding the document's previous one; raises Busy when the queue is full."""
        superseded: Job | None = None
        with self._cond:
            if job.id in self._queued or job.id in self._running or job.id in self._warms:
                raise ValueError(f"request id {job.id!r} is already in flight")
            if job.document:
                previous = self._documents.get(job.document)
                if previous is not None and self._drop(previous):
                    superseded = previous
                    self.warm_counts["dropped"] += previous.warm
                    if not previous.warm and not previous.generated and previous.request.priority < job.request.priority:
                        # NOTE: the document is still waiting for an answer: it keeps its place (an editor typing
                        # faster than the engine answers would else go to the back at every keystroke)
                        job.request = dataclasses.replace(job.request, priority=previous.request.priority)
            full = len(self._queued) >= self.max_queue
            if not full:
                self._queued[job.id] = job
                if job.document:
                    self._documents[job.document] = job
                heapq.heappush(self._queue, (job.request.priority, next(self._arrivals), job))
            self._cond.notify_all()
        self._wake_engine()
        if superseded is not None:
            self._ended(superseded, "superseded")
            superseded.sink(superseded, final_event(superseded, "superseded"))
        if full:
            raise Busy(f"{self.max_queue} requests are waiting (the limit)")

    def submit_warm(self, job: Job) -> bool:
        """Queue a warm-up (`job.warm`), replacing its document's waiting or running one. False (and nothing
        queued) when a request of its document is open: that request's prefill is the warm-up."""
        assert job.warm
        dropped: list[Job] = []
        with self._cond:
            if job.id in self._queued or job.id in self._running or job.id in self._warms:
                raise ValueError(f"request id {job.id!r} is already in flight")
            previous = self._documents.get(job.document) if job.document else None
            if previous is not None and not previous.warm:
                return False
            if previous is not None and self._drop(previous):
                dropped.append(previous)
            while len(self._warms) >= self.max_queue:
                _, oldest = self._warms.popitem(last=False)
                if self._drop(oldest):
                    dropped.append(oldest)
            self._warms[job.id] = job
            if job.document:
                self._documents[job.document] = job
            self.warm_counts["dropped"] += len(dropped)
            self._cond.notify_all()
        self._wake_engine()
        for old in dropped:
            old.sink(old, final_event(old, "superseded"))
        return True

    def cancel(self, request_id: str, finish: str = "cancelled") -> bool:
        """Stop a queued or running request now (its last event, `finish`, is sent here); False if unknown."""
        with self._cond:
            job = self._queued.get(request_id) or self._running.get(request_id) or self._warms.get(request_id)
            if job is None or not self._drop(job):
                return False
            self._cond.notify_all()
        self._wake_engine()
        self._ended(job, finish)
        job.sink(job, final_event(job, finish))
        return True

    def _drop(self, job: Job) -> bool:
        """Forget `job` (lock held): a queued one is skipped when popped, a running one is cancelled in the
        engine before its next step. Its later engine events are discarded. False if it already ended."""
        if job.finished:
            return False
        job.finished = True
        queued = self._queued.pop(job.id, None) or self._warms.pop(job.id, None)
        if queued is None and self._running.pop(job.id, None) is not None:
            self._to_cancel.append(job.id)
        if self._documents.get(job.document) is job:
            del self._documents[job.document]
        return True

    def _ended(self, job: Job, finish: str) -> None:
        """Count how a keystroke request ended (warm-ups are counted apart)."""
        if job.warm:
            return
        key = finish if job.generated else f"{finish}WithoutTokens"
        with self._cond:
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def describe(self) -> dict[str, Any]:
        counters = getattr(self.engine, "counters", None)
        with self._cond:
            return {
                "slots": self.slots, "running": len(self._running), "queued": len(self._queued), "maxQueue": self.max_queue,
                "steps": self.steps, "generatedTokens": self.generated_tokens, "stepSeconds": round(self.step_seconds, 3),
                "warms": {"waiting": len(self._warms), **self.warm_counts},
                "outcomes": dict(self.outcomes), "waits": dict(self.waits),
                **({"engine": dict(counters)} if isinstance(counters, dict) else {}),
            }

    # ------------------------------------------------------------------ the scheduler thread
    def _take_work(self, idle_after: float | None = None) -> tuple[list[str], list[Job], list[Job]] | str | None:
        """(engine cancels, jobs to add, warm-ups taken off for a keystroke request); IDLE when there was none
        for `idle_after` seconds; None once closed."""
        with self._cond:
            while not self._closed and not self._queued and not self._running and not self._to_cancel and not self._warms:
                if not self._cond.wait(idle_after) and idle_after is not None:
                    return IDLE
            if self._closed:
                return None
            preempted: list[Job] = []
            if len(self._queued) > self.slots - len(self._running):  # keystrokes wait: warm-ups give their slots
                for job in [job for job in self._running.values() if job.warm][: len(self._queued)]:
                    self._drop(job)
                    preempted.append(job)
                self.warm_counts["dropped"] += len(preempted)
            cancels, self._to_cancel = self._to_cancel, []
            admitted: list[Job] = []
            while self._queue and len(self._running) < self.slots:
                _, _, job = heapq.heappop(self._queue)
                if self._queued.pop(job.id, None) is job:
                    self._admit(job, admitted)
            if not self._queued:
                self._queue.clear()  # only dropped jobs were left in the heap
                warming = sum(1 for job in self._running.values() if job.warm)
                while self._warms and warming < WARM_SLOTS and len(self._running) < self.slots:
                    _, job = self._warms.popitem()  # NOTE: the newest first: the cursor rests there now
                    self._admit(job, admitted)
                    warming += 1
                    self.warm_counts["started"] += 1
            return cancels, admitted, preempted

    def _admit(self, job: Job, admitted: list[Job]) -> None:
        self._running[job.id] = job
        job.admitted = time.perf_counter()
        admitted.append(job)
        if not job.warm:
            self.waits["admitted"] += 1
            self.waits["admitWaitMs"] += round((job.admitted - job.submitted) * 1000)

    def _run(self) -> None:
        trims = heap.TrimSchedule(IDLE_TRIM_S, BUSY_TRIM_S)
        while True:
            trims.between()
            work = self._take_work(trims.wait_s())
            if work is None:
                return
            if work == IDLE:  # outside the lock: a request submitted meanwhile waits only for the trim
                trims.idle()
                continue
            assert not isinstance(work, str)
            trims.worked()
            cancels, admitted, preempted = work
            for job in preempted:
                job.sink(job, final_event(job, "cancelled"))
            try:
                for request_id in cancels:
                    self.engine.cancel(request_id)
                for job in admitted:
                    try:
                        self.engine.add(job.request)
                    except ValueError as exc:
                        log.info("request %s refused by the engine: %s", job.id, exc)
                        self._finish(job, "error", str(exc) if isinstance(exc, BackendUnavailable) else "")
                if self.engine.idle:
                    self._fail_running("the engine went idle with requests running")
                    continue
                started = time.perf_counter()
                events = self.engine.step()
                self.steps += 1
                self.step_seconds += time.perf_counter() - started
            except Exception:  # a failing step must not take the engine down for everyone
                log.exception("engine step failed; failing the running requests")
                self._fail_running("")
                continue
            self._dispatch(events)

    def _dispatch(self, events: list[BatchEvent]) -> None:
        now = time.perf_counter()
        for event in events:
            with self._cond:
                job = self._running.get(event.id)
                if job is None:
                    continue  # cancelled or superseded meanwhile: its last event was already sent
                if event.finish is not None:
                    job.finished = True
                    del self._running[event.id]
                    if self._documents.get(job.document) is job:
                        del self._documents[job.document]
                    if job.warm:
                        self.warm_counts["done"] += 1
            if not job.first_event and event.token_ids and not job.warm:
                job.first_event = now
                self.waits["firstEvents"] += 1
                self.waits["firstEventMs"] += round((now - job.submitted) * 1000)
            job.generated += len(event.token_ids)
            if event.finish is not None:
                self._ended(job, event.finish)
            self.generated_tokens += len(event.token_ids)
            job.sink(job, event)

    def _finish(self, job: Job, finish: str, unavailable: str = "") -> None:
        with self._cond:
            if not self._drop(job):
                return
            self._to_cancel = [i for i in self._to_cancel if i != job.id]
        self._ended(job, finish)
        job.sink(job, final_event(job, finish, unavailable))

    def _fail_running(self, why: str) -> None:
        if why:
            log.error("%s", why)
        with self._cond:
            jobs = list(self._running.values())
        for job in jobs:
            self._finish(job, "error")
        for job in jobs:
            try:
                self.engine.cancel(job.id)
            except Exception:
                log.debug("cancel after a failed step raised", exc_info=True)
