"""Giving freed heap memory back to the system (glibc's malloc_trim), where the C library has it.

glibc returns a freed block to the system only when it is at the top of a heap (or is a large block of its
own mapping); memory freed below live blocks stays in the process. Loading the model frees much more than
it keeps (the tokenizer's and the GGUF header's temporary objects, the warm-up's activations): a trim after
it gives back what glibc would otherwise hold on to for the life of the server. Each trim is timed; `describe`
reports them for the status requests.

Large blocks get mappings of their own (`map_large_blocks`, set by every tabfill command): glibc's default
threshold for that starts at 128 KB and rises to the size of each large block freed (up to 32 MB), so once a
prefill had freed a block of several MB every later block below that size came from the heap and could leave
holes in it that only a trim gave back. Fixed at 2 MiB, blocks from 2 MiB up are unmapped as soon as freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading
import time

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
# Blocks of 2 MiB and more are mapped on their own and unmapped when freed (a mapping costs a page fault per
# 4 KiB touched: SmolLM2's 9-row draft-check logits, 1.8 MB, stay below it).
# NOTE: bench.soak, 10,000 requests, one run each (2026-12-07): RSS after the 10 replays 526-541 MB with glibc's
# default (growth at the end 2.32 %, largest after a replay 2.91 %); with the threshold fixed at 1 MiB 512-523 MB
# (0.18 %, 2.27 %), at 256 KiB 508-519 MB, at 4 MiB 507-520 MB: the ~10 MB that still moves is not large blocks.
MMAP_THRESHOLD = 2 << 20


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of `threshold` bytes or more from mappings of their own, given back to the system as soon as
    they are freed (glibc's M_MMAP_THRESHOLD; setting it also stops glibc from raising it). False where the C
    library has no mallopt, or when the environment already sets the threshold (MALLOC_MMAP_THRESHOLD_ or
    GLIBC_TUNABLES): the user's choice wins."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


_lock = threading.Lock()
_trims = [0, 0.0, 0.0]  # count, total ms, longest ms


def trim() -> bool:
    """Return the free memory of every malloc arena to the system; False where there is no malloc_trim."""
    libc = _libc()
    if libc is None:
        return False
    started = time.perf_counter()
    libc.malloc_trim(0)
    ms = (time.perf_counter() - started) * 1000
    with _lock:
        _trims[0] += 1
        _trims[1] += ms
        _trims[2] = max(_trims[2], ms)
    return True


class TrimSchedule:
    """When a thread that runs work one piece at a time (`tabfill serve`'s engine worker, the team engine's
    scheduler) gives freed heap back: once after `idle_s` idle following some work (never while idle from the
    start, never twice in one idle spell), and between two pieces of work every `busy_s` of work without a
    pause. The thread waits for work at most `wait_s()`, calls `idle()` when that wait ran out, `between()`
    before each piece and `worked()` after taking one."""

    def __init__(self, idle_s: float, busy_s: float) -> None:
        self.idle_s, self.busy_s = idle_s, busy_s
        self.working = False  # work ran since the last trim
        self._trimmed = time.monotonic()

    def wait_s(self) -> float | None:
        """How long to wait for work before an idle trim is due (None: no trim is due, wait as long as it takes)."""
        return self.idle_s if self.working else None

    def between(self) -> None:
        if self.working and time.monotonic() - self._trimmed >= self.busy_s:
            trim()
            self._trimmed = time.monotonic()

    def idle(self) -> None:
        trim()
        self.working, self._trimmed = False, time.monotonic()

    def worked(self) -> None:
        self.working = True


def describe() -> dict[str, object]:
    """The trims so far: how many, their total and longest milliseconds."""
    with _lock:
        count, total, longest = _trims
    return {"trims": count, "totalMs": round(total, 1), "longestMs": round(longest, 2)}
