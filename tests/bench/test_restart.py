"""bench/restart.py's report (the runs themselves need Neovim, node and a model: `python -m bench.restart`)."""

from __future__ import annotations

from bench.restart import report


def test_the_report_names_the_command_and_gives_each_round_and_the_median() -> None:
    text = report({
        "command": "python -m bench.restart --rounds 3", "wall_s": 95.2, "date": "2026-12-06 08:00 UTC", "commit": "abc1234",
        "model": "default", "load": "1.0 at the start, 1.2 at the end",
        "clients": {"Neovim plugin": [4100.4, 4900.0, 6100.0], "VS Code extension": [5200.0, 6000.0, 8000.0]},
    })
    assert "`python -m bench.restart --rounds 3`; wall time 95 s" in text
    assert "| Neovim plugin | 4100, 4900, 6100 | 4900 |" in text
    assert "| VS Code extension | 5200, 6000, 8000 | 6000 |" in text
