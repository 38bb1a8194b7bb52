"""Run model-written Python in a separate, limited process and say what happened.

Layers, each checked by tests/bench/test_sandbox.py:
- a separate process (never the bench's own), in a new session so a timeout kills its whole group;
- wall-clock limit (the group is killed) and a CPU-time limit (RLIMIT_CPU) as a backstop;
- memory: RLIMIT_AS; file size: RLIMIT_FSIZE; open files: RLIMIT_NOFILE; no core files;
- a throwaway working directory, removed afterwards; HOME and TMPDIR point into it;
- network: a new network namespace (`unshare -n`, only loopback, and down) when this machine allows it;
- user: `nobody` (via setpriv) when the bench runs as root, so files outside the directory are read-only;
- in the child, an audit hook (PEP 578) that refuses writes outside its directory, sockets, subprocesses and
  ctypes — the whole guard where neither namespace nor user switch is available (`isolation()` says which).
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534

# Installed before the program runs; it cannot be removed from Python code (sys.addaudithook has no undo).
GUARD = r'''
def _tabfill_guard():
    import os as _os, sys as _sys
    root = _os.path.realpath(_os.getcwd())
    writes = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
    refused = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "os.forkpty", "pty.", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill")
    def inside(path):
        try:
            real = _os.path.realpath(_os.fsdecode(path) if not isinstance(path, int) else "")
        except Exception:
            return False
        return real == root or real.startswith(root + _os.sep)
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & writes
            if writing and path is not None and not isinstance(path, int) and not inside(path):
                raise PermissionError(f"sandbox: writing outside the task directory is not allowed: {path}")
        elif event in path_events:
            for value in args[:2]:
                if isinstance(value, (str, bytes, _os.PathLike)) and not inside(value):
                    raise PermissionError(f"sandbox: {event} outside the task directory is not allowed")
        elif event.startswith(refused):
            raise PermissionError(f"sandbox: {event} is not allowed")
    _sys.addaudithook(hook)
_tabfill_guard()
del _tabfill_guard
'''


@dataclass(frozen=True)
class Isolation:
    network: str  # "namespace" (unshare -n) or "audit hook only"
    user: str  # "nobody" or "same user"

    def describe(self) -> str:
        network = (
            "a new network namespace (unshare -n) plus sockets refused in the child"
            if self.network == "namespace"
            else "sockets refused in the child by an audit hook (no network namespace available here)"
        )
        user = (
            "run as user nobody (files outside its directory read-only) plus writes outside it refused in the child"
            if self.user == "nobody"
            else "writes outside its directory refused in the child by an audit hook (same user as the bench)"
        )
        return f"network: {network}; files: {user}"


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed" | "failed" | "timeout" | "memory"
    detail: str  # the last lines of stderr, or what killed it
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def isolation() -> Isolation:
    """What this machine allows, probed once."""
    network = "namespace" if shutil.which("unshare") and _works(["unshare", "-n", "true"]) else "audit hook only"
    user = "same user"
    if os.geteuid() == 0 and shutil.which("setpriv"):
        if _works(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "true"]):
            user = "nobody"
    return Isolation(network, user)


def _limits(memory_mb: int, cpu_s: int) -> None:  # runs in the child between fork and exec
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_program(source: str, *, timeout_s: float = 5.0, memory_mb: int = 1024) -> Outcome:
    """Run `source` as a Python program in the sandbox. "passed" when it exits 0 within the limits."""
    how = isolation()
    directory = Path(tempfile.mkdtemp(prefix="tabfill-sandbox-"))
    try:
        program = directory / "program.py"
        program.write_text(GUARD + "\n" + source, encoding="utf-8")
        command = [sys.executable, "-I", "-B", str(program)]
        if how.user == "nobody":
            os.chown(directory, NOBODY, NOBODY)
            os.chown(program, NOBODY, NOBODY)
            command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *command]
        if how.network == "namespace":
            command = ["unshare", "-n", "--", *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(directory), "TMPDIR": str(directory), "LANG": "C.UTF-8"}
        started = time.monotonic()
        stderr_path = directory / "stderr.txt"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                command, cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True, preexec_fn=lambda: _limits(memory_mb, int(timeout_s) + 1),
            )
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return Outcome("timeout", f"killed after {timeout_s:.1f} s", round(time.monotonic() - started, 3))
        seconds = round(time.monotonic() - started, 3)
        detail = stderr_path.read_text(encoding="utf-8", errors="replace")[-1500:].strip()
        if code == 0:
            return Outcome("passed", "", seconds)
        if "MemoryError" in detail or code == -9 and "Killed" in detail:
            return Outcome("memory", detail.splitlines()[-1] if detail else "out of memory", seconds)
        if code in (-24, -9) and not detail:  # SIGXCPU / SIGKILL from RLIMIT_CPU
            return Outcome("timeout", f"CPU limit (signal {-code})", seconds)
        return Outcome("failed", detail or f"exit {code}", seconds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:
        pass
    process.wait()
