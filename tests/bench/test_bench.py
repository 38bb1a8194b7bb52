"""The benchmark's own logic (fast), and a two-case smoke run of the whole benchmark (real model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    assert {case.language_id for case in first} == {"python", "javascript", "typescript", "go", "rust"}
    for case in first:
        source = (REPO / "bench" / "data" / case.name.rsplit(":", 1)[0]).read_text(encoding="utf-8")
        assert case.prefix + case.expected + case.suffix == source or (case.prefix + case.expected).rstrip() in source
        assert case.expected.strip() and "\n" not in case.expected and "\n" not in case.prefix[case.prefix.rfind("\n") + 1 :]
    typing = typing_cases(10)
    assert typing == typing_cases(10)
    assert {case.language_id for case in typing} == {"python", "javascript", "typescript", "go", "rust"}
    for function in typing:
        typed = "".join(key.text for key in function.keys)
        assert typed == function.body
        times = [key.at_s for key in function.keys]
        assert times == sorted(times)
        chars_per_s = len(function.body) / times[-1]
        assert 3 < chars_per_s < 15  # realistic pace, pauses included


def test_summary_counts_every_request_and_the_served_ones_apart() -> None:
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
    # the unserved request is a miss: half the requests are ∞, so every percentile above the median is ∞
    assert summary["all_requests"] == {"p50": report.MISS, "p90": report.MISS, "p95": report.MISS, "p99": report.MISS}
    assert summary["served_requests"] == {"p50": 20.0, "p90": 20.0, "p95": 20.0, "p99": 20.0}
    assert summary["exact_match"] == 1.0 and summary["accepted_chars"] == 2 and summary["typed_chars"] == 2


def typing_row(latency_ms: float, source: str | None, served: bool = True, shown: str = "x", replay: int = 1,
               agreed: bool = False) -> dict[str, object]:
    return {"case": "c", "typed": 1, "latency_ms": latency_ms, "served": served, "cancelled": not served, "late": False,
            "error": None, "shown": shown if served else "", "agreed": agreed, "accepted_chars": 0, "source": source, "replay": replay}


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
    tabfill_rows = [typing_row(5.0, "type-through", agreed=True), typing_row(10.0, "cache"), typing_row(20.0, "model", agreed=True),
                    typing_row(200.0, "model"), typing_row(900.0, None, served=False)]
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
    assert len(rows) == 13
    p50, p95, llama, transformers, deadline, decode, identity, update, context, gain, peak, serve_rss, flat = rows
    # every request counts: 5, 10, 20, 200 ms and one unserved (∞)
    assert p50["status"] == "met" and p50["measured"] == "20.0 ms (1 of 5 unserved, counted as ∞)"
    assert p95["status"] == "missed" and "unserved" in p95["margin"] and p95["measured"].startswith("∞ ms")
    # model answers against model answers: tabfill's 20, 200 and the miss (p50 200) against llama.cpp's 30
    assert llama["status"] == "missed" and llama["measured"] == "30.0 / 200.0 ms = 0.15×"
    assert transformers["status"] == "missed" and "70.0 / 200.0 ms" in transformers["measured"]
    assert deadline["status"] == "evidence only" and deadline["measured"].startswith("1 of 4")
    assert decode["status"] == "met" and "1.40×" in decode["measured"]
    assert identity["status"] == "not measured"
    assert update["status"] == context["status"] == "not measured"  # no syntax measurement in this run
    assert gain["status"] == "missed" and gain["margin"] == "+0.0 points" and "(4 of 4 cases verbatim-free)" in gain["measured"]
    assert peak["status"] == "met" and peak["measured"] == "850 MiB"
    assert serve_rss["status"] == "missed" and "600 MB" in serve_rss["target"] and serve_rss["measured"] == "850 MiB"
    assert flat["status"] == "missed" and "+50.0 MiB" in flat["margin"]

    markdown = report.markdown(results)
    assert "## Targets (issues 4, 5, 12 and 18)" in markdown and "| **met** |" in markdown and "| **missed** |" in markdown
    assert "only healing differs" not in markdown and "same prompt" not in markdown
    assert "| tabfill | first | model | 2 | 50.0 % | 110.0 | 191.0 | 2 |" in markdown
    assert "| tabfill | repeat | cache | 1 |" in markdown and "### Repeat replay" in markdown
    assert "replay 2: 830 / 900 | +30.0 / +50.0 |" in markdown
    assert "## Decode step" in markdown and "| plain_decode_ms | 90.000 | 1.80× |" in markdown and "| dtype | float32 | – |" in markdown

    bare = synthetic_results(None)
    bare["systems"] = bare["systems"][:1]  # type: ignore[index]
    bare_rows = targets(bare, [summarize(bare["systems"][0])])  # type: ignore[index]
    # two peers, decode step, identity, the two syntax budgets, the gain over the plain prompt
    assert [row["status"] for row in bare_rows].count("not measured") == 7
    assert "not measured" in report.markdown(bare) and "## Decode step" not in report.markdown(bare)

    named = synthetic_results({"fp32 floor ms/token": 50.0, "int8 floor ms/token": 20.0, "lean fp32 decode ms/token": 60.0,
                               "lean int8 decode ms/token": 30.0, "transformers / lean fp32": 2.0})
    markdown = report.markdown(named)
    assert "| lean fp32 decode ms/token | 60.000 | 1.20× |" in markdown and "| lean int8 decode ms/token | 30.000 | 1.50× |" in markdown
    assert "| transformers / lean fp32 | 2.000 | – |" in markdown and "| int8 floor ms/token | 20.000 | – |" in markdown
    assert "no tabfill_decode_ms / floor_ms" in markdown


def test_the_first_table_is_per_answer_source_with_model_answers_and_correct_suggestions_first() -> None:
    """Type-through carried the old headline (a served p50 made mostly of type-through against the peers'
    model answers): the first table now opens with model answers and what the user saw, per system."""
    results = synthetic_results(None)
    markdown = report.markdown(results)
    first_table = markdown.split("\n## ", 2)[1]
    assert first_table.startswith("What a user gets while typing")
    lines = [line for line in first_table.splitlines() if line.startswith("|")]
    assert lines[0] == "| | tabfill | transformers | llama.cpp |"  # the peers in the same table; no typing, no column
    assert lines[2] == "| **model answers: p50 ms** (unserved = ∞) | **200.0** | **70.0** | **30.0** |"
    assert lines[3] == "| **model answers: p95 ms** (unserved = ∞) | **∞** | **79.0** | **30.0** |"
    assert lines[4] == "| **keystrokes with a correct suggestion on screen** | **40.0 %** (2 of 5) | **0.0 %** (0 of 2) | **0.0 %** (0 of 1) |"
    assert "| type-through answers served: count: p50 / p95 ms | 1: 5.0 / 5.0 | 0 | 0 |" in lines
    assert "| cache answers served: count: p50 / p95 ms | 1: 10.0 / 10.0 | 0 | 0 |" in lines
    assert "| every request (unserved = ∞): p50 / p90 / p95 / p99 ms | 20.0 / ∞ / ∞ / ∞ | 70.0 / 78.0 / 79.0 / 79.8 | 30.0 / 30.0 / 30.0 / 30.0 |" in lines
    assert "| served requests: p50 / p90 / p95 / p99 ms | 15.0 / 146.0 / 173.0 / 194.6 | 70.0 / 78.0 / 79.0 / 79.8 | 30.0 / 30.0 / 30.0 / 30.0 |" in lines
    # ratios only from model answers on both sides (tabfill's served p50, 15 ms, is type-through and cache)
    assert "- model-answer p50, llama.cpp / tabfill: 30.0 / 200.0 ms = **0.15×**" in first_table
    assert "15.0 ms =" not in first_table and "2.00×" not in markdown


def test_model_answers_count_misses_and_leave_other_sources_out() -> None:
    rows = [typing_row(3.0, "type-through"), typing_row(80.0, "model"), typing_row(2.0, "empty", shown=""),
            typing_row(90.0, "model"), typing_row(500.0, None, served=False), typing_row(70.0, "model", served=False)]
    model = report.model_answers(rows)
    assert (model["requests"], model["served"]) == (4, 2)
    assert model["p50_ms"] == report.MISS and model["served_p50_ms"] == 85.0  # 80, 90, ∞, ∞
    assert report.percentile([1.0, 2.0, report.MISS], 0.5) == 2.0 and report.percentile([1.0, 2.0, report.MISS], 0.75) == report.MISS
    assert report.latency_percentiles(rows)["p50"] == 85.0  # 2, 3, 80, 90, ∞, ∞
    assert report.correct_on_screen([typing_row(1.0, "model", agreed=True), typing_row(1.0, "model", served=False, agreed=True)]) == {
        "keystrokes": 2, "correct": 1, "share": 0.5}
    # whole answers: of the served model answers whose server said whether its deadline cut them
    said = [{**typing_row(50.0, "model"), "partial": partial} for partial in (True, False, False, None)]
    said.append({**typing_row(60.0, "model", served=False), "partial": False})  # not served: not counted
    assert (report.model_answers(said)["said_partial"], report.model_answers(said)["whole"]) == (3, 2)
    assert report._whole({"model": report.model_answers(said)}) == "2 of 3 (66.7 %)"
    assert report._whole({"model": report.model_answers(rows)}) == "every answer (no deadline)"


def test_issue_4_targets_and_the_ablation_table() -> None:
    results = synthetic_results(None)
    results["syntax"] = {"lines": 3000, "chars": 1, "incremental_update": {"n": 400, "p50_ms": 0.9, "p95_ms": 2, "max_ms": 3},
                         "context_at": {"n": 400, "p50_ms": 2.5, "p95_ms": 3, "max_ms": 4}}
    summary = [{"variant": v, "subset": subset, "language": lang, "cases": n, "exact_match": em, "edit_similarity": es}
               for v, subset, lang, n, em, es in (
                   ("plain", "all", "all", 400, 12.5, 0.4), ("plain", "verbatim-free", "all", 300, 10.0, 0.3),
                   ("plain", "verbatim-free", "python", 60, 10.0, 0.3),
                   ("postprocess", "all", "all", 400, 12.5, 0.4), ("postprocess", "verbatim-free", "all", 300, 10.0, 0.3),
                   ("similar", "all", "all", 400, 30.0, 0.6), ("similar", "verbatim-free", "all", 300, 16.0, 0.5),
                   ("tabfill", "all", "all", 400, 31.0, 0.6), ("tabfill", "verbatim-free", "all", 300, 18.1, 0.5),
                   ("tabfill", "verbatim-free", "python", 60, 25.0, 0.5))]
    results["ablation"] = {"cases": 400, "summary": summary, "rows": {}}
    summaries = [summarize(system) for system in results["systems"]]  # type: ignore[attr-defined]
    rows = {row["target"]: row for row in targets(results, summaries)}
    update = next(row for name, row in rows.items() if name.startswith("syntax: didChange"))
    context = next(row for name, row in rows.items() if name.startswith("syntax: tree snapshot"))
    ablation = next(row for name, row in rows.items() if name.endswith("(ablation, in process)"))
    similar = next(row for name, row in rows.items() if name.startswith("similar code's gain"))
    assert update["status"] == "met" and update["measured"] == "0.90 ms" and "3,000-line" in next(n for n in rows if n.startswith("syntax: didChange"))
    assert context["status"] == "missed"
    # verbatim-free cases only: 18.1 - 10.0 (the 400-case figure would be +18.5)
    assert ablation["status"] == "missed" and ablation["margin"] == "+8.1 points" and "(300 verbatim-free cases)" in ablation["measured"]
    assert similar["measured"] == "+17.5 points on all 400 cases; +6.0 points on the 300 verbatim-free ones"
    assert similar["margin"].startswith("+11.5 points")
    markdown = report.markdown(results)
    assert "## Line completion: what each part of the syntax layer earns (400 cases" in markdown
    assert "| tabfill | verbatim-free | python | 60 | 25.0 % | 0.500 | +15.0 points |" in markdown
    assert "| plain | all | all | 400 | 12.5 % | 0.400 | +0.0 points |" in markdown


def test_the_greedy_identity_row_allows_ties_only() -> None:
    import torch

    from bench.identity import compare, summarize as identity_summary
    from bench.naive_peer import PeerAnswer
    from tabfill.completion.types import Generation

    near_tie = torch.tensor([1.0, 5.0, 5.0004, 0.0])
    clear = torch.tensor([1.0, 5.0, 7.0, 0.0])
    same = compare("a", PeerAnswer("x = 1\nmore", (1, 2)), Generation((1, 2), "x = 1", "stop", 10))
    tie = compare("b", PeerAnswer("foo", (3, 2), (clear, near_tie)), Generation((3, 1), "fob", "stop", 10))
    wrong = compare("c", PeerAnswer("bar", (2,), (clear,)), Generation((1,), "baz", "stop", 10))
    assert same["identical"] and not tie["identical"] and tie["token"] == 1 and tie["tie"] and tie["gap"] == pytest.approx(0.0004, abs=1e-6)
    assert not wrong["tie"] and wrong["gap"] == 2.0
    results = synthetic_results(None)
    results["identity"] = identity_summary([same, tie])
    row = next(row for row in targets(results, [summarize(s) for s in results["systems"]]) if row["target"].startswith("greedy identity"))  # type: ignore[attr-defined]
    assert row["status"] == "met" and row["measured"].startswith("identical on 1 of 2 cases; 1 differ, of which 1 at a floating-point tie")
    results["identity"] = identity_summary([same, tie, wrong])
    row = next(row for row in targets(results, [summarize(s) for s in results["systems"]]) if row["target"].startswith("greedy identity"))  # type: ignore[attr-defined]
    assert row["status"] == "missed" and row["margin"] == "1 differ beyond a tie"
    assert "| c | `bar` | `baz` | 2.00000 |" in report.markdown(results)


class _Tokens:
    """A tokenizer over single characters (id = code point)."""

    eos_token_id = 0

    def decode(self, ids: object, skip_special_tokens: bool = True) -> str:
        return "".join(chr(int(i)) for i in ids if int(i))  # type: ignore[attr-defined]


class _Typist:
    """A stand-in for a transformers model: `generate` emits a fixed text token by token, asking the stopping
    criteria after each token as transformers does, within `max_new_tokens`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.generation_config = type("Config", (), {"eos_token_id": 0})()
        self.calls: list[dict[str, object]] = []

    def generate(self, input_ids: object, **kwargs: object) -> object:
        import torch

        self.calls.append(kwargs)
        sequence = input_ids  # type: ignore[assignment]
        for char in self.text[: int(kwargs["max_new_tokens"])]:  # type: ignore[call-overload]
            sequence = torch.cat([sequence, torch.tensor([[ord(char)]])], dim=1)  # type: ignore[list-item]
            if any(bool(criterion(sequence, None).all()) for criterion in kwargs["stopping_criteria"]):  # type: ignore[attr-defined]
                break
        return type("Output", (), {"sequences": sequence, "logits": None})()


