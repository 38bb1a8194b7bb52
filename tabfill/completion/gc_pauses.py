"""The pauses other threads put into a serving process's event loop: the garbage collector's, measured and kept
short by freezing what loading made, and the GIL's hand-overs, kept short by a shorter switch interval.

A collection of Python's oldest generation walks every tracked object and holds the GIL meanwhile, so it
stops every thread: the event loop, the engine thread, the team engine's scheduler. After loading the
default model, `tabfill serve`'s process tracks ~250,000 objects (the tokenizer's vocabulary, modules,
torch's and tree-sitter's Python objects) and one full collection took 124-154 ms here: more than a whole
typing deadline, whenever allocation happens to trigger one. Nearly all of those objects live as long as the
process, so once a model is loaded `loading` collects once and moves every object then alive to the
permanent generation (`gc.freeze`): later collections walk only what was made since (in process, after 30
line cases through the service and the syntax layer's caches: 5 ms). Over bench/soak.py's 10,000 requests:
without it 2 full collections of 132 and 114 ms, with it 22 of at most 15 ms. Objects frozen are still freed by reference counting; only a reference cycle
among them would wait for the next load (a reload unfreezes them first).

Loading itself makes those objects, and the collector's thresholds trip over and over meanwhile: `tabfill
serve` loading the tiny test model ran 5 full collections of 44-160 ms (500 ms in all, of a 3.7 s load) on the
loading thread, each stopping the event loop that reads the editor's first messages. Nothing loading makes is
garbage worth finding then, so `loading` switches automatic collection off for the load and collects once at
its end (success or failure).

A thread that wants the GIL back waits up to the switch interval (5 ms by default) each time, and the event
loop gives it up at every system call: with the lookup thread parsing a 1.2 MB document, one step of a
request's task (0.6 ms of CPU) took 27-48 ms in 3 of 6 runs of tests/lsp/test_event_loop.py, over its 50 ms
threshold once in CI. `hand_over_sooner` sets the interval to 1 ms (the same step: 5-13 ms in 6 runs); the
threads that compute (the parse with its progress callback, the decode loop) only switch when another thread
asks. `tabfill serve` calls it; `tabfill engine` does not: its event loop sends a delta for every token of every
stream and would interleave with the scheduler's Python between steps (one stream, two alternating rounds of
bench.team's throughput phase: 177 and 126 tokens/s at 1 ms, 186 and 162 at 5 ms; noisy, left at the default).

Off unless a serving process's entry point calls `install` (tests and library users keep the plain
collector). `describe` reports the pauses since the last model load (count, total, longest per generation, the
last full collections' durations) for the status requests: what requests can have met, not loading's own.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_state: dict[str, Any] = {"installed": False, "frozen": 0}
_started: list[float] = []
_pauses = {generation: [0, 0.0, 0.0] for generation in range(3)}  # count, total ms, longest ms
_recent_full: deque[float] = deque(maxlen=16)  # the last full collections' ms


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        ms = (time.perf_counter() - _started[0]) * 1000
        pause = _pauses.get(int(info.get("generation", 2)))
        if pause is not None:
            pause[0] += 1
            pause[1] += ms
            pause[2] = max(pause[2], ms)
            if int(info.get("generation", 2)) == 2:
                _recent_full.append(round(ms, 1))


SWITCH_INTERVAL_S = 0.001


def install() -> None:
    """Measure every collection from now on and freeze after each model load (idempotent)."""
    with _lock:
        if not _state["installed"]:
            gc.callbacks.append(_callback)
            _state["installed"] = True


def hand_over_sooner() -> None:
    """The GIL's switch interval at SWITCH_INTERVAL_S: for `tabfill serve`, whose event loop must answer while
    the lookup and engine threads compute."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """A model is (re)loaded inside: what was frozen may be freed again, automatic collection is off, and at the
    end (a failed load too) one collection, then every object alive is frozen (no-op unless installed)."""
    if not _state["installed"]:
        yield
        return
    gc.unfreeze()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        gc.enable()
        _state["frozen"] = gc.get_freeze_count()
        for pause in _pauses.values():  # NOTE: from here on: the pauses a request can meet (loading has its own)
            pause[:] = [0, 0.0, 0.0]
        _recent_full.clear()


def describe() -> dict[str, object]:
    """The pauses since the last model load, per generation: collections, total and longest milliseconds; the
    last full collections' milliseconds; objects frozen."""
    return {
        "installed": _state["installed"],
        "frozenObjects": _state["frozen"],
        "recentFullMs": list(_recent_full),
        **{
            f"generation{generation}": {"collections": count, "totalMs": round(total, 1), "longestMs": round(longest, 2)}
            for generation, (count, total, longest) in _pauses.items()
        },
    }
