"""`python -m bench.serverfront`: llama.cpp's server alone vs tabfill in front of the same server.

Both type the same cases key by key (bench/replay.py) against llama-cpp-python's OpenAI-compatible server
on the default model's GGUF, a fresh server process per system (so neither inherits the other's cache):

- "server alone": a thin client, as a naive editor plugin is: one `POST /v1/completions` per keystroke with
  the prefix window before the cursor (tabfill's token budget, whole lines: bench/systems.py LlamaCppSystem),
  the previous request abandoned (connection closed);
- "tabfill in front": `tabfill serve --engine openai+http://…/v1` over LSP (stable prompt head, deadline cut
  with the stream kept open for the continuation, type-through, cancel = close).

Reported per system: model-answer latency p50/p95 (every request that needed the model; an unanswered one
counts as a miss, i.e. infinitely late), the served share (answered before the next keystroke), the share of
keystrokes after which a correct suggestion was on screen (served, non-empty, and its first line is what the
user typed next), and, from a probe inside the server (bench/llama_probe.py), the prompt tokens the server
processed per keystroke and the share of prompt tokens it served from its cache. Writes
bench/serverfront.md and bench/serverfront.json. Reports; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import machine
from bench.cases import typing_cases
from bench.replay import run_typing_case
from bench.run import ensure_llama_cpp, log
from bench.systems import LlamaCppSystem, System, TabfillSystem, _free_port
from tabfill.completion.models import preset_gguf, resolve_model

HERE = Path(__file__).resolve().parent
MODEL_SOURCES = ("model", "continuation")  # answers that came from the server
OWN_SOURCES = ("type-through", "cache")  # tabfill's answers without the server


class ProbedServer:
    """llama-cpp-python's server, started through bench/llama_probe.py."""

    def __init__(self, python: Path, gguf: Path, threads: int, probe: Path) -> None:
        self.python, self.gguf, self.threads, self.probe = python, gguf, threads, probe
        self.port = _free_port()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.probe.write_text("")
        env = {**os.environ, "TABFILL_LLAMA_PROBE": str(self.probe)}
        self.process = await asyncio.create_subprocess_exec(
            str(self.python), str(HERE / "llama_probe.py"), "--model", str(self.gguf), "--host", "127.0.0.1",
            "--port", str(self.port), "--n_threads", str(self.threads), "--n_ctx", "2048",
            stdout=asyncio.subprocess.DEVNULL, stderr=self.probe.with_suffix(".log").open("ab"), env=env,
        )
        deadline = time.monotonic() + 300
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get(f"http://127.0.0.1:{self.port}/v1/models")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
            else:
                raise RuntimeError("llama_cpp.server did not start")
            # one tiny completion first, so neither system pays the server's first-call set-up
            await client.post(f"http://127.0.0.1:{self.port}/v1/completions", json={"prompt": "a", "max_tokens": 1}, timeout=120)
        self.probe.write_text("")

    def records(self) -> list[dict[str, int]]:
        return [json.loads(line) for line in self.probe.read_text().splitlines() if line.strip()]

    async def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()


class NaiveClient(LlamaCppSystem):
    """bench/systems.py's llama.cpp client, pointed at an already running server."""

    def __init__(self, server: ProbedServer, model_dir: str) -> None:
        super().__init__(server.python, server.gguf, model_dir)
        self.port = server.port
        self.name = "llama.cpp server alone (thin client)"

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summarize(name: str, rows: list[dict[str, Any]], records: list[dict[str, int]], server_cpu_s: float) -> dict[str, Any]:
    requests = len(rows)
    # every request that went to the model: all but tabfill's own type-through and result-cache answers; an
    # empty answer counts at its latency, a request never answered (cancelled, failed) as a miss (infinite)
    model_rows = [r for r in rows if r["source"] not in OWN_SOURCES]
    latencies = [math.inf if r["text_missing"] else r["latency_ms"] for r in model_rows]
    prompt = sum(r["prompt_tokens"] for r in records)
    cached = sum(r["cached_tokens"] for r in records)
    return {
        "name": name,
        "requests": requests,
        "model_requests": len(model_rows),
        "model_answered": sum(1 for r in model_rows if not r["text_missing"]),
        "model_nonempty": sum(1 for r in model_rows if r["source"] in MODEL_SOURCES and r["shown"]),
        "model_p50_ms": percentile(latencies, 0.5),
        "model_p95_ms": percentile(latencies, 0.95),
        "served_share": sum(r["served"] for r in rows) / requests if requests else None,
        "correct_on_screen_share": sum(r["served"] and r["agreed"] for r in rows) / requests if requests else None,
        "server_generate_calls": len(records),
        "server_prompt_tokens_per_keystroke": prompt / requests if requests else None,
        "server_processed_tokens_per_keystroke": (prompt - cached) / requests if requests else None,
        "server_cached_share": cached / prompt if prompt else None,
        "server_cpu_s": round(server_cpu_s, 1),
        "sources": {source: sum(1 for r in rows if str(r["source"]) == source) for source in sorted({str(r["source"]) for r in rows})},
    }


async def run_one(system: System, server: ProbedServer, cases: list[Any], pause_s: float) -> dict[str, Any]:
    await server.start()
    try:
        await system.start()
        opened = system.open

        async def open_then_read(uri: str, language_id: str, text: str) -> None:
            # NOTE: the user opens the file and reads for a moment before typing (both systems alike)
            await opened(uri, language_id, text)
            await asyncio.sleep(pause_s)

        system.open = open_then_read  # type: ignore[method-assign]
        rows: list[dict[str, Any]] = []
        for case in cases:
            log(f"{system.name}: typing {case.name} ({len(case.keys)} keys)")
            for row in await run_typing_case(system, case):
                row["text_missing"] = row["latency_ms"] is None or row["source"] is None
                rows.append(row)
        await system.stop()
        assert server.process is not None
        server_cpu = machine.process_usage(server.process.pid).cpu_s
        summary = summarize(system.name, rows, server.records(), server_cpu)
        if isinstance(system, TabfillSystem):
            summary["engine"] = system.status.get("engine", {})
        return {"summary": summary, "rows": rows}
    finally:
        await server.stop()