def test_the_transformers_peer_stops_at_the_line_end_within_tabfill_s_budget() -> None:
    """naive_peer.py generated every allowed token and split afterwards; it now stops where tabfill's stop
    rule cuts (the newline for a line, the block rule for several) and has tabfill's token budget."""
    from bench.naive_peer import generate_answer
    from tabfill.completion.types import Prompt, StopRule

    single = Prompt((65, 66), 12, StopRule(single_line=True, block_indent=0))
    model = _Typist("x + 1)\n    return y\n")
    answer = generate_answer(model, _Tokens(), single)
    assert answer.text == "x + 1)" and len(answer.token_ids) == len("x + 1)\n")  # stopped at the newline
    assert model.calls[0]["max_new_tokens"] == 12
    block = Prompt((65,), 64, StopRule(single_line=False, block_indent=4, max_lines=8))
    model = _Typist("if a:\n        b()\n    c()\nd()\nmore()\n")
    answer = generate_answer(model, _Tokens(), block)
    assert answer.text == "if a:\n        b()\n    c()" and "".join(map(chr, answer.token_ids)).endswith("d()\n")


def test_verbatim_lines_are_flagged_and_the_corpus_is_wide() -> None:
    from bench.cases import normalise, occurs_elsewhere, workspace_text

    corpus = workspace_text()
    cases = line_cases(440)
    free = [case for case in cases if not case.verbatim]
    assert len(free) >= 300 and {case.language_id for case in free} == {"python", "javascript", "typescript", "go", "rust"}
    for case in cases:
        line = case.prefix[case.prefix.rfind("\n") + 1 :] + case.expected
        assert case.verbatim == (corpus.count(normalise(line)) >= 2)
    semver = [case for case in cases if case.verbatim and "require(" in case.expected + case.prefix[-40:]]
    assert semver, "the semver require lines shared by sibling files are flagged"
    assert not any(case.verbatim for case in line_cases(50, verbatim="drop")) and len(line_cases(50, verbatim="drop")) == 50
    assert occurs_elsewhere("  a  =  1", "a = 1\nb\na = 1 + 2") and not occurs_elsewhere("a = 1", "a = 1\nb")


