"""The sandbox that runs model-written code: each limit is checked by what actually happened."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from bench.sandbox import isolation, run_program


def test_a_correct_program_passes_and_a_wrong_one_fails() -> None:
    assert run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n").status == "passed"
    wrong = run_program("def f(x):\n    return x - 1\nassert f(1) == 2\n")
    assert wrong.status == "failed"
    assert "AssertionError" in wrong.detail


def test_an_infinite_loop_is_killed_within_its_time_limit() -> None:
    started = time.monotonic()
    outcome = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert outcome.status == "timeout"
    assert time.monotonic() - started < 4.0


def test_a_memory_hog_is_stopped() -> None:
    outcome = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n", memory_mb=256, timeout_s=10)
    assert outcome.status == "memory", outcome


def test_it_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    program = f"open({str(target)!r}, 'w').write('x')\n"
    outcome = run_program(program)
    assert outcome.status == "failed"
    assert not target.exists()
    # inside its own directory it may write (tests sometimes do)
    assert run_program("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n").passed


def test_it_cannot_remove_files_outside_its_directory(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    outcome = run_program(f"import os\nos.remove({str(victim)!r})\n")
    assert outcome.status == "failed"
    assert victim.read_text() == "keep"


def test_it_cannot_reach_the_network() -> None:
    # a real listener on loopback: a connection from the child would be accepted and counted
    accepted: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]

    def accept() -> None:
        try:
            connection, _ = server.accept()
            accepted.append(connection.recv(16))
            connection.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    outcome = run_program(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n")
    thread.join()
    server.close()
    assert outcome.status == "failed"
    assert accepted == []


def test_the_isolation_in_use_is_described() -> None:
    text = isolation().describe()
    assert "network:" in text and "files:" in text
