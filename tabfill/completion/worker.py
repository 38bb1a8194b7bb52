"""One thread owns the model and the device; work reaches it through a queue.

Newest wins: a job submitted with the same key as a queued one replaces it (the old one is cancelled
before it starts), and a running one sees its cancel token set by the caller.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tabfill.completion.types import CancelToken

log = logging.getLogger(__name__)

T = TypeVar("T")


class Cancelled(Exception):
    """The job was cancelled or superseded before or while running."""


@dataclass
class _Job(Generic[T]):
    fn: Callable[[CancelToken], T]
    cancel: CancelToken
    key: str | None
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
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[CancelToken], T], cancel: CancelToken | None = None, key: str | None = None) -> Future[T]:
        job: _Job[T] = _Job(fn, cancel or CancelToken(), key)
        with self._cond:
            if self._closed:
                _fail(job.future, Cancelled("engine worker is closed"))
                return job.future
            if key is not None:
                for old in [queued for queued in self._queue if queued.key == key]:
                    self._queue.remove(old)
                    old.cancel.cancel("superseded")
                    _fail(old.future, Cancelled("superseded before it started"))
            self._queue.append(job)
            self._cond.notify()
        return job.future

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            for job in self._queue:
                job.cancel.cancel("shutdown")
                _fail(job.future, Cancelled("shutdown"))
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
            if job.cancel.cancelled:
                _fail(job.future, Cancelled(job.cancel.reason or "cancelled"))
                continue
            if not job.future.set_running_or_notify_cancel():  # the waiter cancelled it while queued
                continue
            try:
                job.future.set_result(job.fn(job.cancel))
            except Exception as exc:  # delivered to the waiter; the worker must survive it
                log.debug("job failed: %r", exc)
                _fail(job.future, exc)