def test_data_has_a_licence_per_project_and_its_origin_recorded() -> None:
    data = REPO / "bench" / "data"
    readme = (data / "README.md").read_text()
    for project in ("python/more_itertools", "typescript/immer", "typescript/rxjs", "go/uuid", "go/golang-lru", "go/errors",
                    "rust/semver", "rust/either", "javascript/semver"):
        assert list((data / project).glob("LICENSE*")), project
        assert f"`{project.split('/', 1)[0]}/{project.split('/', 1)[1]}" in readme or project.split("/")[1] in readme, project


def test_decode_step_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> object:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(run.importlib, "import_module", missing)
    measured, why = run.measure_decode_step("/m", 4, 30.0)
    assert measured is None and "not available" in why

    class Fake:
        @staticmethod
        def measure(model_dir: str, steps: int, bandwidth_gbs: float) -> dict[str, float]:
            return {"tabfill_decode_ms": 2.0 * steps, "floor_ms": 1, "dtype": "float32", "shape": [1, 2],  # type: ignore[dict-item]
                    "memory bandwidth GB/s": bandwidth_gbs}

    monkeypatch.setattr(run.importlib, "import_module", lambda name: Fake)
    assert run.measure_decode_step("/m", 4, 30.0) == (
        {"tabfill_decode_ms": 8.0, "floor_ms": 1.0, "dtype": "float32", "memory bandwidth GB/s": 30.0}, "")


