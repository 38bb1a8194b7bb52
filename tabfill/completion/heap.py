"""Giving freed heap memory back to the system (glibc's malloc_trim), where the C library has it.

glibc returns a freed block to the system only when it is at the top of a heap (or is a large block of its
own mapping); memory freed below live blocks stays in the process. Loading the model frees much more than
it keeps (the tokenizer's and the GGUF header's temporary objects, the warm-up's activations): a trim after
it gives back what glibc would otherwise hold on to for the life of the server. Each trim is timed; `describe`
reports them for the status requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
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


def describe() -> dict[str, object]:
    """The trims so far: how many, their total and longest milliseconds."""
    with _lock:
        count, total, longest = _trims
    return {"trims": count, "totalMs": round(total, 1), "longestMs": round(longest, 2)}
