"""Files written whole or not at all: a temporary file in the same directory, fsync, `os.replace`, then the
directory fsynced, so a kill (or a power cut) leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's (or, where the OS allows it, a directory's) contents to disk; best effort for directories."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return  # Windows cannot open a directory
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (see the module docstring)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_path(path.parent)


def remove_stale_temporaries(path: Path, older_than_s: float = 60.0) -> int:
    """Remove the temporary files a killed `write_atomic(path, …)` left beside `path`; returns how many."""
    removed = 0
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - leftover.stat().st_mtime > older_than_s:
                leftover.unlink()
                removed += 1
    return removed


def move_atomic(source: Path, target: Path) -> None:
    """Move `source` to `target` so that `target` is the whole file or absent (a rename on one file system;
    across file systems a copy to a temporary file beside `target`, fsynced, then renamed)."""
    try:
        os.replace(source, target)
    except OSError:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(source, temp)
            fsync_path(Path(temp))
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.unlink(source)
    fsync_path(target.parent)