def test_one_bandwidth_measure_for_the_floor_and_the_decode_step() -> None:
    """run.py and decode_step.py measured two bandwidths (46 and 33 GB/s in one run) and so two floors."""
    from bench import decode_step, machine

    assert not [name for name in vars(decode_step) if "bandwidth" in name and name != "memory_bandwidth_gbs"]
    assert decode_step.memory_bandwidth_gbs is machine.memory_bandwidth_gbs
    assert machine.memory_bandwidth_gbs(size_mb=8, repeats=2) > 0


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
    assert "## Targets (issues 4, 5, 12 and 18)" in markdown and "### Served requests by answer source" in markdown
    assert "## What a user gets while typing" in markdown
    assert "| tabfill |" in markdown and "## The floor" in markdown and "python -m bench --smoke" in markdown
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def replay_scripted(body: str, keys: tuple[Any, ...], answer: Callable[[str, Any], str]) -> list[dict[str, Any]]:
    """Type `body` with `keys` into a system whose answer to the text typed so far is `answer(typed, handle)`."""
    import asyncio

    from bench.cases import TypingCase
    from bench.replay import run_typing_case
    from bench.systems import Pending, System

    case = TypingCase("fake.py:1", "python", "def f(a, b):\n    ", "\n", body, keys)

    class Scripted(System):
        name = "scripted"

        async def start(self) -> None:
            return None

        async def stop(self) -> None:
            return None

        async def _complete(self, uri: str, language_id: str, text: str, offset: int, handle: Pending) -> str:
            return answer(text[len(case.prefix) : offset], handle)

    return asyncio.run(run_typing_case(Scripted(), case))


