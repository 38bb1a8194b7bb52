"""The benchmark's own logic (fast), and a two-case smoke run of the whole benchmark (real model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cases import line_cases, typing_cases
from bench.report import percentile, summarize
from bench.replay import common_prefix_length, edit_similarity, score_line

REPO = Path(__file__).resolve().parents[2]


def test_edit_similarity_and_scores() -> None:
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "abcd") == 0.0
    assert common_prefix_length("return x + 1", "return x - 1") == 9
    row = score_line(" require('./parse')\nmore", " require('./parse')")
    assert row["exact"] and row["predicted"] == " require('./parse')" and not row["empty"]
    assert score_line("   ", "x")["empty"]


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(i) for i in range(1, 101)], 0.95) == pytest.approx(95.05)


def test_cases_are_deterministic_real_code_with_the_line_rest_removed() -> None:
    first, again = line_cases(12), line_cases(12)
    assert first == again
    assert {case.language_id for case in first} == {"python", "javascript"}
    for case in first:
        source = (REPO / "bench" / "data" / case.name.rsplit(":", 1)[0]).read_text(encoding="utf-8")
        assert case.prefix + case.expected + case.suffix == source or (case.prefix + case.expected).rstrip() in source
        assert case.expected.strip() and "\n" not in case.expected and "\n" not in case.prefix[case.prefix.rfind("\n") + 1 :]
    typing = typing_cases(4)
    assert typing == typing_cases(4)
    for function in typing:
        typed = "".join(key.text for key in function.keys)
        assert typed == function.body
        times = [key.at_s for key in function.keys]
        assert times == sorted(times)
        chars_per_s = len(function.body) / times[-1]
        assert 3 < chars_per_s < 15  # realistic pace, pauses included


def test_summary_counts_served_requests_only() -> None:
    system = {
        "name": "x",
        "line": [{"exact": True, "edit_similarity": 1.0, "empty": False, "latency_ms": 10.0, "error": None}],
        "typing": [
            {"case": "c", "typed": 1, "latency_ms": 500.0, "served": False, "cancelled": True, "late": False, "error": None,
             "shown": "", "agreed": False, "accepted_chars": 0},
            {"case": "c", "typed": 2, "latency_ms": 20.0, "served": True, "cancelled": False, "late": False, "error": None,
             "shown": "ab", "agreed": True, "accepted_chars": 2},
        ],
    }
    summary = summarize(system)
    assert summary["p50_ms"] == 20.0 and summary["served"] == 1 and summary["cancelled"] == 1
    assert summary["exact_match"] == 1.0 and summary["accepted_chars"] == 2 and summary["typed_chars"] == 2


@pytest.mark.model
def test_smoke_run_of_the_whole_benchmark(tmp_path: Path) -> None:
    """Same code as the full run, two cases; llama.cpp only if this machine already built it."""
    command = [sys.executable, "-m", "bench", "--smoke", "--no-install", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    names = [system["name"] for system in results["systems"]]
    assert names[:2] == ["tabfill", "transformers"]
    assert "syntax" in results and results["syntax"]["incremental_update"]["n"] > 0
    assert results["floor"]["copy_bandwidth_gbs"] > 0
    for system in results["systems"]:
        assert len(system["line"]) == 1 and system["line"][0]["latency_ms"] is not None
        assert system["typing"], system["name"]
        assert not [row for row in system["typing"] if row["error"]], system["name"]  # a cancel never breaks the next request
        assert all(row["latency_ms"] is not None for row in system["typing"])
        assert system["peak_rss_mb"] > 0 and system["cpu_s"] > 0
        assert system["typing"][-1]["served"] or system["typing"][-1]["late"] or system["typing"][-1]["cancelled"]
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "| tabfill |" in markdown and "## The floor" in markdown and "python -m bench --smoke" in markdown
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