def _fmt(value: Any, digits: int = 1, percent: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "miss"
    return f"{value:.{digits}%}" if percent else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# tabfill in front of llama.cpp's server vs the server alone",
        "",
        f"`{results['command']}` — {results['date']}, commit {results['commit']}, {results['machine'].get('cpu', '')}, "
        f"load average {results['load_before']} before the run, {results['load_after']} after (2 cores: above 2, other work shared them)",
        "",
        f"llama-cpp-python server, default model GGUF, {results['threads']} threads, {results['cases']} typing cases at pace "
        f"{results['pace']}; a fresh server per system. Model-answer percentiles count every request that needed the model "
        "(all but tabfill's type-through and cache answers; unanswered = miss). *Correct on screen*: share of keystrokes after which a served, non-empty suggestion whose "
        "first line the user then typed was shown. Server tokens come from a probe in the server (bench/llama_probe.py).",
        "",
        "| system | requests | to the model (answered / with text) | model p50 ms | model p95 ms | served | correct on screen | server prompt tokens / keystroke | processed / keystroke | cached share | server CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["systems"]:
        lines.append(
            f"| {s['name']} | {s['requests']} | {s['model_requests']} ({s['model_answered']} / {s['model_nonempty']}) | {_fmt(s['model_p50_ms'])} | {_fmt(s['model_p95_ms'])} | "
            f"{_fmt(s['served_share'], percent=True)} | {_fmt(s['correct_on_screen_share'], percent=True)} | "
            f"{_fmt(s['server_prompt_tokens_per_keystroke'])} | {_fmt(s['server_processed_tokens_per_keystroke'])} | "
            f"{_fmt(s['server_cached_share'], percent=True)} | {s['server_cpu_s']} |"
        )
    naive, front = results["systems"][0], results["systems"][-1]
    lines += ["", "## Targets", ""]
    if naive["correct_on_screen_share"] and front["correct_on_screen_share"] is not None:
        ratio = front["correct_on_screen_share"] / naive["correct_on_screen_share"]
        lines.append(f"- correct suggestion on screen, tabfill in front / server alone: **{ratio:.2f}×** (target ≥ 3×: {'met' if ratio >= 3 else 'missed'})")
    else:
        lines.append(f"- correct suggestion on screen: server alone {naive['correct_on_screen_share']}, tabfill in front {front['correct_on_screen_share']} (ratio undefined)")
    share = front["server_cached_share"]
    lines.append(f"- prompt tokens served from the server's cache with tabfill in front: **{_fmt(share, percent=True)}** "
                 f"(target ≥ 80 %: {'met' if share is not None and share >= 0.8 else 'missed'}); server alone: {_fmt(naive['server_cached_share'], percent=True)}")
    lines += ["", "Answer sources per system: " + "; ".join(f"{s['name']}: {s['sources']}" for s in results["systems"]), ""]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    python, how = ensure_llama_cpp(install=not args.no_install)
    if python is None:
        raise SystemExit(f"llama-cpp-python's server is not available: {how}")
    gguf, model_dir = preset_gguf("default"), resolve_model("default")
    assert gguf is not None
    cases = typing_cases(args.typing_cases, pace=args.pace)
    results: dict[str, Any] = {
        "command": args.command_line, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": machine.git_commit(),
        "machine": machine.describe(), "load_before": round(os.getloadavg()[0], 1), "threads": args.threads, "cases": len(cases), "pace": args.pace, "systems": [], "rows": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    probe = args.out.with_suffix(".probe.jsonl")
    for which in ("naive", "tabfill"):
        server = ProbedServer(python, gguf, args.threads, probe)
        system: System
        if which == "naive":
            system = NaiveClient(server, model_dir)
        else:
            options: dict[str, Any] = {"engine": f"openai+http://127.0.0.1:{server.port}/v1", "engineModel": "default"}
            if args.deadline_ms is not None:
                options["deadlineMs"] = args.deadline_ms
            system = TabfillSystem("tabfill in front of the server", "default", options)
        outcome = await run_one(system, server, cases, args.pause_s)
        results["systems"].append(outcome["summary"])
        results["rows"][system.name] = outcome["rows"]
        log(f"{system.name}: {json.dumps({k: v for k, v in outcome['summary'].items() if k != 'engine'}, default=str)}")
    probe.unlink(missing_ok=True)
    results["load_after"] = round(os.getloadavg()[0], 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serverfront", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--typing-cases", type=int, default=4)
    parser.add_argument("--pace", type=float, default=1.0, help="typing speed multiplier (1.0: 8–12 chars/s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's threads (1: on a shared 2-core machine two spinning threads starve each other)")
    parser.add_argument("--deadline-ms", type=int, help="tabfill's per-request deadline (default: the server's)")
    parser.add_argument("--pause-s", type=float, default=5.0, help="seconds between opening a file and the first key")
    parser.add_argument("--no-install", action="store_true", help="fail unless llama-cpp-python's server is already built")
    parser.add_argument("--out", type=Path, default=HERE / "serverfront.md", help="the report (a .json beside it)")
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "bench.serverfront", *(sys.argv[1:] if argv is None else argv)])
    results = asyncio.run(run(args))
    args.out.write_text(markdown(results))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
