"""Start and stop a real `tabfill engine` process (bench/team.py and tests/engine)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tabfill.engine_server.tokens import add_tenant

_LISTENING = re.compile(r"tabfill engine: listening on \('([^']+)', (\d+)\)")


@dataclass
class EngineProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no goodbye to anyone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def make_tokens(path: Path, *names: str) -> dict[str, str]:
    return {name: add_tenant(path, name) for name in names}


def start_engine(token_file: Path, log_path: Path, *args: str, port: int = 0, timeout_s: float = 240.0) -> EngineProcess:
    """Start `tabfill engine` and wait for its listening line (the model loaded)."""
    command = [sys.executable, "-m", "tabfill.cli", "engine", "--listen", f"127.0.0.1:{port}", "--tokens", str(token_file), *args]
    handle = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return EngineProcess(process, int(match.group(2)), log_path)
        if process.poll() is not None:
            raise RuntimeError(f"tabfill engine exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"tabfill engine did not listen within {timeout_s:.0f} s:\n{log_path.read_text(errors='replace')}")
