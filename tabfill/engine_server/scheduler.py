"""The scheduler thread: the one thread that owns the model and drives `BatchedEngine.step()`.

Keystroke scheduling: a newer request for the same document supersedes the queued or running one at once
(never two generations for one document); waiting requests start shortest-deadline first; the wait queue is
bounded and a full queue answers busy rather than growing. The network side calls `submit` and `cancel`
from its own thread; only this thread calls the engine's add/cancel/step.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tabfill.engine_server.batch_api import BatchEvent, BatchRequest

log = logging.getLogger(__name__)


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
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float = 0.0
    first_event: float = 0.0
    generated: int = 0
    finished: bool = False

    @property
    def id(self) -> str:
        return str(self.request.id)


def final_event(job: Job, finish: str) -> BatchEvent:
    return BatchEvent(job.id, (), "", finish, 0, len(job.request.prompt.token_ids))


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
        self._to_cancel: list[str] = []
        self._arrivals = itertools.count()
        self._closed = False
        self.steps = 0
        self.generated_tokens = 0
        self.step_seconds = 0.0
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

    def submit(self, job: Job) -> None:
        """Queue `job`, superseding the document's previous one; raises Busy when the queue is full."""
        superseded: Job | None = None
        with self._cond:
            if job.id in self._queued or job.id in self._running:
                raise ValueError(f"request id {job.id!r} is already in flight")
            if job.document:
                previous = self._documents.get(job.document)
                if previous is not None and self._drop(previous):
                    superseded = previous
            full = len(self._queued) >= self.max_queue
            if not full:
                self._queued[job.id] = job
                if job.document:
                    self._documents[job.document] = job
                heapq.heappush(self._queue, (job.request.priority, next(self._arrivals), job))
            self._cond.notify_all()
        if superseded is not None:
            superseded.sink(superseded, final_event(superseded, "superseded"))
        if full:
            raise Busy(f"{self.max_queue} requests are waiting (the limit)")

    def cancel(self, request_id: str, finish: str = "cancelled") -> bool:
        """Stop a queued or running request now (its last event, `finish`, is sent here); False if unknown."""
        with self._cond:
            job = self._queued.get(request_id) or self._running.get(request_id)
            if job is None or not self._drop(job):
                return False
            self._cond.notify_all()
        job.sink(job, final_event(job, finish))
        return True

    def _drop(self, job: Job) -> bool:
        """Forget `job` (lock held): a queued one is skipped when popped, a running one is cancelled in the
        engine before its next step. Its later engine events are discarded. False if it already ended."""
        if job.finished:
            return False
        job.finished = True
        if self._queued.pop(job.id, None) is None and self._running.pop(job.id, None) is not None:
            self._to_cancel.append(job.id)
        if self._documents.get(job.document) is job:
            del self._documents[job.document]
        return True

    def describe(self) -> dict[str, Any]:
        with self._cond:
            return {
                "slots": self.slots, "running": len(self._running), "queued": len(self._queued), "maxQueue": self.max_queue,
                "steps": self.steps, "generatedTokens": self.generated_tokens, "stepSeconds": round(self.step_seconds, 3),
            }

    # ------------------------------------------------------------------ the scheduler thread
    def _take_work(self) -> tuple[list[str], list[Job]] | None:
        with self._cond:
            while not self._closed and not self._queued and not self._running and not self._to_cancel:
                self._cond.wait()
            if self._closed:
                return None
            cancels, self._to_cancel = self._to_cancel, []
            admitted: list[Job] = []
            while self._queue and len(self._running) < self.slots:
                _, _, job = heapq.heappop(self._queue)
                if self._queued.pop(job.id, None) is job:
                    self._running[job.id] = job
                    job.admitted = time.perf_counter()
                    admitted.append(job)
            if not self._queued:
                self._queue.clear()  # only dropped jobs were left in the heap
            return cancels, admitted

    def _run(self) -> None:
        while True:
            work = self._take_work()
            if work is None:
                return
            cancels, admitted = work
            try:
                for request_id in cancels:
                    self.engine.cancel(request_id)
                for job in admitted:
                    try:
                        self.engine.add(job.request)
                    except ValueError as exc:
                        log.info("request %s refused by the engine: %s", job.id, exc)
                        self._finish(job, "error")
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
            job.first_event = job.first_event or now
            job.generated += len(event.token_ids)
            self.generated_tokens += len(event.token_ids)
            job.sink(job, event)

    def _finish(self, job: Job, finish: str) -> None:
        with self._cond:
            if not self._drop(job):
                return
            self._to_cancel = [i for i in self._to_cancel if i != job.id]
        job.sink(job, final_event(job, finish))

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
