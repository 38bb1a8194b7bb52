"""One thread owns the model and the device; work reaches it through a queue.

Newest wins: a job submitted with the same key as a queued one replaces it (the old one is cancelled
before it starts), and a running one sees its cancel token set by the caller.

Background jobs (`background=True`, e.g. warming the prefix cache for an opened document) run only when no
foreground job is queued. Submitting a foreground job drops every queued background job and cancels the
running one's token with reason "preempted"; a background job's fn checks its token between steps (prefill
chunks) and returns or raises early. Background jobs with the same key replace each other, a running one
included (its token is cancelled with reason "superseded"), since no caller holds their tokens.

When it has been idle IDLE_TRIM_S after some work, the worker gives the heap memory that the work freed back
to the system (heap.trim): its prefill tiles and activations come from a malloc arena of its own, which glibc
shrinks only from the top, so freed pages below live blocks stayed resident and the arena's footprint crept
up (+17 MB over 2,000 requests of bench.soak). It happens between jobs only, never while one runs; and under
work without a pause (a burst, a team of typists, bench.soak's back-to-back requests) at most BUSY_TRIM_S
apart, between two jobs. NOTE: bench.soak, 4,000 requests: RSS growth after the first replay less the prefix
store's 3.97 % with idle trims only (none came), 0.88 % trimming between replays (2026-12-07).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tabfill.completion import heap
from tabfill.completion.types import CancelToken

log = logging.getLogger(__name__)

T = TypeVar("T")

IDLE_TRIM_S = 2.0  # idle this long after some work: return freed heap memory to the system
BUSY_TRIM_S = 10.0  # busy this long without an idle trim: trim between two jobs


class Cancelled(Exception):
    """The job was cancelled or superseded before or while running."""


@dataclass
class _Job(Generic[T]):
    fn: Callable[[CancelToken], T]
    cancel: CancelToken
    key: str | None
    background: bool = False
    future: Future[T] = field(default_factory=Future)


def _fail(future: Future[Any], error: Exception) -> None:
    """Fail a job's future unless it is already done.

    NOTE: a waiter may cancel the future itself at any time (asyncio.wrap_future cancels it when the LSP
    request is cancelled), so a job can be CANCELLED while still queued; failing it then must not raise."""
    try:
        if not future.done():
            future.set_exception(error)
    except InvalidStateError:
        pass


class EngineWorker:
    def __init__(self, name: str = "tabfill-engine") -> None:
        self._queue: deque[_Job[Any]] = deque()
        self._background: deque[_Job[Any]] = deque()
        self._running: _Job[Any] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self,
        fn: Callable[[CancelToken], T],
        cancel: CancelToken | None = None,
        key: str | None = None,
        background: bool = False,
    ) -> Future[T]:
        job: _Job[T] = _Job(fn, cancel or CancelToken(), key, background)
        with self._cond:
            if self._closed:
                _fail(job.future, Cancelled("engine worker is closed"))
                return job.future
            if background:
                if key is not None:
                    self._drop(self._background, lambda queued: queued.key == key, "superseded")
                    running = self._running
                    if running is not None and running.background and running.key == key:
                        running.cancel.cancel("superseded")
                self._background.append(job)
            else:
                if key is not None:
                    self._drop(self._queue, lambda queued: queued.key == key, "superseded")
                # NOTE: a real request always preempts background work, queued or running.
                self._drop(self._background, lambda _queued: True, "preempted")
                running = self._running
                if running is not None and running.background:
                    running.cancel.cancel("preempted")
                self._queue.append(job)
            self._cond.notify()
        return job.future

    @staticmethod
    def _drop(queue: deque[_Job[Any]], which: Callable[[_Job[Any]], bool], reason: str) -> None:
        for old in [queued for queued in queue if which(queued)]:
            queue.remove(old)
            old.cancel.cancel(reason)
            _fail(old.future, Cancelled(f"{reason} before it started"))

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._background)

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            for queue in (self._queue, self._background):
                for job in queue:
                    job.cancel.cancel("shutdown")
                    _fail(job.future, Cancelled("shutdown"))
                queue.clear()
            if self._running is not None and self._running.background:
                self._running.cancel.cancel("shutdown")
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        trims = heap.TrimSchedule(IDLE_TRIM_S, BUSY_TRIM_S)
        while True:
            trims.between()
            with self._cond:
                self._running = None
                idle = False
                while not self._queue and not self._background and not self._closed and not idle:
                    idle = not self._cond.wait(trims.wait_s()) and trims.working
                if self._closed:
                    return
                if not idle:
                    # NOTE: set under the lock that `submit` holds, so a foreground submit either sees this
                    # background job running (and cancels its token) or still queued (and drops it).
                    job = self._running = self._queue.popleft() if self._queue else self._background.popleft()
            if idle:  # outside the lock: a job submitted meanwhile queues at once and runs right after
                trims.idle()
                continue
            trims.worked()
            if job.cancel.cancelled:
                _fail(job.future, Cancelled(job.cancel.reason or "cancelled"))
                continue
            if not job.future.set_running_or_notify_cancel():  # the waiter cancelled it while queued
                continue
            try:
                job.future.set_result(job.fn(job.cancel))
            except Cancelled as exc:
                log.debug("job cancelled: %s", exc)
                _fail(job.future, exc)
            except Exception as exc:  # delivered to the waiter; the worker must survive it
                # NOTE: a background job (warm-up, continuation) has no waiter to see this: say it here.
                log.warning("%s job failed", "background" if job.background else "engine", exc_info=exc)
                _fail(job.future, exc)
