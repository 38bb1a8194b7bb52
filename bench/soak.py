"""Reliability of `tabfill serve` over stdio: a burst, a soak and fuzzed traffic (issue 17).

    python -m bench.soak                         # all three at full size (about an hour on 2 cores)
    python -m bench.soak --requests 500 --burst 3000 --fuzz-examples 30   # a short run

- burst: `--burst` messages written at once (didChange + inlineCompletion per keystroke, two thirds of the
  requests cancelled): the time from the burst's last byte to the newest request's answer, the server's CPU
  per message, RSS before and after, and whether the document equals the replay of the edits;
- soak: a session of random edits and inline requests over several documents of bench/data, replayed until
  `--requests` requests were answered: RSS after the first replay and at the end, p95 latency of the first and
  the last replay;
- fuzz: `--fuzz-examples` hypothesis sessions (bench/lsp_fuzz.py) against the same server: messages sent,
  crashes, unanswered requests, internal errors, documents that differ from the replay.

Writes bench/SOAK.md and bench/soak.json and prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from bench.lsp_client import LspClient, RpcError
from bench.lsp_fuzz import Traffic, answered, digest, frame, position_of, sessions
from bench.machine import process_usage, provenance
from bench.systems import TabfillSystem

HERE = Path(__file__).parent
SOAK_FILES = ["python/textwrap.py", "python/shlex.py", "python/heapq.py"]  # from bench/data


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)


async def start(model: str) -> TabfillSystem:
    system = TabfillSystem("tabfill", model, ready_timeout_s=3600)  # a loaded machine may take long to load the model
    await system.start()
    return system


def client_of(system: TabfillSystem) -> LspClient:
    assert system.client is not None
    return system.client


async def document_digest(client: LspClient, uri: str) -> str:
    status = await client.request("tabfill/status", {"textDocument": {"uri": uri}})
    return (status.get("document") or {}).get("sha256", "")


def change(uri: str, version: int, text: str, offset: int, inserted: str, removed: int = 0) -> dict[str, Any]:
    start, end = position_of(text, offset), position_of(text, offset + removed)
    return {"method": "textDocument/didChange", "params": {
        "textDocument": {"uri": uri, "version": version}, "contentChanges": [{"range": {"start": start, "end": end}, "text": inserted}],
    }}


def inline(request_id: int, uri: str, text: str, offset: int) -> dict[str, Any]:
    return {"id": request_id, "method": "textDocument/inlineCompletion", "params": {
        "textDocument": {"uri": uri}, "position": position_of(text, offset), "context": {"triggerKind": 2},
    }}


# ---------------------------------------------------------------------------------------------- burst
async def burst(system: TabfillSystem, messages: int) -> dict[str, Any]:
    client = client_of(system)
    uri = (HERE / "data" / "burst.py").as_uri()  # not on disk: an unsaved buffer
    text = (HERE / "data" / "python" / "textwrap.py").read_text()[:6000]
    text = text[: text.rfind("\n") + 1]
    await system.open(uri, "python", text)
    await client.request("textDocument/inlineCompletion", inline(0, uri, text, len(text))["params"])  # warm
    started_baseline = time.perf_counter()
    await client.request("textDocument/inlineCompletion", inline(0, uri, text[:-1], len(text) - 1)["params"])
    baseline_ms = (time.perf_counter() - started_baseline) * 1000  # one request on this machine now, no burst
    before = process_usage(system.pid)
    typed = "    result = compute(value, other) + 1\n"
    data, ids, cancelled, version, sent = [], [], 0, 1, 0
    request_id = 10_000_000
    while sent < messages:
        version += 1
        char = typed[(version - 2) % len(typed)]
        data.append(frame(change(uri, version, text, len(text), char)))
        text += char
        request_id += 1
        ids.append(request_id)
        data.append(frame(inline(request_id, uri, text, len(text))))
        sent += 2
        if request_id % 3 and sent < messages - 2:  # two thirds cancelled; never the newest
            data.append(frame({"method": "$/cancelRequest", "params": {"id": request_id}}))
            cancelled += 1
            sent += 1
    futures = {i: client.expect(i) for i in ids}
    started = time.perf_counter()
    client.write_raw(b"".join(data))
    await client.drain()
    ended = time.perf_counter()  # the burst's last byte is in the pipe
    at_end = process_usage(system.pid)
    newest = ids[-1]
    try:
        result = await asyncio.wait_for(futures[newest], 120)
        newest_ms = (time.perf_counter() - ended) * 1000
        newest_cpu_ms = (process_usage(system.pid).cpu_s - at_end.cpu_s) * 1000
        generation = (await client.request("tabfill/status", None)).get("engine", {}).get("lastGeneration") or {}
        newest_finish = generation.get("finishReason")
        newest_items = len(result.get("items", [])) if isinstance(result, dict) else 0
    except asyncio.TimeoutError:
        newest_ms, newest_items, newest_cpu_ms, newest_finish = None, 0, None, None
    outcomes = await asyncio.gather(*futures.values(), return_exceptions=True)
    unanswered = sum(1 for outcome in outcomes if isinstance(outcome, (asyncio.TimeoutError, EOFError)))
    after_burst = process_usage(system.pid)
    started_next = time.perf_counter()
    await client.request("textDocument/inlineCompletion", inline(0, uri, text, len(text))["params"])
    next_ms = (time.perf_counter() - started_next) * 1000
    status = await client.request("tabfill/status", {"textDocument": {"uri": uri}})
    after = process_usage(system.pid)
    await system.close_document(uri)
    return {
        "messages": len(data), "didChange": len(ids), "requests": len(ids), "cancelled": cancelled,
        "write_ms": round((ended - started) * 1000, 1),
        "newest_answer_ms": None if newest_ms is None else round(newest_ms, 1), "newest_items": newest_items, "newest_finish": newest_finish,
        "newest_answer_server_cpu_ms": None if newest_cpu_ms is None else round(newest_cpu_ms, 1), "baseline_request_ms": round(baseline_ms, 1),
        "next_request_ms": round(next_ms, 1), "unanswered": unanswered,
        "superseded": status.get("supersededRequests"),
        "server_cpu_ms_per_message": round((after_burst.cpu_s - before.cpu_s) * 1000 / len(data), 3),
        "rss_before_mb": before.rss_mb, "rss_after_mb": after.rss_mb,
        "document_equals_replay": (status.get("document") or {}).get("sha256") == digest(text),
    }


# ---------------------------------------------------------------------------------------------- soak
def session_script(steps: int, seed: int, texts: dict[str, str]) -> list[tuple[str, str, int, int]]:
    """(uri, inserted, removed, jump) per request: what is typed before each inline request, made up front so
    every replay is the same session."""
    rng = random.Random(seed)
    uris, script = list(texts), []
    for _ in range(steps):
        uri = rng.choice(uris) if rng.random() < 0.05 else (script[-1][0] if script else uris[0])
        roll = rng.random()
        if roll < 0.7:
            inserted, removed = rng.choice(["x", "_", "(", " ", "a", "1", "self.", "\n    "]), 0
        elif roll < 0.85:
            inserted, removed = "", rng.randint(1, 3)
        else:
            inserted, removed = rng.choice(["    return value\n", "for item in items:\n        ", "# TODO\n"]), 0
        jump = rng.randint(0, 10**6) if rng.random() < 0.1 else -1  # move the cursor elsewhere in the document
        script.append((uri, inserted, removed, jump))
    return script


async def soak(system: TabfillSystem, requests: int, session: int, seed: int) -> dict[str, Any]:
    client = client_of(system)
    originals = {(HERE / "data" / name).as_uri(): (HERE / "data" / name).read_text() for name in SOAK_FILES}
    script = session_script(session, seed, originals)
    replays: list[dict[str, Any]] = []
    done, request_id = 0, 20_000_000
    while done < requests:
        texts = dict(originals)
        cursors = {uri: len(text) // 2 for uri, text in texts.items()}
        for uri, text in texts.items():
            await system.close_document(uri)
            await system.open(uri, "python", text)
        latencies: list[float] = []
        for uri, inserted, removed, jump in script[: requests - done]:
            text = texts[uri]
            cursor = cursors[uri] if jump < 0 else jump % (len(text) + 1)
            if text[max(cursor - 1, 0) : cursor + 1] == "\r\n":
                cursor -= 1
            removed = min(removed, cursor)
            system.versions[uri] += 1
            client.notify(**change(uri, system.versions[uri], text, cursor - removed, inserted, removed))
            text = texts[uri] = text[: cursor - removed] + inserted + text[cursor:]
            cursors[uri] = cursor - removed + len(inserted)
            request_id += 1
            future = client.expect(request_id)
            started = time.perf_counter()
            client.write_raw(frame(inline(request_id, uri, text, cursors[uri])))
            try:
                await asyncio.wait_for(future, 60)
            except RpcError:
                pass
            latencies.append((time.perf_counter() - started) * 1000)
            done += 1
        equal = all([await document_digest(client, uri) == digest(text) for uri, text in texts.items()])
        usage = process_usage(system.pid)
        status = await client.request("tabfill/status", None)
        engine = status.get("engine") or {}
        gc_full = ((status.get("gc") or {}).get("generation2")) or {}  # since the model loaded
        store_mb = round(engine.get("prefixCacheBytes", 0) / 2**20, 1)  # KV blocks in the prefix store's pool (bounded)
        replays.append({"requests": len(latencies), "p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95),
                        "rss_mb": usage.rss_mb, "prefix_store_mb": store_mb, "documents_equal_replay": equal,
                        "gc_full_collections": gc_full.get("collections"), "gc_full_longest_ms": gc_full.get("longestMs"),
                        "gc_full_total_ms": gc_full.get("totalMs"),
                        # the worker's returns of freed heap memory to the system (idle, or between jobs when busy)
                        "heap_trims": (status.get("heap") or {}).get("trims"), "heap_trim_longest_ms": (status.get("heap") or {}).get("longestMs")})
        log(f"soak: replay {len(replays)}: {replays[-1]}")
    first, last = replays[0], replays[-1]
    growth = None if len(replays) < 2 else round(100 * (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"], 2)
    # the largest growth after any later replay: RSS sampled at a replay's end may fall between two heap trims
    largest = None if len(replays) < 2 else round(max(100 * (r["rss_mb"] - first["rss_mb"]) / first["rss_mb"] for r in replays[1:]), 2)
    return {
        "requests": done, "session": session, "replays": len(replays),
        "rss_after_first_replay_mb": first["rss_mb"], "rss_end_mb": last["rss_mb"], "rss_growth_after_first_replay_pct": growth,
        "prefix_store_first_mb": first["prefix_store_mb"], "prefix_store_end_mb": last["prefix_store_mb"],
        "rss_growth_largest_pct": largest,
        "p95_first_ms": first["p95_ms"], "p95_last_ms": last["p95_ms"],
        "documents_equal_replay": all(replay["documents_equal_replay"] for replay in replays), "per_replay": replays,
    }


# ---------------------------------------------------------------------------------------------- fuzz
def draw_sessions(examples: int, seed: int) -> list[list[tuple[Any, ...]]]:
    from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings

    drawn: list[list[tuple[Any, ...]]] = []

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(steps=sessions)
    def collect(steps: list[tuple[Any, ...]]) -> None:
        drawn.append(steps)

    collect()
    return drawn


async def fuzz(system: TabfillSystem, examples: int, seed: int) -> tuple[dict[str, Any], TabfillSystem]:
    """The fuzz against `system` (last: its traffic may change settings); a server that died is restarted and
    counted. Returns the figures and the server in use at the end."""
    counts = {"examples": 0, "messages": 0, "requests": 0, "crashes": 0, "unanswered": 0, "internal_errors": 0, "documents_differ": 0}
    problems: list[str] = []
    for number, steps in enumerate(draw_sessions(examples, seed)):
        client = client_of(system)
        traffic = Traffic(f"file:///fuzz/{number}/doc", next_id=(number + 1) * 1_000_000)
        data = [chunk for item in steps for chunk in traffic.frames(item)]
        checks = traffic.checks()
        data += [frame({"id": check_id, "method": "tabfill/status", "params": {"textDocument": {"uri": uri}}}) for check_id, uri, _ in checks]
        futures = {i: client.expect(i) for i in traffic.expected + [check_id for check_id, _, _ in checks]}
        client.write_raw(b"".join(data))
        counts["examples"] += 1
        counts["messages"] += traffic.sent + len(checks)
        counts["requests"] += len(traffic.expected)
        results: dict[int, Any] = {}
        for request_id, future in futures.items():
            try:
                results[request_id] = await asyncio.wait_for(future, 60)
            except RpcError as exc:
                results[request_id] = exc
            except (asyncio.TimeoutError, EOFError, ConnectionError) as exc:
                results[request_id] = exc
        if system.client is not None and system.client.process.returncode is not None or any(isinstance(r, EOFError) for r in results.values()):
            counts["crashes"] += 1
            problems.append(f"example {number}: the server died; steps {steps!r:.2000}")
            system = await start(system.model)
            continue
        for request_id in traffic.expected:
            outcome = results[request_id]
            if isinstance(outcome, RpcError):
                if outcome.code == -32603:
                    counts["internal_errors"] += 1
                    problems.append(f"example {number}: internal error {outcome}")
            elif isinstance(outcome, BaseException) or not answered({"result": outcome}):
                counts["unanswered"] += 1
                problems.append(f"example {number}: request {request_id} unanswered ({type(outcome).__name__})")
        for check_id, uri, expected in checks:
            outcome = results[check_id]
            got = ((outcome.get("document") or {}).get("sha256", "")) if isinstance(outcome, dict) else None
            if got != expected:
                counts["documents_differ"] += 1
                problems.append(f"example {number}: {uri} differs from the replay; steps {steps!r:.2000}")
        if number % 10 == 9:
            log(f"fuzz: {number + 1} examples, {counts}")
    return {**counts, "problems": problems[:20]}, system


# ---------------------------------------------------------------------------------------------- report
def report(results: dict[str, Any]) -> str:
    lines = ["# Reliability: burst, soak, fuzz (`python -m bench.soak`)", "", f"Command: `{results['command']}`", ""]
    if "date" in results:
        lines[-1:-1] = [f"Date: {results['date']}; commit `{results['commit']}`; model `{results['model']}`; "
                        f"machine {results['machine']['cpu']}, {results['machine']['cores']} cores"]
    if "burst" in results:
        b = results["burst"]
        lines += [
            "## Burst", "",
            f"{b['messages']:,} messages written at once ({b['didChange']:,} didChange, {b['requests']:,} inlineCompletion, "
            f"{b['cancelled']:,} $/cancelRequest).", "",
            "| newest answer after the burst's end (server CPU in it) | one request before the burst | next request | server CPU per message | "
            "unanswered | superseded | RSS before → after | document = replay |",
            "|---|---|---|---|---|---|---|---|",
            f"| {b['newest_answer_ms']} ms ({b['newest_answer_server_cpu_ms']} ms) | {b['baseline_request_ms']} ms | {b['next_request_ms']} ms | "
            f"{b['server_cpu_ms_per_message']} ms | {b['unanswered']} | {b['superseded']} | {b['rss_before_mb']} → {b['rss_after_mb']} MB | "
            f"{b['document_equals_replay']} |", "",
            f"The newest answer had {b['newest_items']} item(s); the last generation's finish reason: {b['newest_finish']}.", "",
        ]
    if "soak" in results:
        s = results["soak"]
        lines += [
            "## Soak", "",
            f"{s['requests']:,} inline requests, a session of {s['session']} requests with random edits over {len(SOAK_FILES)} documents, "
            f"replayed {s['replays']} times.", "",
            "| RSS after the first replay | RSS at the end | growth | largest growth after a replay | p95 first replay | p95 last replay | documents = replay |",
            "|---|---|---|---|---|---|---|",
            f"| {s['rss_after_first_replay_mb']} MB | {s['rss_end_mb']} MB | {s['rss_growth_after_first_replay_pct']} % | "
            f"{s.get('rss_growth_largest_pct')} % | {s['p95_first_ms']} ms | {s['p95_last_ms']} ms | {s['documents_equal_replay']} |", "",
        ]
        if s.get("prefix_store_end_mb") is not None:
            lines += [
                f"The prefix store's KV blocks in use: {s['prefix_store_first_mb']} MB after the first replay, {s['prefix_store_end_mb']} MB "
                f"at the end (its pool, `prefixCacheMb`, is zeroed and so resident from its first block on: blocks added take "
                f"no new memory).", "",
            ]
        per_replay = s.get("per_replay") or []
        if len(per_replay) > 2:
            rss = " → ".join(f"{replay['rss_mb']}" for replay in per_replay)
            store = " → ".join(f"{replay['prefix_store_mb']}" for replay in per_replay)
            half = per_replay[len(per_replay) // 2 - 1]
            late = round(100 * (per_replay[-1]["rss_mb"] - half["rss_mb"]) / half["rss_mb"], 2)
            lines += [
                f"RSS after each replay: {rss} MB; the prefix store's blocks: {store} MB. Over the second half of the replays "
                f"(after replay {len(per_replay) // 2} to the end) RSS grew {late} %. Identical replays still add blocks: "
                "context lookups run under time budgets and prefills and continuations stop where the next request "
                "finds them, so a replay's prompts and verified tokens differ a little from the last one's.", "",
            ]
        if per_replay and per_replay[-1].get("gc_full_collections") is not None:
            end = per_replay[-1]
            lines += [
                f"Full garbage collections since the model loaded (they stop every thread; `tabfill/status` → `gc`): "
                f"{end['gc_full_collections']} over the {s['replays']} replays, {end['gc_full_total_ms']} ms in all, the longest "
                f"{end['gc_full_longest_ms']} ms (after each replay: "
                + ", ".join(str(replay["gc_full_collections"]) for replay in per_replay) + ").", "",
            ]
        if per_replay and per_replay[-1].get("heap_trims") is not None:
            from tabfill.completion.worker import BUSY_TRIM_S, IDLE_TRIM_S

            end = per_replay[-1]
            lines += [
                f"Freed heap memory returned to the system (`malloc_trim`, by the engine's worker between jobs: after "
                f"{IDLE_TRIM_S:g} s idle, or every {BUSY_TRIM_S:g} s of work without a pause; `tabfill/status` → `heap`): {end['heap_trims']} "
                f"trims since the server started, the longest {end['heap_trim_longest_ms']} ms.", "",
            ]
    if "fuzz" in results:
        f = results["fuzz"]
        lines += [
            "## Fuzz", "",
            "| examples | messages sent | requests | crashes | unanswered | internal errors | documents ≠ replay |",
            "|---|---|---|---|---|---|---|",
            f"| {f['examples']} | {f['messages']:,} | {f['requests']:,} | {f['crashes']} | {f['unanswered']} | {f['internal_errors']} | {f['documents_differ']} |", "",
        ]
        lines += [f"- {problem}" for problem in f["problems"]]
    return "\n".join(lines).rstrip() + "\n"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {**provenance(shlex.join(["python", "-m", "bench.soak", *getattr(args, "argv", [])])), "model": args.model}
    chosen = set(args.sections.split(","))
    system = await start(args.model)  # one server for the three parts (loading the model may take minutes)
    try:
        if "burst" in chosen:
            log(f"burst: {args.burst} messages")
            results["burst"] = await burst(system, args.burst)
            log(f"burst: {results['burst']}")
        if "soak" in chosen:
            log(f"soak: {args.requests} requests")
            results["soak"] = await soak(system, args.requests, args.session, args.seed)
        if "fuzz" in chosen:
            log(f"fuzz: {args.fuzz_examples} examples")
            results["fuzz"], system = await fuzz(system, args.fuzz_examples, args.seed)
    finally:
        await client_of(system).close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--burst", type=int, default=3000, help="messages in the burst")
    parser.add_argument("--requests", type=int, default=10_000, help="inline requests in the soak")
    parser.add_argument("--session", type=int, default=1000, help="requests in the soak's session (replayed until --requests)")
    parser.add_argument("--fuzz-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--sections", default="burst,soak,fuzz")
    parser.add_argument("--out", type=Path, default=HERE / "SOAK.md")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    results = asyncio.run(run(args))
    text = report(results)
    args.out.write_text(text)
    args.out.with_name("soak.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0 if all(results.get("fuzz", {}).get(key, 0) == 0 for key in ("crashes", "unanswered", "internal_errors", "documents_differ")) else 1


if __name__ == "__main__":
    sys.exit(main())
