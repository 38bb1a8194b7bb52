"""Every test counts completions in its own stats file, never in the user's (tabfill stats)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _own_stats_file(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # NOTE: servers started by a test inherit the environment, so they write here too.
    path = tmp_path_factory.mktemp("stats") / "stats.json"
    monkeypatch.setenv("TABFILL_STATS_FILE", str(path))
    return path
