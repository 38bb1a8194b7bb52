"""Giving freed heap memory back to the system (glibc's malloc_trim), where the C library has it.

glibc returns a freed block to the system only when it is at the top of a heap (or is a large block of its
own mapping); memory freed below live blocks stays in the process. Loading the model frees much more than
it keeps (the tokenizer's and the GGUF header's temporary objects, the warm-up's activations): a trim after
it gives back what glibc would otherwise hold on to for the life of the server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim() -> bool:
    """Return the free memory of every malloc arena to the system; False where there is no malloc_trim."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
