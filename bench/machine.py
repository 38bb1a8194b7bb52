"""What the machine is and can do: process usage from /proc, the memory-bandwidth floor."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system CPU seconds of the process
    peak_rss_mb: float  # VmHWM: the most resident memory the process ever had
    rss_mb: float = 0.0  # VmRSS: resident memory now


def process_usage(pid: int) -> Usage:
    """CPU time, peak and current resident memory of a live process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    memory_kb = {"VmHWM:": 0, "VmRSS:": 0}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key = line.split(None, 1)[0] if line.strip() else ""
            if key in memory_kb:
                memory_kb[key] = int(line.split()[1])
    return Usage(round(cpu_s, 2), round(memory_kb["VmHWM:"] / 1024, 1), round(memory_kb["VmRSS:"] / 1024, 1))


def describe() -> dict[str, object]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    flags = open("/proc/cpuinfo").read()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "avx2": " avx2" in flags,
        "avx512f": " avx512f" in flags,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(command: str) -> dict[str, object]:
    """What every results file starts with: the command, when (UTC), the commit and the machine."""
    import datetime as dt

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"command": command, "date": when, "commit": git_commit(), "machine": describe()}


def memory_bandwidth_gbs(size_mb: int = 256, repeats: int = 7) -> float:
    """The benchmark's one memory-bandwidth figure, GB/s, best of `repeats` on a `size_mb` tensor: the higher
    of a copy (bytes read + written per second) and a read-only sum (what streaming weights through a matrix
    product does), so the floor derived from it is the stricter one."""
    source = torch.ones(size_mb * 1024 * 1024 // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    nbytes = source.numel() * 4

    def best_s(step: Callable[[], object]) -> float:
        step()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - started)
        return best

    copy = 2 * nbytes / best_s(lambda: target.copy_(source)) / 1e9
    read = nbytes / best_s(source.sum) / 1e9
    return max(copy, read)


def decode_floor_ms(weight_bytes: int, bandwidth_gbs: float) -> float:
    """The time to read every weight once at the measured bandwidth: no decode step can be faster."""
    return weight_bytes / (bandwidth_gbs * 1e9) * 1000
