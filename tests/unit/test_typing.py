"""mypy strict on tabfill/ (the settings are pyproject.toml's [tool.mypy])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tabfill_type_checks_strictly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "tabfill"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
