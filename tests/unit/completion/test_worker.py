import functools
import threading
import time
from collections.abc import Callable
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


def _stepper(log: list[str], name: str, started: threading.Event | None = None) -> Callable[[CancelToken], str]:
    """A background job in steps (like prefill chunks) that checks its token between steps."""

    def run(token: CancelToken) -> str:
        log.append(f"{name} start")
        if started is not None:
            started.set()
        for _ in range(500):
            if token.cancelled:
                log.append(f"{name} {token.reason}")
                raise Cancelled(token.reason)
            time.sleep(0.01)
        log.append(f"{name} done")
        return name

    return run


def test_background_waits_for_queued_foreground_jobs() -> None:
    worker, gate, first = _busy_worker()
    order: list[str] = []
    warm = worker.submit(lambda _t: order.append("background"), key="doc", background=True)
    fg = worker.submit(lambda _t: order.append("foreground"), key="other-doc")
    # NOTE: submitting the foreground job dropped the queued background one.
    with pytest.raises(Cancelled, match="preempted"):
        warm.result(1)
    later = worker.submit(lambda _t: order.append("background 2"), key="doc", background=True)
    assert worker.pending == 2
    gate.set()
    later.result(5)
    fg.result(5)
    assert order == ["foreground", "background 2"]
    assert first.result(5) == "blocker"
    worker.close()


def test_background_runs_when_the_worker_is_idle_and_same_keys_replace_each_other() -> None:
    worker = EngineWorker()
    assert worker.submit(lambda _t: "warm", key="doc", background=True).result(5) == "warm"
    worker2, gate, _ = _busy_worker()
    old = worker2.submit(lambda _t: "old", key="doc", background=True)
    other = worker2.submit(lambda _t: "other", key="doc2", background=True)
    new = worker2.submit(lambda _t: "new", key="doc", background=True)
    with pytest.raises(Cancelled, match="superseded"):
        old.result(1)
    gate.set()
    assert new.result(5) == "new" and other.result(5) == "other"
    worker.close()
    worker2.close()


def test_a_foreground_job_preempts_a_running_background_job() -> None:
    worker = EngineWorker()
    log: list[str] = []
    started = threading.Event()
    token = CancelToken()
    warm = worker.submit(_stepper(log, "warm", started), token, key="doc", background=True)
    assert started.wait(5)
    def request(_token: CancelToken) -> str:
        log.append("request")
        return "served"

    fg = worker.submit(request, key="doc")
    assert fg.result(5) == "served"
    assert token.cancelled and token.reason == "preempted"
    with pytest.raises(Cancelled, match="preempted"):
        warm.result(5)
    assert log == ["warm start", "warm preempted", "request"]
    worker.close()


def test_a_newer_background_job_supersedes_a_running_one_with_its_key() -> None:
    worker = EngineWorker()
    log: list[str] = []
    started = threading.Event()
    old = worker.submit(_stepper(log, "old", started), key="doc", background=True)
    assert started.wait(5)
    other = worker.submit(lambda _t: "other", key="doc2", background=True)  # another key: not cancelled
    new = worker.submit(lambda _t: "new", key="doc", background=True)
    with pytest.raises(Cancelled, match="superseded"):
        old.result(5)
    assert other.result(5) == "other" and new.result(5) == "new"
    worker.close()


def test_close_cancels_queued_and_running_background_jobs() -> None:
    worker = EngineWorker()
    log: list[str] = []
    started = threading.Event()
    running = worker.submit(_stepper(log, "running", started), key="a", background=True)
    assert started.wait(5)
    queued = worker.submit(lambda _t: "never", key="b", background=True)
    worker.close()
    with pytest.raises(Cancelled, match="shutdown"):
        queued.result(1)
    with pytest.raises(Cancelled, match="shutdown"):
        running.result(5)


def test_an_idle_worker_gives_freed_memory_back_once_after_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from tabfill.completion import heap, worker as worker_module

    trims: list[float] = []
    monkeypatch.setattr(worker_module, "IDLE_TRIM_S", 0.05)
    monkeypatch.setattr(heap, "trim", lambda: trims.append(time.monotonic()) or True)
    engine = EngineWorker()
    try:
        time.sleep(0.2)
        assert trims == []  # no work yet: nothing to give back
        assert engine.submit(lambda _token: 7).result(timeout=5) == 7
        time.sleep(0.3)
        assert len(trims) == 1  # once after the work, not again while idle
        assert engine.submit(lambda _token: 8).result(timeout=5) == 8  # and the worker still takes jobs
        time.sleep(0.3)
        assert len(trims) == 2
    finally:
        engine.close()


def test_a_worker_that_never_idles_still_trims_between_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from tabfill.completion import heap, worker as worker_module

    events: list[str] = []
    monkeypatch.setattr(worker_module, "IDLE_TRIM_S", 60.0)  # never idle long enough in this test
    monkeypatch.setattr(worker_module, "BUSY_TRIM_S", 0.05)
    monkeypatch.setattr(heap, "trim", lambda: events.append("trim") or True)
    engine = EngineWorker()
    try:
        def job(_token: CancelToken, name: str) -> str:
            events.append(name)
            time.sleep(0.03)
            return name

        futures = [engine.submit(functools.partial(job, name=f"job{i}")) for i in range(6)]
        assert [future.result(timeout=5) for future in futures] == [f"job{i}" for i in range(6)]
        jobs_between = [event for event in events if event != "trim"]
        assert jobs_between == [f"job{i}" for i in range(6)]  # every job ran, in order
        assert 1 <= events.count("trim") <= 5, events  # ~every 0.05 s of a 0.18 s run of work, only between jobs
        assert events[0] == "job0"  # nothing to give back before the first job
    finally:
        engine.close()