def test_accepted_chars_count_each_typed_character_once() -> None:
    """A system whose ghost text is always the exact rest of the function: every key after the first was on
    screen when typed; summing each answer's agreeing prefix instead counted the body once per keystroke."""
    from bench.cases import Keystroke

    body = "return a +\n    b"
    keys = (Keystroke(0.0, "r"), Keystroke(0.01, "et"), Keystroke(0.02, "urn a +"), Keystroke(0.03, "\n    "), Keystroke(0.04, "b"))
    rows = replay_scripted(body, keys, lambda typed, handle: body[len(typed) :])
    assert [row["accepted_chars"] for row in rows] == [2, 7, 5, 1, 0]
    assert sum(row["accepted_chars"] for row in rows) == len(body) - len("r")


def test_an_answer_in_pieces_is_judged_as_the_plugins_draw_it() -> None:
    """tabfill's item splits its answer where the model was unsure; the plugins draw the first piece, so the
    replay judges that: right here, where the whole text (a wrong tail) would not be."""
    from bench.cases import Keystroke

    body = "return a + b"

    def unsure(typed: str, handle: Any) -> str:
        rest = body[len(typed) :]
        handle.extra["pieces"] = [rest[:3], " WRONG"]
        return rest[:3] + " WRONG"

    rows = replay_scripted(body, (Keystroke(0.0, "r"), Keystroke(0.01, "et")), unsure)
    assert [row["shown"] for row in rows] == ["etu", "urn"]
    assert [row["agreed"] for row in rows] == [True, True]
    assert [row["accepted_chars"] for row in rows] == [2, 0]


