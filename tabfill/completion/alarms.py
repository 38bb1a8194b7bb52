"""Calls at a monotonic time, from one thread: a request's answer due at its deadline while the engine worker
is still busy with something else (completion.flights).

The functions run on the alarm thread, one after another; they must be short and must not block. One that
raises is logged and the others still run.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Alarms:
    def __init__(self, name: str = "tabfill-alarms") -> None:
        self._name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties go in the order they were set
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def at(self, when: float, fn: Callable[[], None]) -> None:
        """Call `fn()` at `when` (time.monotonic() seconds), or soon after; at once when it is past."""
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (when, next(self._order), fn))
            if self._thread is None:  # NOTE: started on first use, so a service that never sets one has no thread
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, timeout: float = 1.0) -> None:
        """Drop the alarms not yet due and stop the thread."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # one failed alarm must not stop the others
                log.exception("alarm failed")
