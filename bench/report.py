"""Summaries, bench/RESULTS.md and the latency plot, from the raw results of one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(system: dict[str, Any]) -> dict[str, Any]:
    line = system["line"]
    typing = system["typing"]
    served = [row for row in typing if row["served"]]
    served_ms = [row["latency_ms"] for row in served]
    shown = [row for row in served if row["shown"]]
    summary: dict[str, Any] = {
        "name": system["name"],
        "line_cases": len(line),
        "exact_match": _ratio(sum(row["exact"] for row in line), len(line)),
        "edit_similarity": _mean([row["edit_similarity"] for row in line]),
        "empty_rate": _ratio(sum(row["empty"] for row in line), len(line)),
        "line_p50_ms": percentile([row["latency_ms"] for row in line if row["latency_ms"] is not None], 0.5),
        "requests": len(typing),
        "served": len(served),
        "cancelled": sum(row["cancelled"] for row in typing),
        "late": sum(row["late"] for row in typing),
        "errors": sum(bool(row["error"]) for row in typing) + sum(bool(row["error"]) for row in line),
        "p50_ms": percentile(served_ms, 0.5),
        "p95_ms": percentile(served_ms, 0.95),
        "p99_ms": percentile(served_ms, 0.99),
        "shown": len(shown),
        "shown_p50_ms": percentile([row["latency_ms"] for row in shown], 0.5),
        "shown_p95_ms": percentile([row["latency_ms"] for row in shown], 0.95),
        "agreed": sum(row["agreed"] for row in shown),
        "accepted_chars": sum(row["accepted_chars"] for row in shown),
        "typed_chars": sum(_typed_per_case(typing).values()),
        "cpu_s": system.get("cpu_s"),
        "peak_rss_mb": system.get("peak_rss_mb"),
        "startup_s": system.get("startup_s"),
    }
    return summary


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
    if percent:
        return f"{100 * value:.1f} %"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    summaries = [summarize(system) for system in results["systems"]]
    machine = results["machine"]
    floor = results["floor"]
    typed = any(s["requests"] for s in summaries)
    out = [
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
    if typed:
        out += _typing_section(summaries)
    out += [
        "",
        "## Line completion (the rest of a real line removed; the rest of the file kept as suffix)",
        "",
        "| system | cases | exact match | edit similarity | empty | p50 latency ms |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        out.append(
            f"| {s['name']} | {s['line_cases']} | {_fmt(s['exact_match'], percent=True)} | {_fmt(s['edit_similarity'], 3)} | "
            f"{_fmt(s['empty_rate'], percent=True)} | {_fmt(s['line_p50_ms'], 1)} |"
        )
    out += [
        "",
        "## The floor",
        "",
        f"Memory copy bandwidth measured in this run: **{floor['copy_bandwidth_gbs']} GB/s** (bytes read + written "
        "per second, best of 7 copies of 256 MiB). One decode step must stream every weight once, so no decode step "
        "can be faster than:",
        "",
        "| weights | bytes | decode floor ms/token |",
        "|---|---|---|",
    ]
    for name, size in floor["weight_bytes"].items():
        out.append(f"| {name} | {size:,} | {floor['decode_floor_ms'][name]} |")
    syntax = results.get("syntax")
    if syntax:
        update, context = syntax["incremental_update"], syntax["context_at"]
        out += [
            "",
            f"## Syntax layer ({syntax['lines']:,}-line Python file, {update['n']} keystrokes)",
            "",
            "| step | p50 ms | p95 ms | max ms |",
            "|---|---|---|---|",
            f"| didChange applied (text, line index, tree) | {update['p50_ms']} | {update['p95_ms']} | {update['max_ms']} |",
            f"| tree snapshot + context_at | {context['p50_ms']} | {context['p95_ms']} | {context['max_ms']} |",
        ]
    if results.get("skipped"):
        out += ["", "## Skipped", ""]
        out += [f"- {name}: {why}" for name, why in results["skipped"].items()]
    out += ["", "Raw numbers: `results.json`; latency distribution: `latency.png`.", ""]
    return "\n".join(out)


def _typing_section(summaries: list[dict[str, Any]]) -> list[str]:
    out = [
        "",
        "## Typing replay (a request per keystroke, the previous one cancelled)",
        "",
        "A request is *served* when its answer arrived before the next keystroke (an editor could show it); "
        "latency percentiles are over served requests (an empty answer counts: e.g. tabfill answers at once that "
        "nothing is to be completed inside a word), *shown* over served requests with a non-empty suggestion. *Agreed*: the shown suggestion's first line is what the "
        "user typed next. *Accepted chars*: the characters of shown suggestions that match what was typed next.",
        "",
        "| system | requests | served | cancelled | late | p50 ms | p95 ms | p99 ms | shown | shown p50 ms | shown p95 ms | agreed | accepted chars / typed | CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if not s["requests"]:
            continue
        out.append(
            f"| {s['name']} | {s['requests']} | {s['served']} | {s['cancelled']} | {s['late']} | {_fmt(s['p50_ms'], 1)} | "
            f"{_fmt(s['p95_ms'], 1)} | {_fmt(s['p99_ms'], 1)} | {s['shown']} | {_fmt(s['shown_p50_ms'], 1)} | {_fmt(s['shown_p95_ms'], 1)} | {s['agreed']} | "
            f"{s['accepted_chars']} / {s['typed_chars']} | {_fmt(s['cpu_s'], 1)} | {_fmt(s['peak_rss_mb'], 0)} |"
        )
    ratios = _ratios(summaries)
    if ratios:
        out += ["", *ratios]
    return out


def _ratios(summaries: list[dict[str, Any]]) -> list[str]:
    by_name = {s["name"]: s for s in summaries}
    tabfill = by_name.get("tabfill")
    if not tabfill or not tabfill["p50_ms"]:
        return []
    lines = []
    for peer in ("llama.cpp", "transformers"):
        other = by_name.get(peer)
        if other and other["p50_ms"]:
            lines.append(f"- p50 of served requests, {peer} / tabfill: **{other['p50_ms'] / tabfill['p50_ms']:.2f}×**")
        if other and other["requests"]:
            lines.append(
                f"- requests served, tabfill / {peer}: {tabfill['served']} / {other['served']} of {tabfill['requests']}"
            )
    return lines


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