def test_a_request_cancelled_before_it_was_sent_is_dropped_locally() -> None:
    """On a loaded machine the next key can come before the request task ran: cancelling it must not
    reach for an id it never got (the smoke run died on a KeyError)."""
    import asyncio

    from bench.systems import TabfillSystem

    async def scenario() -> bool:
        system = TabfillSystem("tabfill", "default")
        handle = system.request("file:///x.py", "python", "x = ", 4)  # not started: no await in between
        await system.cancel(handle)
        await asyncio.gather(handle.task, return_exceptions=True)
        await asyncio.sleep(0)  # its done callback
        return handle.task.cancelled() and handle.cancelled

    assert asyncio.run(scenario())


def test_a_replay_behind_its_clock_still_sends_every_request() -> None:
    """Keys all due at once (a replay that fell behind): each request must still be sent before the next
    key cancels it; without a yield between keys none was (0 of 133 served in a loaded smoke run)."""
    import asyncio

    from bench.cases import Keystroke, TypingCase
    from bench.replay import run_typing_case
    from bench.systems import Pending, System

    case = TypingCase("fake.py:1", "python", "def f():\n    ", "\n", "return 1", tuple(Keystroke(0.0, c) for c in "return 1"))

    class Counting(System):
        name = "counting"
        sent = 0

        async def start(self) -> None:
            return None

        async def stop(self) -> None:
            return None

        async def _complete(self, uri: str, language_id: str, text: str, offset: int, handle: Pending) -> str:
            self.sent += 1
            await asyncio.sleep(0.05)
            return ""

    system = Counting()
    rows = asyncio.run(run_typing_case(system, case))
    assert system.sent == len(case.keys) and len(rows) == len(case.keys)


@pytest.mark.model
def test_greedy_identity_on_the_default_model() -> None:
    """tabfill's engine on the transformers peer's token ids gives its first line (real model, 6 cases)."""
    from bench import identity

    measured = identity.measure("default", 6)
    assert measured["cases"] == 6
    assert measured["identical"] + measured["ties"] == 6, [row for row in measured["rows"] if not row["identical"]]
    assert any(row["peer"].strip() for row in measured["rows"])  # real answers, not six empty lines


