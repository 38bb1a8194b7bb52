"""The benchmark's own logic (fast), and a two-case smoke run of the whole benchmark (real model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cases import line_cases, typing_cases
from bench import report, run
from bench.machine import process_usage
from bench.report import memory_growth, percentile, source_breakdown, summarize, targets
from bench.replay import common_prefix_length, edit_similarity, score_line
from bench.systems import answer_source

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


def typing_row(latency_ms: float, source: str | None, served: bool = True, shown: str = "x", replay: int = 1) -> dict[str, object]:
    return {"case": "c", "typed": 1, "latency_ms": latency_ms, "served": served, "cancelled": not served, "late": False,
            "error": None, "shown": shown if served else "", "agreed": False, "accepted_chars": 0, "source": source, "replay": replay}


def line_rows(predicted: list[str], expected: list[str]) -> list[dict[str, object]]:
    return [{"case": f"f.py:{i}", "predicted": p, "expected": e, "exact": p == e, "edit_similarity": 1.0 if p == e else 0.5,
             "empty": not p, "latency_ms": 50.0, "error": None} for i, (p, e) in enumerate(zip(predicted, expected))]


def memory(*steps: tuple[str, float, float]) -> list[dict[str, object]]:
    return [{"after": after, "rss_mb": rss, "peak_rss_mb": peak, "cpu_s": 1.0} for after, rss, peak in steps]


def test_served_requests_break_down_by_source_and_any_string_is_its_own_category() -> None:
    rows = [typing_row(100.0, "model"), typing_row(300.0, "model"), typing_row(2.0, "cache"), typing_row(1.0, "empty", shown=""),
            typing_row(4.0, "continuation"), typing_row(900.0, None, served=False), typing_row(3.0, "model", served=False)]
    breakdown = {row["source"]: row for row in source_breakdown(rows)}
    assert list(breakdown) == ["model", "cache", "continuation", "empty"]  # most served first, then by name
    assert breakdown["model"]["served"] == 2 and breakdown["model"]["p50_ms"] == 200.0 and breakdown["model"]["share"] == 0.4
    assert breakdown["model"]["p95_ms"] == pytest.approx(290.0)
    assert breakdown["empty"]["shown"] == 0 and breakdown["cache"]["shown"] == 1
    assert source_breakdown([typing_row(5.0, None)])[0]["source"] == "unknown"


def test_the_answer_source_is_read_from_the_accept_argument() -> None:
    item = {"insertText": "x", "command": {"command": "tabfill.accept", "arguments": [{"id": "a", "source": "type-through"}]}}
    assert answer_source(item) == "type-through"
    assert answer_source({"insertText": "x"}) == "unknown"
    assert answer_source({"insertText": "x", "command": {"arguments": [{"id": "a", "source": ""}]}}) == "unknown"


def test_memory_growth_between_the_first_and_the_last_replay() -> None:
    system = {"memory": memory(("line cases", 700.0, 720.0), ("replay 1", 800.0, 850.0), ("replay 2", 810.0, 867.0))}
    growth = memory_growth(system)
    assert growth is not None
    assert growth["rss_growth_mb"] == 10.0 and growth["peak_growth_mb"] == 17.0 and growth["peak_growth"] == 0.02
    assert memory_growth({"memory": memory(("line cases", 1.0, 1.0), ("replay 1", 2.0, 2.0))}) is None
    assert memory_growth({}) is None
    assert process_usage(os.getpid()).rss_mb > 0


def synthetic_results(decode: dict[str, float | str] | None) -> dict[str, object]:
    expected = ["a", "b", "c", "d"]
    tabfill_rows = [typing_row(5.0, "type-through"), typing_row(10.0, "cache"), typing_row(20.0, "model"), typing_row(200.0, "model")]
    systems = [
        {"name": "tabfill", "line": line_rows(["a", "b", "x", "d"], expected), "typing": tabfill_rows,
         "typing_repeat": [typing_row(3.0, "cache", replay=2)], "cpu_s": 9.0, "peak_rss_mb": 900.0,
         "memory": memory(("line cases", 700.0, 720.0), ("replay 1", 800.0, 850.0), ("replay 2", 830.0, 900.0))},
        {"name": "transformers", "line": line_rows(["a", "b", "c", "x"], expected),
         "typing": [typing_row(60.0, "model"), typing_row(80.0, "model")], "memory": memory(("replay 1", 1.0, 1.0))},
        {"name": "llama.cpp", "line": line_rows(["a", "x", "x", "x"], expected), "typing": [typing_row(30.0, "model")]},
        {"name": "tabfill (plain prompt)", "line": line_rows(["a", "b", "c", "x"], expected), "typing": []},
    ]
    machine = {"cpu": "test", "cores": 2, "memory_gib": 4, "avx2": True, "avx512f": False, "python": "3", "torch": "2", "torch_threads": 2}
    results: dict[str, object] = {
        "command": "python -m bench", "date": "today", "commit": "abc", "machine": machine, "model": "default", "model_dir": "/m",
        "pace": 1.0, "deadline_ms": None, "systems": systems, "skipped": {}, "replays": 2, "repeat_cases": "same",
        "floor": {"copy_bandwidth_gbs": 10.0, "decode_floor_ms": {"fp32": 54.0}, "weight_bytes": {"fp32": 540_000_000}},
    }
    if decode is not None:
        results["decode_step"] = decode
    return results


def test_targets_from_a_synthetic_run() -> None:
    results = synthetic_results({"tabfill_decode_ms": 70.0, "floor_ms": 50.0, "plain_decode_ms": 90.0, "dtype": "float32"})
    summaries = [summarize(system) for system in results["systems"]]  # type: ignore[attr-defined]
    rows = targets(results, summaries)
    assert len(rows) == 12
    p50, p95, llama, transformers, deadline, decode, em, update, context, gain, peak, flat = rows
    assert p50["status"] == "met" and p50["measured"] == "15.0 ms (4 of 4 requests served)"  # median of 5, 10, 20, 200
    assert p95["status"] == "missed" and "over by" in p95["margin"]
    assert llama["status"] == "met" and "2.00×" in llama["margin"]  # 30 / 15
    assert transformers["status"] == "met" and "4.67×" in transformers["measured"]  # 70 / 15
    assert deadline["status"] == "evidence only" and deadline["measured"].startswith("1 of 4")
    assert decode["status"] == "met" and "1.40×" in decode["measured"]
    assert em["status"] == "met" and "tabfill (plain prompt)" in em["measured"] and "same first line on 4 of 4" in em["measured"]
    assert update["status"] == context["status"] == "not measured"  # no syntax measurement in this run
    assert gain["status"] == "missed" and gain["margin"] == "+0.0 points" and "(4 cases)" in gain["measured"]  # 3 of 4 both
    assert peak["status"] == "met" and peak["measured"] == "850 MiB"
    assert flat["status"] == "missed" and "+50.0 MiB" in flat["margin"]

    markdown = report.markdown(results)
    assert "## Targets (issues 4 and 5)" in markdown and "| **met** |" in markdown and "| **missed** |" in markdown
    assert "| tabfill | first | model | 2 | 50.0 % | 110.0 | 191.0 | 2 |" in markdown
    assert "| tabfill | repeat | cache | 1 |" in markdown and "### Repeat replay" in markdown
    assert "replay 2: 830 / 900 | +30.0 / +50.0 |" in markdown
    assert "## Decode step" in markdown and "| plain_decode_ms | 90.000 | 1.80× |" in markdown and "| dtype | float32 | – |" in markdown

    bare = synthetic_results(None)
    bare["systems"] = bare["systems"][:1]  # type: ignore[index]
    bare_rows = targets(bare, [summarize(bare["systems"][0])])  # type: ignore[index]
    # two peers, decode step, exact match, the two syntax budgets, the gain over the plain prompt
    assert [row["status"] for row in bare_rows].count("not measured") == 7
    assert "not measured" in report.markdown(bare) and "## Decode step" not in report.markdown(bare)

    named = synthetic_results({"fp32 floor ms/token": 50.0, "int8 floor ms/token": 20.0, "lean fp32 decode ms/token": 60.0,
                               "lean int8 decode ms/token": 30.0, "transformers / lean fp32": 2.0})
    markdown = report.markdown(named)
    assert "| lean fp32 decode ms/token | 60.000 | 1.20× |" in markdown and "| lean int8 decode ms/token | 30.000 | 1.50× |" in markdown
    assert "| transformers / lean fp32 | 2.000 | – |" in markdown and "| int8 floor ms/token | 20.000 | – |" in markdown
    assert "no tabfill_decode_ms / floor_ms" in markdown


def test_issue_4_targets_and_the_ablation_table() -> None:
    results = synthetic_results(None)
    results["syntax"] = {"lines": 3000, "chars": 1, "incremental_update": {"n": 400, "p50_ms": 0.9, "p95_ms": 2, "max_ms": 3},
                         "context_at": {"n": 400, "p50_ms": 2.5, "p95_ms": 3, "max_ms": 4}}
    summary = [{"variant": v, "language": lang, "cases": n, "exact_match": em, "edit_similarity": es}
               for v, lang, n, em, es in (("plain", "all", 72, 12.5, 0.4), ("plain", "python", 36, 10.0, 0.3),
                                          ("tabfill", "all", 72, 30.6, 0.6), ("tabfill", "python", 36, 25.0, 0.5))]
    results["ablation"] = {"cases": 72, "summary": summary, "rows": {}}
    summaries = [summarize(system) for system in results["systems"]]  # type: ignore[attr-defined]
    rows = {row["target"]: row for row in targets(results, summaries)}
    update = next(row for name, row in rows.items() if name.startswith("syntax: didChange"))
    context = next(row for name, row in rows.items() if name.startswith("syntax: tree snapshot"))
    ablation = next(row for name, row in rows.items() if name.endswith("(ablation, in process)"))
    assert update["status"] == "met" and update["measured"] == "0.90 ms" and "3,000-line" in next(n for n in rows if n.startswith("syntax: didChange"))
    assert context["status"] == "missed"
    assert ablation["status"] == "met" and ablation["margin"] == "+18.1 points" and "(72 cases)" in ablation["measured"]
    markdown = report.markdown(results)
    assert "## Line completion: what each part of the syntax layer earns (72 cases" in markdown
    assert "| tabfill | python | 36 | 25.0 % | 0.500 | +15.0 points |" in markdown
    assert "| plain | all | 72 | 12.5 % | 0.400 | +0.0 points |" in markdown


def test_decode_step_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> object:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(run.importlib, "import_module", missing)
    measured, why = run.measure_decode_step("/m", 4)
    assert measured is None and "not available" in why

    class Fake:
        @staticmethod
        def measure(model_dir: str, steps: int) -> dict[str, float]:
            return {"tabfill_decode_ms": 2.0 * steps, "floor_ms": 1, "dtype": "float32", "shape": [1, 2]}  # type: ignore[dict-item]

    monkeypatch.setattr(run.importlib, "import_module", lambda name: Fake)
    assert run.measure_decode_step("/m", 4) == ({"tabfill_decode_ms": 8.0, "floor_ms": 1.0, "dtype": "float32"}, "")


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
    tabfill = results["systems"][0]
    assert tabfill["typing_repeat"] and {row["replay"] for row in tabfill["typing_repeat"]} == {2}
    assert [step["after"] for step in tabfill["memory"]] == ["line cases", "replay 1", "replay 2"]
    assert all(step["rss_mb"] > 0 for step in tabfill["memory"])
    for system in results["systems"]:
        assert all(isinstance(row["source"], str) for row in system["typing"] if row["served"]), system["name"]
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets (issues 4 and 5)" in markdown and "### Served requests by answer source" in markdown
    assert "| tabfill |" in markdown and "## The floor" in markdown and "python -m bench --smoke" in markdown
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accepted_chars_count_each_typed_character_once() -> None:
    """A system whose ghost text is always the exact rest of the function: every key after the first was on
    screen when typed; summing each answer's agreeing prefix instead counted the body once per keystroke."""
    import asyncio

    from bench.cases import Keystroke, TypingCase
    from bench.replay import run_typing_case
    from bench.systems import Pending, System

    body = "return a +\n    b"
    keys = (Keystroke(0.0, "r"), Keystroke(0.01, "et"), Keystroke(0.02, "urn a +"), Keystroke(0.03, "\n    "), Keystroke(0.04, "b"))
    case = TypingCase("fake.py:1", "python", "def f(a, b):\n    ", "\n", body, keys)

    class Oracle(System):
        name = "oracle"

        async def start(self) -> None:
            return None

        async def stop(self) -> None:
            return None

        async def _complete(self, uri: str, language_id: str, text: str, offset: int, handle: Pending) -> str:
            typed = text[len(case.prefix) : offset]
            return body[len(typed) :]

    rows = asyncio.run(run_typing_case(Oracle(), case))
    assert [row["accepted_chars"] for row in rows] == [2, 7, 5, 1, 0]
    assert sum(row["accepted_chars"] for row in rows) == len(body) - len("r")
