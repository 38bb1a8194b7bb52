import threading
from concurrent.futures import Future

import pytest

from tabfill.completion.types import CancelToken
from tabfill.completion.worker import Cancelled, EngineWorker


def _busy_worker() -> tuple[EngineWorker, threading.Event, Future[str]]:
    """A worker whose thread is busy until the returned gate is set (so later jobs stay queued)."""
    worker = EngineWorker()
    gate = threading.Event()
    started = threading.Event()

    def blocker(_token: CancelToken) -> str:
        started.set()
        gate.wait(5)
        return "blocker"

    first = worker.submit(blocker, key="other")
    assert started.wait(5)
    return worker, gate, first


def test_newest_wins_for_queued_jobs_and_errors_propagate() -> None:
    worker, gate, first = _busy_worker()
    old = worker.submit(lambda _t: "old", key="doc")
    new = worker.submit(lambda _t: "new", key="doc")
    failing = worker.submit(lambda _t: 1 / 0, key="x")
    with pytest.raises(Cancelled):
        old.result(1)
    gate.set()
    assert first.result(5) == "blocker"
    assert new.result(5) == "new"
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    worker.close()


def test_cancelled_before_start_never_runs_and_running_job_sees_token() -> None:
    worker = EngineWorker()
    ran: list[str] = []
    token = CancelToken()
    token.cancel("gone")
    with pytest.raises(Cancelled, match="gone"):
        worker.submit(lambda _t: ran.append("x"), token).result(5)
    assert ran == []

    running = CancelToken()
    inside = threading.Event()

    def loop(t: CancelToken) -> int:
        inside.set()
        steps = 0
        while not t.cancelled and steps < 10_000_000:
            steps += 1
        return steps

    future = worker.submit(loop, running)
    assert inside.wait(5)
    running.cancel()
    assert future.result(5) < 10_000_000
    worker.close()
    with pytest.raises(Cancelled):
        worker.submit(lambda _t: 1).result(1)


def test_a_waiter_may_cancel_a_queued_future_and_the_worker_keeps_serving() -> None:
    """asyncio.wrap_future cancels the job's future when the LSP request is cancelled; superseding or
    dropping that job later must not raise (it did: InvalidStateError reached the next request)."""
    worker, gate, _ = _busy_worker()
    waiter_cancelled = worker.submit(lambda _t: "never", key="doc")
    assert waiter_cancelled.cancel()
    token = CancelToken()
    token.cancel("gone")
    dropped = worker.submit(lambda _t: "never", token, key="x")
    assert dropped.cancel()
    newer = worker.submit(lambda _t: "newer", key="doc")  # supersedes the cancelled one
    gate.set()
    assert newer.result(5) == "newer"
    assert worker.submit(lambda _t: "still serving").result(5) == "still serving"
    worker.close()