def test_decode_floor_is_weight_megabytes_over_bandwidth(monkeypatch: pytest.MonkeyPatch) -> None:
    """100 MB a token at 20 GB/s is 5 ms; the floor read 0.005 ms before (a unit slip: 137076× the floor)."""
    from bench import decode_step

    monkeypatch.setattr(decode_step, "measure_model", lambda *args, **kwargs: {
        "m: tabfill gguf decode ms/token": 15.0, "m: gguf weight MB/token": 100.0})
    results = decode_step.measure("m", 4, bandwidth_gbs=20.0)
    assert results["floor_ms"] == pytest.approx(5.0)
    assert results["tabfill_decode_ms"] == 15.0


def test_results_carry_reliability_and_the_separate_benchmarks(tmp_path: Path) -> None:
    """Issue 17 asks for a Reliability section in RESULTS.md; the soak and restart figures lived only in
    their own files, and nothing said which commit the separate reports came from."""
    results = synthetic_results(None)
    (tmp_path / "SOAK.md").write_text("# Reliability: burst, soak, fuzz\n\n## Burst\n\n| newest answer |\n|---|\n| 412.0 ms |\n")
    (tmp_path / "FOLLOW.md").write_text("# Typing-follow\n")
    (tmp_path / "FOLLOW.json").write_text(json.dumps({"command": "python -m bench.follow", "date": "2026-12-06 10:00 UTC", "commit": "f00"}))
    (tmp_path / "HUMANEVAL.md").write_text("# HumanEval\n")
    (tmp_path / "humaneval.json").write_text(json.dumps({"default/single-line": {"command": "python -m bench.humaneval", "commit": "b4r"}}))
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert report.main(["--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "RESULTS.md").read_text()
    reliability = markdown.split("## Reliability", 1)[1]
    assert "### Reliability: burst, soak, fuzz" in reliability and "### Burst" in reliability and "| 412.0 ms |" in reliability
    assert "RESTART.md: not run." in reliability
    assert "[`FOLLOW.md`](FOLLOW.md) — `python -m bench.follow`, 2026-12-06 10:00 UTC, commit `f00`" in markdown
    assert "default/single-line: `python -m bench.humaneval`, date not recorded, commit `b4r`" in markdown
    assert "(no `TEAM_RESULTS.md`)" in markdown
    assert markdown.index("## Reliability") < markdown.index("Raw numbers")
    assert (tmp_path / "latency.png").stat().st_size > 0
    assert "## Reliability" not in report.markdown(results)


def test_the_follow_bench_names_every_case_language_so_the_editor_attaches() -> None:
    """A Go case was written to case1.txt: Neovim gave it no filetype, the plugin never attached, and the
    whole run failed after 10 minutes ("the server did not get ready")."""
    from bench.follow_clients import EXTENSIONS

    assert {case.language_id for case in typing_cases(12)} <= set(EXTENSIONS)
    assert {EXTENSIONS[language] for language in ("go", "rust", "typescript")} == {"go", "rs", "ts"}


def test_the_memory_section_reports_the_servers_full_garbage_collections() -> None:
    results = synthetic_results(None)
    gc_status = {"installed": True, "frozenObjects": 211121, "generation1": {"collections": 40, "totalMs": 20.0, "longestMs": 1.5},
                 "generation2": {"collections": 2, "totalMs": 9.0, "longestMs": 6.0}}
    results["systems"][0]["status"] = {"gc": gc_status}  # type: ignore[index]
    lines = report._gc_lines(results)
    assert len(lines) == 2 and lines[1].startswith("- tabfill: full garbage collections")
    assert "after the model loaded, to the end of the run: 2, 9.0 ms in all, the longest 6.0 ms" in lines[1]
    assert "211,121" in lines[1]
    results["systems"][0]["status"] = {"gc": {"installed": False}}  # type: ignore[index]
    assert report._gc_lines(results) == []
