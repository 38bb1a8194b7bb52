"""heap.trim gives memory freed below live blocks back to the system (what loading the model leaves)."""

from __future__ import annotations

import os
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


LARGE_BLOCKS = """
import ctypes, sys
from tabfill.completion import heap

def rss_mb():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024

if sys.argv[1] == "map":
    assert heap.map_large_blocks()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 8 << 20
for _ in range(2):  # glibc's default raises its threshold past a freed large block: the next ones come from the heap
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
block = libc.malloc(size)
ctypes.memset(block, 1, size)
above = libc.malloc(4096)  # a live block after it: the heap cannot shrink from the top
before = rss_mb()
libc.free(block)
print(before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._libc() is None, reason="glibc's mallopt")
def test_large_blocks_go_back_to_the_system_when_freed() -> None:
    def freed(mode: str) -> float:
        env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
        run = subprocess.run([sys.executable, "-c", LARGE_BLOCKS, mode], capture_output=True, text=True, check=True, env=env)
        return float(run.stdout)

    assert freed("map") > 7.5  # its own mapping, unmapped by free
    assert freed("default") < 1  # glibc's default keeps it in the heap: what map_large_blocks changes


def test_the_environments_threshold_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert heap.map_large_blocks() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert heap.map_large_blocks() is False
