"""Summaries, bench/RESULTS.md and the latency plot, from the raw results of one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


MISS = float("inf")  # an unserved request's latency: the editor never showed an answer for that keystroke
PERCENTILES = (0.5, 0.9, 0.95, 0.99)


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values. A miss (∞) is
    the largest value: a percentile that reaches into the misses is ∞."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    if position == low or ordered[low] == MISS:
        return ordered[low]
    if ordered[high] == MISS:
        return MISS
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def request_latency(row: dict[str, Any]) -> float:
    """A typing request's latency, counting every request: its time when served, else a miss (∞)."""
    return float(row["latency_ms"]) if row["served"] and row["latency_ms"] is not None else MISS


def latency_percentiles(rows: list[dict[str, Any]], served_only: bool = False) -> dict[str, float | None]:
    """p50/p90/p95/p99 ({"p50": ..., ...}) over every request (unserved = ∞), or over the served ones."""
    values = [request_latency(row) for row in rows if row["served"] or not served_only]
    return {f"p{round(100 * fraction)}": percentile(values, fraction) for fraction in PERCENTILES}


def model_answers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The requests the model had to answer: served model answers and every unserved request (a miss, ∞;
    an answer that never came in time cannot be type-through or cache). Served answers from elsewhere
    (type-through, cache, empty) are left out, so systems compare with the same kind of answer."""
    chosen = [row for row in rows if not row["served"] or row.get("source") == "model"]
    latencies = [request_latency(row) for row in chosen]
    served = [value for value in latencies if value != MISS]
    said = [row["partial"] for row in chosen if row["served"] and isinstance(row.get("partial"), bool)]
    return {
        "requests": len(chosen),
        "served": len(served),
        # served model answers whose server said whether its deadline cut them, and how many were whole
        "said_partial": len(said),
        "whole": said.count(False),
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": percentile(latencies, 0.95),
        "served_p50_ms": percentile(served, 0.5),
        "served_p95_ms": percentile(served, 0.95),
    }


def _whole(s: dict[str, Any]) -> str:
    """Served model answers that came whole, of those whose server said (tabfill's `partial`); a peer answers
    whole or not at all."""
    said, whole = s["model"].get("said_partial", 0), s["model"].get("whole", 0)
    return f"{whole} of {said} ({_fmt(_ratio(whole, said), percent=True)})" if said else "every answer (no deadline)"


def correct_on_screen(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Keystrokes after which a correct suggestion was on screen: the answer to that keystroke's request
    arrived before the next key and its first line is what the user went on to type (`agreed`)."""
    correct = sum(bool(row["served"] and row["shown"] and row["agreed"]) for row in rows)
    return {"keystrokes": len(rows), "correct": correct, "share": _ratio(correct, len(rows))}


def summarize(system: dict[str, Any]) -> dict[str, Any]:
    line = system["line"]
    typing = system["typing"]
    served = [row for row in typing if row["served"]]
    served_ms = [row["latency_ms"] for row in served]
    shown = [row for row in served if row["shown"]]
    # CPU and memory up to the end of the first replay, so a system typing twice compares with one typing once
    first_replay = next((step for step in system.get("memory") or [] if step.get("after") == "replay 1"), None)
    summary: dict[str, Any] = {
        "name": system["name"],
        "line_cases": len(line),
        "exact_match": _ratio(sum(row["exact"] for row in line), len(line)),
        "exact_match_verbatim_free": _ratio(sum(row["exact"] for row in line if not row.get("verbatim")),
                                            sum(not row.get("verbatim") for row in line)),
        "edit_similarity": _mean([row["edit_similarity"] for row in line]),
        "empty_rate": _ratio(sum(row["empty"] for row in line), len(line)),
        "line_p50_ms": percentile([row["latency_ms"] for row in line if row["latency_ms"] is not None], 0.5),
        # until the whole answer: the first one, or the one asked for after the server announced it
        "line_whole_p50_ms": percentile(
            [row.get("settled_ms") or row["latency_ms"] for row in line if (row.get("settled_ms") or row["latency_ms"]) is not None], 0.5
        ),
        "line_settled": sum(row.get("settled_ms") is not None for row in line),
        "requests": len(typing),
        "served": len(served),
        "cancelled": sum(row["cancelled"] for row in typing),
        "late": sum(row["late"] for row in typing),
        "errors": sum(bool(row["error"]) for row in typing) + sum(bool(row["error"]) for row in line),
        "p50_ms": percentile(served_ms, 0.5),
        "p95_ms": percentile(served_ms, 0.95),
        "p99_ms": percentile(served_ms, 0.99),
        "all_requests": latency_percentiles(typing),  # unserved = ∞
        "served_requests": latency_percentiles(typing, served_only=True),
        "model": model_answers(typing),
        "correct": correct_on_screen(typing),
        "verbatim_line_cases": sum(bool(row.get("verbatim")) for row in line),
        "shown": len(shown),
        "shown_p50_ms": percentile([row["latency_ms"] for row in shown], 0.5),
        "shown_p95_ms": percentile([row["latency_ms"] for row in shown], 0.95),
        "agreed": sum(row["agreed"] for row in shown),
        "accepted_chars": sum(row["accepted_chars"] for row in shown),
        "typed_chars": sum(_typed_per_case(typing).values()),
        "cpu_s": first_replay["cpu_s"] if first_replay else system.get("cpu_s"),
        "peak_rss_mb": first_replay["peak_rss_mb"] if first_replay else system.get("peak_rss_mb"),
        "startup_s": system.get("startup_s"),
        "sources": source_breakdown(typing),
    }
    repeat = system.get("typing_repeat") or []
    if repeat:
        repeat_served = [row for row in repeat if row["served"]]
        repeat_shown = [row for row in repeat_served if row["shown"]]
        summary["repeat"] = {
            "replays": len({row.get("replay") for row in repeat}),
            "requests": len(repeat),
            "served": len(repeat_served),
            "p50_ms": percentile([row["latency_ms"] for row in repeat_served], 0.5),
            "p95_ms": percentile([row["latency_ms"] for row in repeat_served], 0.95),
            "shown": len(repeat_shown),
            "agreed": sum(row["agreed"] for row in repeat_shown),
            "sources": source_breakdown(repeat),
        }
    summary["memory"] = memory_growth(system)
    return summary


def source_breakdown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Served requests by where their answer came from ("model", "cache", "type-through", "empty", or any
    other string the server sends), most requests first: count, share of served, p50/p95, shown."""
    served = [row for row in rows if row["served"]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in served:
        groups.setdefault(str(row.get("source") or "unknown"), []).append(row)
    out = []
    for source, group in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        latencies = [row["latency_ms"] for row in group if row["latency_ms"] is not None]
        out.append({
            "source": source,
            "served": len(group),
            "share": _ratio(len(group), len(served)),
            "p50_ms": percentile(latencies, 0.5),
            "p95_ms": percentile(latencies, 0.95),
            "shown": sum(bool(row["shown"]) for row in group),
        })
    return out


def memory_growth(system: dict[str, Any]) -> dict[str, Any] | None:
    """Resident memory after the first and the last typing replay in the same process, and the growth
    between them; None without two replays."""
    replays = [step for step in system.get("memory") or [] if str(step.get("after", "")).startswith("replay")]
    if len(replays) < 2:
        return None
    first, last = replays[0], replays[-1]
    return {
        "replays": len(replays),
        "rss_first_mb": first["rss_mb"],
        "rss_last_mb": last["rss_mb"],
        "peak_first_mb": first["peak_rss_mb"],
        "peak_last_mb": last["peak_rss_mb"],
        "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1),
        "peak_growth_mb": round(last["peak_rss_mb"] - first["peak_rss_mb"], 1),
        "peak_growth": round((last["peak_rss_mb"] - first["peak_rss_mb"]) / first["peak_rss_mb"], 4) if first["peak_rss_mb"] else None,
    }


def _typed_per_case(rows: list[dict[str, Any]]) -> dict[str, int]:
    typed: dict[str, int] = {}
    for row in rows:
        typed[row["case"]] = max(typed.get(row["case"], 0), row["typed"])
    return typed


def _ratio(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _fmt(value: Any, digits: int = 0, percent: bool = False) -> str:
    if value is None:
        return "–"
    if value == MISS:
        return "∞"
    if percent:
        return f"{100 * value:.1f} %"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ms(*values: float | None) -> str:
    return " / ".join(_fmt(value, 1) for value in values)


def markdown(results: dict[str, Any], companions: Path | None = None) -> str:
    """RESULTS.md: every section in SECTIONS order; a section is a function (results, summaries) -> lines,
    empty when its part did not run. ``companions``: the folder of the separate benchmarks' reports
    (bench/), whose Reliability figures and provenance are added at the end."""
    summaries = [summarize(system) for system in results["systems"]]
    out: list[str] = []
    for section in SECTIONS:
        if section is _footer_section and companions is not None:
            out += reliability_section(companions) + companions_section(companions)
        out += section(results, summaries)
    return "\n".join(out)


# The separate benchmarks: (report, its raw results, what it measures). Each runs on its own command.
COMPANIONS = (
    ("FOLLOW.md", "FOLLOW.json", "typing-follow in real Neovim and a plain LSP client (issue 16)"),
    ("CONFIDENCE.md", "CONFIDENCE.json", "where a suggestion is split (confidencePercent) on the line cases (issue 16)"),
    ("HUMANEVAL.md", "humaneval.json", "HumanEval infilling pass@1 over LSP (issue 12)"),
    ("TEAM_RESULTS.md", "team-results.json", "N editors against one team engine vs N solo servers (issue 14)"),
    ("serverfront.md", "serverfront.json", "tabfill in front of llama.cpp's server vs a naive client (issue 15)"),
    ("DECODE_STEP.md", None, "the decode step against llama.cpp on the same GGUF (issue 18)"),
    ("SOAK.md", "soak.json", "burst, soak and fuzz (issue 17)"),
    ("RESTART.md", "restart.json", "kill -9 and restart in both clients (issue 17)"),
)


def _provenance(raw: dict[str, Any]) -> str:
    """`command`, date, commit of a results file (older files may lack some; said so)."""
    parts = [f"`{raw['command']}`" if raw.get("command") else "command not recorded"]
    parts.append(str(raw.get("date") or "date not recorded"))
    parts.append(f"commit `{raw['commit']}`" if raw.get("commit") else "commit not recorded")
    return ", ".join(parts)


def _raw(folder: Path, name: str | None) -> dict[str, Any] | None:
    import json

    path = folder / name if name else None
    if path is None or not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return raw if isinstance(raw, dict) else None


def companions_section(folder: Path) -> list[str]:
    """Where the other benchmarks' figures are, and which run each comes from (a report of an older commit
    than this run's is not a picture of this code: read its commit)."""
    lines = ["", "## The separate benchmarks (their own commands; read each one's commit)", ""]
    for report_name, raw_name, about in COMPANIONS:
        if not (folder / report_name).is_file():
            lines.append(f"- {about}: not run (no `{report_name}`)")
            continue
        raw = _raw(folder, raw_name)
        if raw is not None and "command" not in raw and raw and all(isinstance(v, dict) for v in raw.values()):
            runs = "; ".join(f"{key}: {_provenance(value)}" for key, value in raw.items())  # humaneval.json: a run per model/subset
        else:
            runs = _provenance(raw) if raw is not None else "provenance in the report"
        lines.append(f"- {about}: [`{report_name}`]({report_name}) — {runs}")
    return lines


def reliability_section(folder: Path) -> list[str]:
    """Issue 17's figures: SOAK.md (burst, soak, fuzz) and RESTART.md (crash and restart), as they stand,
    their headings one level down."""
    lines = ["", "## Reliability (issue 17: `python -m bench.soak`, `python -m bench.restart`)"]
    for name in ("SOAK.md", "RESTART.md"):
        path = folder / name
        if not path.is_file():
            lines += ["", f"{name}: not run."]
            continue
        lines.append("")
        for line in path.read_text(encoding="utf-8").rstrip().splitlines():
            lines.append("#" * 2 + line if line.startswith("#") else line)
    return lines


def _header_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    machine = results["machine"]
    return [
        "# tabfill benchmark results",
        "",
        f"- Command: `{results['command']}` (from the repository root, after the README's install)",
        f"- Date: {results['date']}; commit `{results['commit']}`; wall time {results.get('wall_s', '?')} s",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, AVX2 {machine['avx2']}, "
        f"AVX-512 {machine['avx512f']}; Python {machine['python']}, torch {machine['torch']} ({machine['torch_threads']} threads)",
        f"- Model: `{results['model']}` ({results['model_dir']}); typing pace ×{results['pace']}"
        + (f"; tabfill deadline {results['deadline_ms']} ms" if results.get("deadline_ms") else ""),
        "",
        "Every system ran on the same cases in this one run, one after another (never two at once). "
        "Single absolute times on these 2-core machines are noisy: read the ratios.",
    ]


HEADLINE_SOURCES = ("type-through", "continuation", "cache", "empty")


def _headline_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    """The first table: per system (peers in the same run), the model answers and what the user saw,
    then every other answer source beside them."""
    typed = [s for s in summaries if s["requests"]]
    if not typed:
        return []

    def by_source(s: dict[str, Any], source: str) -> str:
        row = next((row for row in s["sources"] if row["source"] == source), None)
        return "0" if row is None else f"{row['served']}: {_ms(row['p50_ms'], row['p95_ms'])}"

    def correct(s: dict[str, Any]) -> str:
        c = s["correct"]
        return f"**{_fmt(c['share'], percent=True)}** ({c['correct']} of {c['keystrokes']})"

    rows: list[tuple[str, Any]] = [
        ("**model answers: p50 ms** (unserved = ∞)", lambda s: f"**{_fmt(s['model']['p50_ms'], 1)}**"),
        ("**model answers: p95 ms** (unserved = ∞)", lambda s: f"**{_fmt(s['model']['p95_ms'], 1)}**"),
        ("**keystrokes with a correct suggestion on screen**", correct),
        ("model answers served in time / requests that needed the model", lambda s: f"{s['model']['served']} / {s['model']['requests']}"),
        ("model answers served: p50 / p95 ms", lambda s: _ms(s["model"]["served_p50_ms"], s["model"]["served_p95_ms"])),
        ("model answers served whole (not cut by the deadline)", _whole),
        *((f"{source} answers served: count: p50 / p95 ms", lambda s, source=source: by_source(s, source))
          for source in HEADLINE_SOURCES if any(row["source"] == source for s in typed for row in s["sources"])),
        ("every request (unserved = ∞): p50 / p90 / p95 / p99 ms", lambda s: _ms(*s["all_requests"].values())),
        ("served requests: p50 / p90 / p95 / p99 ms", lambda s: _ms(*s["served_requests"].values())),
        ("requests / served in time", lambda s: f"{s['requests']} / {s['served']}"),
        ("accepted chars / typed", lambda s: f"{s['accepted_chars']} / {s['typed_chars']}"),
    ]
    out = [
        "",
        "## What a user gets while typing (first replay; peers in the same run)",
        "",
        "One request per keystroke, the previous one cancelled. A request is *served* when its answer arrived "
        "before the next key (an editor could show it); an unserved request counts as a **miss with an infinite "
        "latency (∞)**, so a percentile that reaches into the misses reads ∞. *Model answers*: the requests the "
        "model had to answer — served answers generated for the request, and every unserved request (an answer "
        "that never came in time cannot be type-through or cache); the peers generate every answer, so these rows "
        "compare the same kind of answer. *Correct suggestion on screen*: after that keystroke the answer arrived "
        "in time and its first line is what the user typed next. Type-through, cache and the other sources "
        "(tabfill's `source` in its `tabfill.accept` argument) are reported below them, never mixed into the "
        "model figures.",
        "",
        "| | " + " | ".join(s["name"] for s in typed) + " |",
        "|---|" + "---|" * len(typed),
    ]
    out += [f"| {label} | " + " | ".join(cell(s) for s in typed) + " |" for label, cell in rows]
    ratios = model_ratios(summaries)
    if ratios:
        out += ["", *(f"- {line}" for line in ratios)]
    return out


def model_ratios(summaries: list[dict[str, Any]]) -> list[str]:
    """Peer / tabfill model-answer p50 (the same kind of answer on both sides), one line per peer."""
    by_name = {s["name"]: s for s in summaries}
    tabfill = by_name.get("tabfill")
    if not tabfill or not tabfill["requests"]:
        return []
    lines = []
    for peer in ("llama.cpp", "transformers"):
        other = by_name.get(peer)
        if not other or not other["requests"]:
            continue
        ratio = _model_ratio(other, tabfill)
        lines.append(
            f"model-answer p50, {peer} / tabfill: {_ms(other['model']['p50_ms'])} / {_ms(tabfill['model']['p50_ms'])} ms = "
            + (f"**{ratio:.2f}×**" if ratio is not None and ratio != MISS else f"**{_fmt(ratio)}**" + " (a p50 is a miss: no finite ratio)")
        )
    return lines


def _model_ratio(peer: dict[str, Any], tabfill: dict[str, Any]) -> float | None:
    ours, theirs = tabfill["model"]["p50_ms"], peer["model"]["p50_ms"]
    if ours is None or theirs is None or ours == MISS:
        return None
    return MISS if theirs == MISS else theirs / ours if ours else None


def _typing_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    if not any(s["requests"] for s in summaries):
        return []
    out = [
        "",
        "## Typing replay (a request per keystroke, the previous one cancelled)",
        "",
        "tabfill's figures are from its first replay (the repeat replays are below). "
        "Percentiles count every request, an unserved one as a miss (∞); the served columns leave the misses "
        "out (an empty answer counts: e.g. tabfill answers at once that nothing is to be completed inside a "
        "word). *Shown*: served requests with a non-empty suggestion. *Agreed*: the shown suggestion's first line is what the "
        "user typed next. *Accepted chars*: typed characters that the ghost text on screen showed just before they were typed (each counted once; what Tab would have inserted). "
        "*CPU s*, *peak RSS*: the process from its start to the end of the first replay (line cases included).",
        "",
        "| system | requests | served | cancelled | late | all p50 / p90 / p95 / p99 ms | served p50 / p90 / p95 / p99 ms | shown | shown p50 ms | shown p95 ms | agreed | accepted chars / typed | CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if not s["requests"]:
            continue
        out.append(
            f"| {s['name']} | {s['requests']} | {s['served']} | {s['cancelled']} | {s['late']} | {_ms(*s['all_requests'].values())} | "
            f"{_ms(*s['served_requests'].values())} | {s['shown']} | {_fmt(s['shown_p50_ms'], 1)} | {_fmt(s['shown_p95_ms'], 1)} | {s['agreed']} | "
            f"{s['accepted_chars']} / {s['typed_chars']} | {_fmt(s['cpu_s'], 1)} | {_fmt(s['peak_rss_mb'], 0)} |"
        )
    return out


# Issue 5 ("Speed"): the figures the benchmark must show, checked against one run.
TARGET_P50_MS = 25.0
TARGET_P95_MS = 100.0
TARGET_VS_LLAMA = 2.0  # llama.cpp's served p50 / tabfill's
TARGET_VS_TRANSFORMERS = 4.0
TARGET_DECODE_VS_FLOOR = 1.5
TARGET_PEAK_RSS_MB = 1.5e9 / 2**20  # 1.5 GB in the MiB /proc reports (1430.5)
TARGET_SERVE_RSS_MB = 600e6 / 2**20  # issue 18: `tabfill serve` with the default model ≤ 600 MB (572.2 MiB)
FLAT_TOLERANCE = 0.02  # "flat": peak RSS after the last replay at most 2 % above the first's
TYPE_THROUGH_SOURCES = ("type-through", "continuation")
# Issue 4: the syntax layer's budgets on a 3,000-line file, and what post-processing + context add to exact match.
TARGET_SYNTAX_UPDATE_MS = 1.0
TARGET_CONTEXT_AT_MS = 2.0
TARGET_SYNTAX_GAIN_POINTS = 10.0


def _at_most(value: float | None, limit: float, unit: str) -> tuple[str, str]:
    if value is None:
        return "not measured", "–"
    if value == MISS:
        return "missed", "the percentile falls among unserved requests (∞)"
    if value <= limit:
        return "met", f"{value / limit:.2f}× the limit ({limit - value:.1f} {unit} to spare)"
    return "missed", f"over by {value - limit:.1f} {unit} ({value / limit:.2f}× the limit)"


def _at_least(value: float | None, goal: float) -> tuple[str, str]:
    if value is None:
        return "not measured", "–"
    if value == MISS:
        return "met", f"∞ against {goal:g}× needed (the peer's p50 is a miss)"
    if value >= goal:
        return "met", f"{value:.2f}× against {goal:g}× needed"
    return "missed", f"{value:.2f}× against {goal:g}× needed ({100 * (1 - value / goal):.0f} % short)"


def targets(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per issue-4 and issue-5 target: what it asks, what this run measured, met / missed / not measured, and
    by how much. Latency figures are the first replay's served requests."""
    by_name = {s["name"]: s for s in summaries}
    tabfill = by_name.get("tabfill")
    rows: list[dict[str, str]] = []

    def add(target: str, measured: str, status: str, margin: str) -> None:
        rows.append({"target": target, "measured": measured, "status": status, "margin": margin})

    typed = bool(tabfill and tabfill["requests"])
    every = tabfill["all_requests"] if tabfill and typed else {}
    counted = f" ({tabfill['requests'] - tabfill['served']} of {tabfill['requests']} unserved, counted as ∞)" if tabfill and typed else ""
    for key, limit in (("p50", TARGET_P50_MS), ("p95", TARGET_P95_MS)):
        value = every.get(key)
        add(f"typing replay: tabfill {key} over every request ≤ {limit:g} ms", f"{_fmt(value, 1)} ms{counted}",
            *_at_most(value, limit, "ms"))
    for peer, goal in (("llama.cpp", TARGET_VS_LLAMA), ("transformers", TARGET_VS_TRANSFORMERS)):
        other = by_name.get(peer)
        if tabfill and typed and other and other["requests"]:
            ratio = _model_ratio(other, tabfill)
            measured = f"{_ms(other['model']['p50_ms'])} / {_ms(tabfill['model']['p50_ms'])} ms = {_fmt(ratio, 2)}×"
        else:
            ratio, measured = None, "not run"
        add(f"model-answer p50 at least {goal:g}× lower than {peer}'s model answers (same run; unserved = ∞)",
            measured, *_at_least(ratio, goal))

    if tabfill and tabfill["requests"]:
        later = [row for row in tabfill["sources"] if row["source"] in TYPE_THROUGH_SOURCES]
        count = sum(row["served"] for row in later)
        shown = sum(row["shown"] for row in later)
        add("deadline: partial answer, the rest by type-through from background generation",
            f"{count} of {tabfill['served']} served answers from type-through/continuation ({shown} shown)",
            "evidence only", "not a pass/fail figure: the replay cannot see which request met its deadline")
    else:
        add("deadline: partial answer, the rest by type-through from background generation", "not run", "not measured", "–")

    decode = {key: value for key, value in (results.get("decode_step") or {}).items() if isinstance(value, float)}
    ratio = decode["tabfill_decode_ms"] / decode["floor_ms"] if decode.get("tabfill_decode_ms") and decode.get("floor_ms") else None
    missing = "not measured" if not decode else "not measured: no tabfill_decode_ms / floor_ms from decode_step.py (see the Decode step table)"
    add(f"decode step ≤ {TARGET_DECODE_VS_FLOOR:g}× the weight-streaming floor",
        f"{_fmt(decode.get('tabfill_decode_ms'), 2)} / {_fmt(decode.get('floor_ms'), 2)} ms = {_fmt(ratio, 2)}×" if ratio else missing,
        *(("met" if ratio <= TARGET_DECODE_VS_FLOOR else "missed",
           f"{ratio:.2f}× the floor against ≤ {TARGET_DECODE_VS_FLOOR:g}×"
           + ("" if ratio <= TARGET_DECODE_VS_FLOOR else f" ({ratio / TARGET_DECODE_VS_FLOOR:.2f}× over)"))
          if ratio else ("not measured", "–")))

    _identity_target(results, add)
    _syntax_targets(results, by_name, add)

    memory = tabfill["memory"] if tabfill else None
    peak = memory["peak_first_mb"] if memory else (tabfill["peak_rss_mb"] if tabfill and tabfill["requests"] else None)
    default_model = results.get("model") == "default"
    add("peak RSS of `tabfill serve` after the full replay ≤ 1.5 GB" + ("" if default_model else f" (default model; this run: {results.get('model')})"),
        f"{_fmt(peak, 0)} MiB", *_at_most(peak, TARGET_PEAK_RSS_MB, "MiB"))
    if default_model:
        add("peak RSS of `tabfill serve` with the default model ≤ 600 MB (572.2 MiB; issue 18)",
            f"{_fmt(peak, 0)} MiB", *_at_most(peak, TARGET_SERVE_RSS_MB, "MiB"))
    if memory:
        growth = memory["peak_growth"]
        status = "not measured" if growth is None else ("met" if growth <= FLAT_TOLERANCE else "missed")
        add(f"memory flat across a second replay (peak growth ≤ {100 * FLAT_TOLERANCE:g} %)",
            f"peak {_fmt(memory['peak_first_mb'], 0)} → {_fmt(memory['peak_last_mb'], 0)} MiB, "
            f"RSS {_fmt(memory['rss_first_mb'], 0)} → {_fmt(memory['rss_last_mb'], 0)} MiB",
            status, f"peak {memory['peak_growth_mb']:+.1f} MiB ({100 * (growth or 0):+.1f} %), RSS {memory['rss_growth_mb']:+.1f} MiB")
    else:
        add("memory flat across a second replay", "one replay only", "not measured", "–")
    return rows


def _syntax_targets(results: dict[str, Any], by_name: dict[str, dict[str, Any]], add: Any) -> None:
    """Issue 4's rows: the syntax layer's per-keystroke budgets, and the exact match that post-processing and
    cross-file context add over the plain prefix prompt (over LSP under the deadline, and in the ablation)."""
    syntax = results.get("syntax")
    for key, what, limit in (("incremental_update", "didChange applied (text, line index, tree)", TARGET_SYNTAX_UPDATE_MS),
                             ("context_at", "tree snapshot + context_at", TARGET_CONTEXT_AT_MS)):
        p50 = syntax[key]["p50_ms"] if syntax else None
        size = f" on a {syntax['lines']:,}-line file" if syntax else ""
        add(f"syntax: {what} p50 ≤ {limit:g} ms{size}", f"{_fmt(p50, 2)} ms", *_at_most(p50, limit, "ms"))
    target = f"line cases (verbatim-free): post-processing + cross-file context add ≥ {TARGET_SYNTAX_GAIN_POINTS:g} points of exact match over the plain prefix prompt"
    tabfill, plain = by_name.get("tabfill"), by_name.get("tabfill (plain prompt)")
    ours, theirs = (tabfill or {}).get("exact_match_verbatim_free"), (plain or {}).get("exact_match_verbatim_free")
    if tabfill and plain and ours is not None and theirs is not None:
        gain = 100 * (ours - theirs)
        add(target + " (over LSP, the server's deadline, whole answers)",
            f"tabfill {_fmt(ours, percent=True)} vs plain prompt {_fmt(theirs, percent=True)} "
            f"({tabfill['line_cases'] - tabfill['verbatim_line_cases']} of {tabfill['line_cases']} cases verbatim-free)",
            "met" if gain >= TARGET_SYNTAX_GAIN_POINTS else "missed", f"{gain:+.1f} points")
    else:
        add(target + " (over LSP)", "not run", "not measured", "–")
    summary = {(row["variant"], row["language"], row.get("subset", "all")): row for row in (results.get("ablation") or {}).get("summary", [])}
    full, base = summary.get(("tabfill", "all", "verbatim-free")), summary.get(("plain", "all", "verbatim-free"))
    if full and base:
        gain = full["exact_match"] - base["exact_match"]
        add(target + " (ablation, in process)",
            f"tabfill {full['exact_match']:.1f} % vs plain {base['exact_match']:.1f} % ({full['cases']} verbatim-free cases)",
            "met" if gain >= TARGET_SYNTAX_GAIN_POINTS else "missed", f"{gain:+.1f} points")
    with_them, without = similar_gain(summary, "all"), similar_gain(summary, "verbatim-free")
    if with_them is not None and without is not None:
        add("similar code's gain with and without the verbatim cases (ablation)",
            f"{with_them[0]:+.1f} points on all {with_them[1]} cases; {without[0]:+.1f} points on the "
            f"{without[1]} verbatim-free ones", "evidence only",
            f"{with_them[0] - without[0]:+.1f} points of the gain came from lines that were in the context")


def similar_gain(summary: dict[tuple[str, str, str], dict[str, Any]], subset: str) -> tuple[float, int] | None:
    """(exact-match points that windows of similar code add, cases): the `similar` variant against the same
    variant without them (`postprocess`, else `plain`), over `subset` of the ablation's cases."""
    similar = summary.get(("similar", "all", subset))
    base = summary.get(("postprocess", "all", subset)) or summary.get(("plain", "all", subset))
    if not similar or not base:
        return None
    return round(similar["exact_match"] - base["exact_match"], 1), similar["cases"]


def _identity_target(results: dict[str, Any], add: Any) -> None:
    target = "greedy identity: tabfill (token healing off) on the transformers peer's very token ids gives its first line"
    identity = results.get("identity")
    if not identity or not identity.get("cases"):
        add(target, "not run", "not measured", "–")
        return
    differ = identity["cases"] - identity["identical"]
    measured = (f"identical on {identity['identical']} of {identity['cases']} cases; {differ} differ, of which "
                f"{identity['ties']} at a floating-point tie (top-2 logits within {identity['tie_epsilon']:g})")
    beyond = differ - identity["ties"]
    add(target, measured, "met" if beyond == 0 else "missed",
        "every difference is a tie" if beyond == 0 else f"{beyond} differ beyond a tie")


def _ablation_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    ablation = results.get("ablation")
    if not ablation:
        return []
    out = [
        "",
        f"## Line completion: what each part of the syntax layer earns ({ablation['cases']} cases, `bench/line_eval.py`)",
        "",
        "In the benchmark's process, on one loaded model, through the server's own `DocumentStore` and "
        "`CompletionService`; whole answers (no deadline), so only the prompt and the post-processing differ. "
        "*plain*: the prefix only and the plain newline rules (the `tabfill (plain prompt)` system); *postprocess*: "
        "syntax-aware post-processing; *definitions*: + the imported names' definitions and recent edits; "
        "*similar*: post-processing + windows of similar code (workspace files nearest first, other open documents, "
        "this file outside the prompt — the code after the cursor included); *tabfill*: everything (the defaults). "
        "The cases' own files are in the workspace folder: the file a case is cut from is never read from disk.",
        "",
        "*cases*: all of them, the verbatim-free ones, the verbatim ones (the whole line also occurs, "
        "whitespace-normalised, in a file the server may read), and per language the verbatim-free ones.",
        "",
        "| variant | cases | language | n | exact match | edit similarity | Δ exact match vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {(row["language"], row.get("subset", "all")): row["exact_match"] for row in ablation["summary"] if row["variant"] == "plain"}
    for row in ablation["summary"]:
        key = (row["language"], row.get("subset", "all"))
        delta = row["exact_match"] - base[key] if key in base else None
        out.append(
            f"| {row['variant']} | {row.get('subset', 'all')} | {row['language']} | {row['cases']} | {row['exact_match']:.1f} % | "
            f"{row['edit_similarity']:.3f} | " + ("–" if delta is None else f"{delta:+.1f} points") + " |"
        )
    return out


def _identity_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    identity = results.get("identity")
    if not identity or not identity.get("cases"):
        return []
    out = [
        "",
        f"## Greedy identity (`bench/identity.py`, {identity['cases']} line cases)",
        "",
        "The transformers peer's own generation (`bench/naive_peer.py`'s `generate_answer`: `generate`, greedy, "
        "its stop criterion and token budget) and tabfill's engine (lean decoder, prefix cache, prompt-lookup "
        "drafts) on the very same prompt token ids, token healing off, in one process. Greedy decoding must give "
        "the same first line; where they differ, *tie* says the peer's two best logits at the first differing "
        f"token were within {identity['tie_epsilon']:g} of each other (floating-point order decides a tie).",
        "",
        "| cases | identical first line | differ | of which ties |",
        "|---|---|---|---|",
        f"| {identity['cases']} | {identity['identical']} | {identity['cases'] - identity['identical']} | {identity['ties']} |",
    ]
    differing = [row for row in identity.get("rows", []) if not row["identical"]]
    if differing:
        out += ["", "| case | transformers | tabfill | top-2 logit gap |", "|---|---|---|---|"]
        out += [f"| {row['case']} | `{row['peer']}` | `{row['tabfill']}` | {_fmt(row.get('gap'), 5)} |" for row in differing[:20]]
    return out


def _targets_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    out = [
        "",
        "## Targets (issues 4, 5, 12 and 18)",
        "",
        "Latency figures: tabfill's first typing replay and the peers' in this same run, every request counted "
        "(an unserved one is a miss, ∞); ratios compare model answers with model answers (the table above). "
        "Greedy identity: see its section below. Line-case exact match leaves out the cases whose line is "
        "verbatim in a file the server may read. tabfill answers under its deadline over LSP"
        + (f" ({results['deadline_ms']} ms here)" if results.get("deadline_ms") else " (the server's default here)")
        + "; a line cut by it is scored whole (asked again, as the plugins do).",
        "",
        "| target | measured | status | by how much |",
        "|---|---|---|---|",
    ]
    for row in targets(results, summaries):
        status = f"**{row['status']}**" if row["status"] in ("met", "missed") else row["status"]
        out.append(f"| {row['target']} | {row['measured']} | {status} | {row['margin']} |")
    return out


def _sources_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    rows = []
    for s in summaries:
        for label, sources in (("first", s["sources"]), ("repeat", (s.get("repeat") or {}).get("sources") or [])):
            for row in sources:
                rows.append(
                    f"| {s['name']} | {label} | {row['source']} | {row['served']} | {_fmt(row['share'], percent=True)} | "
                    f"{_fmt(row['p50_ms'], 1)} | {_fmt(row['p95_ms'], 1)} | {row['shown']} |"
                )
    if not rows:
        return []
    return [
        "",
        "### Served requests by answer source",
        "",
        "Where each served answer came from, as tabfill's item says (`source` in its `tabfill.accept` argument): "
        "*model* (generated for this request), *cache*, *type-through* (the rest of an earlier suggestion the user "
        "is typing), or any other value the server sends; *empty*: no item (nothing to complete, or nothing "
        "came; over LSP tabfill does not say which). The peers generate every answer (*model*). A low served "
        "p50 made of cache and type-through answers can hide slow model answers: read the model row.",
        "",
        "| system | replay | source | served | share | p50 ms | p95 ms | shown |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _repeat_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    repeated = [s for s in summaries if s.get("repeat")]
    if not repeated:
        return []
    out = [
        "",
        "### Repeat replay (the same server process typing again)",
        "",
        "Not the latency figures above: caches are warm from the first replay. Shown because it is what a "
        "long editing session looks like in part.",
        "",
        "| system | replays | requests | served | p50 ms | p95 ms | shown | agreed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in repeated:
        r = s["repeat"]
        out.append(
            f"| {s['name']} | {r['replays']} | {r['requests']} | {r['served']} | {_fmt(r['p50_ms'], 1)} | "
            f"{_fmt(r['p95_ms'], 1)} | {r['shown']} | {r['agreed']} |"
        )
    return out


def _memory_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    rows = []
    for system in results["systems"]:
        steps = system.get("memory") or []
        if not any(str(step.get("after", "")).startswith("replay") for step in steps):
            continue
        cells = "; ".join(f"{step['after']}: {_fmt(step['rss_mb'], 0)} / {_fmt(step['peak_rss_mb'], 0)}" for step in steps)
        growth = memory_growth(system)
        change = f"{growth['rss_growth_mb']:+.1f} / {growth['peak_growth_mb']:+.1f}" if growth else "–"
        rows.append(f"| {system['name']} | {cells} | {change} |")
    if not rows:
        return []
    return [
        "",
        "## Memory (resident set of the server process, MiB)",
        "",
        "After each step in the same process: current RSS (VmRSS) / peak RSS (VmHWM). *Growth*: from after "
        "the first replay to after the last (RSS / peak)."
        + (" The repeat replays typed the same functions again (a cache keyed by the text may find its entries "
           "again and not grow; `--repeat-cases fresh` types other functions)." if results.get("repeat_cases", "same") == "same"
           else " The repeat replays typed other functions (`--repeat-cases fresh`)."),
        "",
        "| system | RSS / peak after each step | growth MiB |",
        "|---|---|---|",
        *rows,
        *_gc_lines(results),
    ]


def _gc_lines(results: dict[str, Any]) -> list[str]:
    """The server's garbage-collector pauses after its model loaded (its `gc` status at the end), when it said."""
    lines = []
    for system in results["systems"]:
        gc_status = (system.get("status") or {}).get("gc") or {}
        if not gc_status.get("installed"):
            continue
        full, young = gc_status.get("generation2") or {}, gc_status.get("generation1") or {}
        lines.append(
            f"- {system['name']}: full garbage collections (they stop every thread) after the model loaded, to the end of "
            f"the run: {full.get('collections', 0)}, "
            f"{_fmt(full.get('totalMs'), 1)} ms in all, the longest {_fmt(full.get('longestMs'), 1)} ms; generation 1: "
            f"{young.get('collections', 0)}, the longest {_fmt(young.get('longestMs'), 1)} ms; objects frozen after the model "
            f"loaded: {gc_status.get('frozenObjects', 0):,} (`tabfill/status` → `gc`)."
        )
    return ["", *lines] if lines else []


# The measurements behind the lean decoder's design (they were docstrings of tabfill/kernels/decoder.py).
DECODER_NOTES = (
    'Why the lean decoder is built as it is (`tabfill/kernels/`), measured with `python -m bench.decode_step` on the 2-core AVX2 box (torch 2.13 CPU, SmolLM2-135M):',
    '',
    "- fp32 weights stored input-major (`[K, N]`, `x @ w`): at one token MKL streams them about 1.4x as fast as the `[N, K]` layout (31 vs 45 ms for all of SmolLM2's matrices), 2x for the 49152-wide lm_head.",
    '- Each product split over K, one slice per thread (`packing.Dense`): MKL runs a matrix-vector product on one thread (the same ms/token with 1 and 2 threads, ~17 GB/s of the ~32 GB/s two cores stream); split, 31 -> 22 ms at one token, 66 -> 45 ms at eight.',
    '- `quantize="int8"`: fbgemm dynamic quantization (int8 per-output-channel weights, activations per token) for q|k|v, o, gate|up and lm_head. Per-token activation quantization alone lost the argmax on half the positions; smoothing from a calibration forward fixes most of it. Quantizing the MLP down projections too dropped teacher-forced argmax agreement with fp32 from ~87% to ~57%, so they stay fp32. a faster decode (measured in every run: `int8 decode speed-up over fp32` in the table below), ~1.7x faster prefill, ~2x faster 8-token verify than fp32, at ~87% agreement. Weight-only int8 would keep ~97%, but its kernel here (`aten._weight_int8pack_mm`) streams ~1-2 GB/s without AVX-512; fp16/bf16 matmuls and fbgemm\'s fp16 linear are slower than fp32 on this CPU.',
    '- `torch.compile` of `forward` (dynamic shapes) graph-breaks around the cache update, recompiles per layer until the recompile limit, took 7-34 s and ran slower than eager (47 vs 40 ms): not used.',
    '- Prefill chunks (`steps.PREFILL_CHUNK_TOKENS`): the deadline is checked between chunks; 128 costs ~5% more than 256, 64 ~20%.',
)


def _decode_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    decode = results.get("decode_step")
    if not decode:
        return []
    out = [
        "",
        "## Decode step (`bench/decode_step.py`)",
        "",
        "Every figure `measure()` returned; a time per token is divided by the floor of its weight format when "
        "one is named in its key (e.g. `int8 floor ms/token` for `lean int8 decode ms/token`), else by `floor_ms`.",
        "",
        *DECODER_NOTES,
        "",
        "| measure | value | / floor |",
        "|---|---|---|",
    ]
    for key, value in decode.items():
        if isinstance(value, str):
            out.append(f"| {key} | {value} | – |")
            continue
        floor = _floor_for(key, decode)
        ratio = f"{value / floor:.2f}×" if floor else "–"
        out.append(f"| {key} | {_fmt(float(value), 3)} | {ratio} |")
    return out


def _floor_for(key: str, decode: dict[str, Any]) -> float | None:
    """The floor a decode time is read against: `<format> floor ms/token` when the key names that format,
    else `floor_ms`; None for what is not a time per token, or is a floor."""
    if "floor" in key or not (key.endswith("_ms") or "ms/token" in key):
        return None
    floors = {name.split(" floor", 1)[0]: value for name, value in decode.items()
              if " floor ms" in name and isinstance(value, float) and value > 0}
    for weight_format, value in floors.items():
        if weight_format and weight_format in key.split():
            return float(value)
    floor = decode.get("floor_ms")
    return float(floor) if isinstance(floor, float) and floor > 0 else None


def _line_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    lined = [s for s in summaries if s["line_cases"]]
    if not lined:
        return []
    out = [
        "",
        "## Line completion over LSP (the rest of a real line removed; the rest of the file kept as suffix)",
        "",
        "A tabfill answer cut by its deadline is scored whole: the benchmark waits for the server's "
        "`tabfill/completionReady` and asks again at the same place, as the editor plugins do (*asked again*). "
        "*p50 first answer*: the first response; *p50 whole answer*: until the text that is scored. "
        "*Verbatim*: cases whose whole line also occurs verbatim (whitespace-normalised) in a file the server may "
        "read; *exact match, verbatim-free* leaves them out.",
        "",
        "| system | cases | verbatim | exact match | exact match, verbatim-free | edit similarity | empty | p50 first answer ms | asked again | p50 whole answer ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in lined:
        out.append(
            f"| {s['name']} | {s['line_cases']} | {s['verbatim_line_cases']} | {_fmt(s['exact_match'], percent=True)} | "
            f"{_fmt(s['exact_match_verbatim_free'], percent=True)} | {_fmt(s['edit_similarity'], 3)} | "
            f"{_fmt(s['empty_rate'], percent=True)} | {_fmt(s['line_p50_ms'], 1)} | {s.get('line_settled', 0)} | "
            f"{_fmt(s.get('line_whole_p50_ms'), 1)} |"
        )
    return out


def _floor_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    floor = results["floor"]
    out = [
        "",
        "## The floor",
        "",
        f"Memory bandwidth measured in this run: **{floor['copy_bandwidth_gbs']} GB/s** (`bench/machine.py`'s "
        "`memory_bandwidth_gbs`, the one bandwidth measure of the benchmark; `bench/decode_step.py` uses it too). "
        "One decode step must stream every weight once, so no decode step can be faster than:",
        "",
        "| weights | bytes | decode floor ms/token |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {size:,} | {floor['decode_floor_ms'][name]} |" for name, size in floor["weight_bytes"].items()]
    return out


def _syntax_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    syntax = results.get("syntax")
    if not syntax:
        return []
    update, context = syntax["incremental_update"], syntax["context_at"]
    return [
        "",
        f"## Syntax layer ({syntax['lines']:,}-line Python file, {update['n']} keystrokes)",
        "",
        "| step | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|",
        f"| didChange applied (text, line index, tree) | {update['p50_ms']} | {update['p95_ms']} | {update['max_ms']} |",
        f"| tree snapshot + context_at | {context['p50_ms']} | {context['p95_ms']} | {context['max_ms']} |",
    ]


def _skipped_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    if not results.get("skipped"):
        return []
    return ["", "## Skipped", "", *(f"- {name}: {why}" for name, why in results["skipped"].items())]


def _footer_section(results: dict[str, Any], summaries: list[dict[str, Any]]) -> list[str]:
    return ["", "Raw numbers: `results.json`; latency distribution: `latency.png`.", ""]


# RESULTS.md in order. A new part of the benchmark adds one function here.
SECTIONS = (
    _header_section,
    _headline_section,
    _targets_section,
    _typing_section,
    _sources_section,
    _repeat_section,
    _memory_section,
    _line_section,
    _ablation_section,
    _identity_section,
    _decode_section,
    _floor_section,
    _syntax_section,
    _skipped_section,
    _footer_section,
)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for system in results["systems"]:
        for axis, rows, served_only in ((axes[0], system["typing"], True), (axes[1], system["line"], False)):
            values = sorted(r["latency_ms"] for r in rows if r["latency_ms"] is not None and (r.get("served") or not served_only))
            if values:
                axis.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=f"{system['name']} (n={len(values)})")
    axes[0].set_title("Typing replay: served requests")
    axes[1].set_title("Line completion: every request")
    for axis in axes:
        if not axis.lines:
            axis.text(0.5, 0.5, "not run", ha="center", va="center", transform=axis.transAxes)
            continue
        axis.set_xscale("log")
        axis.set_xlabel("latency, ms (log)")
        axis.set_ylabel("fraction of requests ≤ latency")
        axis.axvline(100, color="grey", linestyle=":", linewidth=1)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"tabfill benchmark {results['date']} commit {results['commit']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Render RESULTS.md (and latency.png) again from results.json and the separate benchmarks' reports,
    without running anything: after `python -m bench.soak` or `bench.restart` has written its own."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="the folder of results.json (default bench/)")
    args = parser.parse_args(argv)
    results = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
    plot(results, args.out / "latency.png")
    (args.out / "RESULTS.md").write_text(markdown(results, args.out), encoding="utf-8")
    print(args.out / "RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
