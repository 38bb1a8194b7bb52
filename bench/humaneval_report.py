"""bench/HUMANEVAL.md from bench/humaneval.json (every model/subset run kept; `python -m bench.humaneval`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.report import percentile


@dataclass(frozen=True)
class Published:
    figure: str  # as published, with its unit
    what: str  # model variant, benchmark variant and metric, precisely
    source: str


# Where a model card or paper gives a figure for this benchmark. Keyed by (preset, subset).
PUBLISHED: dict[tuple[str, str], Published] = {
    ("qwen2.5-coder-1.5b", "single-line"): Published(
        "no pass@1 for this model; the base model's exact match: Python 77.0 % (Java 85.6, JavaScript 85.0)",
        "The Qwen2.5-Coder technical report (Table 7, Humaneval-FIM) scores single-line infilling by *exact match* "
        "of the first generated line, for the *base* Qwen2.5-Coder-1.5B, with its own harness (qwencoder-eval/base/"
        "benchmarks/fim-bench/hm_fim); whether its Python set is exactly these 1,033 tasks is not stated. It gives no "
        "pass@1 and nothing for the *Instruct* model run here; the Instruct card reports generation benchmarks only. "
        "Compare our exact-match column with the base model's 77.0 only as a loose bound (the Qwen maintainers say the Instruct model may do slightly worse at FIM than the base model, QwenLM/Qwen3-Coder issue 206)",
        "Hui et al., Qwen2.5-Coder Technical Report, arXiv:2409.12186; QwenLM/Qwen2.5-Coder README",
    ),
    ("default", "single-line"): Published(
        "none",
        "SmolLM2-135M(-Instruct) has no FIM tokens; its model card and paper report no HumanEval infilling figure.",
        "HuggingFaceTB/SmolLM2-135M-Instruct model card; Allal et al., arXiv:2502.02737",
    ),
}


def summarize(system: dict[str, Any]) -> dict[str, Any]:
    rows = system["rows"]
    count = len(rows)
    whole = [row["whole_ms"] for row in rows if row.get("whole_ms") is not None]
    return {
        "name": system["name"],
        "tasks": count,
        "passed": sum(row["passed"] for row in rows),
        "pass_at_1": 100.0 * sum(row["passed"] for row in rows) / count if count else None,
        "exact": 100.0 * sum(row["exact"] for row in rows) / count if count else None,
        "empty": sum(row["empty"] for row in rows),
        "unanswered": sum(not row["answered"] for row in rows),
        "timeouts": sum(row["status"] == "timeout" for row in rows),
        "whole_p50_ms": percentile(whole, 0.5),
        "reasks": sum(row.get("reasks", 0) for row in rows),
    }


def _number(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:.1f}{unit}"


def _run_section(key: str, run: dict[str, Any]) -> list[str]:
    summaries = [summarize(system) for system in run["systems"]]
    lines = [
        f"## {run['model']} · {run['subset']} · {run['tasks']} tasks",
        "",
        f"`{run['command']}` — {run['date']}, commit {run['commit']}, {run.get('wall_s', '?')} s wall. "
        f"Tasks: {run['selection']}.",
        "",
        "| system | pass@1 | exact match | passed | empty answers | unanswered | test timeouts | whole answer p50 | asked again without completionReady |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['name']} | {_number(s['pass_at_1'], ' %')} | {_number(s['exact'], ' %')} | {s['passed']}/{s['tasks']} | "
            f"{s['empty']} | {s['unanswered']} | {s['timeouts']} | {_number(s['whole_p50_ms'], ' ms')} | {s['reasks']} |"
        )
    by_name = {s["name"]: s for s in summaries}
    tabfill, plain = by_name.get("tabfill"), by_name.get("tabfill (plain prompt)")
    llama = by_name.get("llama.cpp")
    lines.append("")
    if tabfill and plain and plain["pass_at_1"]:
        lines.append(f"- tabfill / plain prompt: {tabfill['pass_at_1'] / plain['pass_at_1']:.2f}× pass@1 (same tasks, same run).")
    elif tabfill and plain:
        lines.append("- tabfill / plain prompt: the plain prompt passed no task, so no ratio.")
    if tabfill and llama and llama["pass_at_1"] is not None:
        lines.append(f"- tabfill − llama.cpp: {tabfill['pass_at_1'] - llama['pass_at_1']:+.1f} points pass@1 (llama.cpp prompt: {run.get('llama_cpp_prompt', '?')}).")
    for name, why in run.get("skipped", {}).items():
        lines.append(f"- {name} not run: {why}")
    published = PUBLISHED.get((run["model"], run["subset"]))
    if published:
        lines.append(f"- Published figure: **{published.figure}** — {published.what} ({published.source}).")
    lines.append(f"- Sandbox: {run['sandbox']}.")
    if run.get("note"):
        lines.append(f"- Note: {run['note']}.")
    return lines + [""]


def markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# HumanEval infilling: pass@1 by running the tests",
        "",
        "Written by `python -m bench.humaneval` (bench/humaneval.py); one section per model and subset, the latest",
        "run of each. Each task is a document over LSP with the cursor after the hole's indentation (typed, as an",
        "editor's auto-indent would); the whole answer is followed through `tabfill/completionReady`, put into the",
        "hole and the task's tests run in a separate, limited process (bench/sandbox.py). Single-line tasks use the",
        "answer's first line. Greedy decoding, one answer per task: pass@1. Exact match compares the answer with the",
        "canonical hole (trailing spaces ignored). Data: HumanEval infilling (Bavarian et al. 2022, MIT).",
        "",
    ]
    for key in sorted(runs):
        lines += _run_section(key, runs[key])
    return "\n".join(lines)
