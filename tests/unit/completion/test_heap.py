"""heap.trim gives memory freed below live blocks back to the system (what loading the model leaves)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tabfill.completion import heap

SCRIPT = """
import sys
from tabfill.completion import heap

def rss_mb():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024

blocks = [bytes(2048) for _ in range(60_000)]  # ~120 MB from malloc's heap, not from mmap
kept = blocks[::64]  # live blocks all through the heap: glibc cannot shrink it from the top
del blocks
before = rss_mb()
assert heap.trim()
print(before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._libc() is None, reason="glibc's malloc_trim")
def test_trim_gives_freed_heap_memory_back() -> None:
    freed = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    assert float(freed) > 60, f"only {float(freed):.1f} MB went back"


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._libc() is None, reason="glibc's malloc_trim")
def test_trims_are_counted_and_timed() -> None:
    before = heap.describe()
    assert heap.trim() and heap.trim()
    after = heap.describe()
    assert after["trims"] == before["trims"] + 2  # type: ignore[operator]
    assert after["totalMs"] >= before["totalMs"] and after["longestMs"] > 0  # type: ignore[operator]
