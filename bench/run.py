"""One command for the whole benchmark: `python -m bench` (see bench/README.md).

Runs every system on the same cases in one run, on this machine, and writes bench/RESULTS.md, the raw
numbers (bench/results.json) and the latency plot (bench/latency.png). It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import identity, line_eval, machine, report, syntax
from bench.cases import line_cases, typing_cases
from bench.replay import run_line_cases, run_typing_case
from bench.systems import LlamaCppSystem, System, TabfillSystem, TransformersSystem
from tabfill.completion.models import cache_root, preset_gguf, resolve_model

LLAMA_CPP_REQUIREMENT = "llama-cpp-python[server]==0.3.36"
ALL_SYSTEMS = ("tabfill", "transformers", "llama.cpp")
# Line completion only: tabfill with its syntax-aware parts turned off, the plain prefix prompt.
TABFILL_PLAIN_OPTIONS: dict[str, Any] = {"syntaxPostprocess": False, "crossFileContext": False}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_llama_cpp(install: bool) -> tuple[Path | None, str]:
    """llama-cpp-python's server in its own environment (built from source by pip on first use)."""
    venv = cache_root() / "bench" / "llama-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp, llama_cpp.server; print(llama_cpp.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python, "installed"
    if not install:
        return None, f"not installed in {venv} (run without --no-install to build it)"
    log(f"building {LLAMA_CPP_REQUIREMENT} into {venv} (compiles llama.cpp: several minutes, once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", LLAMA_CPP_REQUIREMENT], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return None, f"pip install failed: {result.stderr.strip()[-400:]}"
    return python, "built now"


def _memory(system: System, after: str) -> dict[str, Any]:
    usage = system.usage()
    return {"after": after, "rss_mb": usage.rss_mb, "peak_rss_mb": usage.peak_rss_mb, "cpu_s": usage.cpu_s}


async def run_system(
    system: System, lines: list[Any], typing: list[Any], only_lines: bool = False,
    replays: int = 1, repeat_typing: list[Any] | None = None,
) -> dict[str, Any]:
    """Line cases, then the typing replay `replays` times in the same process. `typing` holds the first
    replay's rows (the latency figures), `typing_repeat` the later ones (caches warm: reported apart);
    `memory` the process's resident memory after each step."""
    started = time.perf_counter()
    log(f"{system.name}: starting")
    await system.start()
    result: dict[str, Any] = {"name": system.name, "startup_s": round(time.perf_counter() - started, 2)}
    log(f"{system.name}: ready in {result['startup_s']} s; {len(lines)} line cases")
    result["line"] = await run_line_cases(system, lines)
    result["memory"] = [_memory(system, "line cases")]
    result["typing"], result["typing_repeat"] = [], []
    if not only_lines and typing:
        for replay in range(1, replays + 1):
            cases = typing if replay == 1 or repeat_typing is None else repeat_typing
            rows = result["typing"] if replay == 1 else result["typing_repeat"]
            for case in cases:
                log(f"{system.name}: replay {replay}/{replays}, typing {case.name} ({len(case.keys)} keys)")
                rows.extend({**row, "replay": replay} for row in await run_typing_case(system, case))
            result["memory"].append(_memory(system, f"replay {replay}"))
    usage = system.usage()
    result["cpu_s"], result["peak_rss_mb"], result["rss_mb"] = usage.cpu_s, usage.peak_rss_mb, usage.rss_mb
    await system.stop()
    if isinstance(system, TabfillSystem):
        result["status"] = system.status
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    model_dir = resolve_model(args.model)
    lines = line_cases(args.line_cases)
    typing = typing_cases(args.typing_cases, pace=args.pace)
    log(f"{len(lines)} line cases, {len(typing)} typing cases, systems: {', '.join(systems)}")
    results: dict[str, Any] = {
        "command": args.command_line,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": machine.git_commit(),
        "machine": machine.describe(),
        "model": args.model,
        "model_dir": model_dir,
        "pace": args.pace,
        "deadline_ms": args.deadline_ms,
        "systems": [],
        "skipped": {},
    }
    log("measuring memory bandwidth")
    bandwidth = machine.memory_bandwidth_gbs()
    weights = {"fp32 (tabfill, transformers)": sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))}
    gguf: Path | None = None
    llama_python: Path | None = None
    if "llama.cpp" in systems:
        llama_python, how = ensure_llama_cpp(install=not args.no_install)
        if llama_python is None:
            results["skipped"]["llama.cpp"] = how
        elif (gguf := preset_gguf(args.model)) is None:
            results["skipped"]["llama.cpp"] = f"llama.cpp needs a GGUF file: --model {args.model} is not a preset or .gguf"
        else:
            weights[f"GGUF {gguf.name} (llama.cpp)"] = gguf.stat().st_size
    results["floor"] = {
        "copy_bandwidth_gbs": round(bandwidth, 2),
        "decode_floor_ms": {name: round(machine.decode_floor_ms(size, bandwidth), 2) for name, size in weights.items()},
        "weight_bytes": weights,
    }
    log("syntax: incremental update and context_at")
    try:
        results["syntax"] = syntax.measure(args.syntax_lines)
    except Exception as exc:  # a broken part is reported, the rest of the run goes on
        results["skipped"]["syntax"] = f"{type(exc).__name__}: {exc}"
        log(f"syntax measurement failed: {exc}")

    results["replays"] = args.replays
    results["repeat_cases"] = args.repeat_cases
    if args.decode_steps > 0:
        log("decode step: the engine's variants against the weight-streaming floor")
        measured, why = measure_decode_step(model_dir, args.decode_steps, bandwidth)
        if measured is not None:
            results["decode_step"] = measured
        else:
            results["skipped"]["decode step"] = why
    else:
        results["skipped"]["decode step"] = "not run (--decode-steps 0; --smoke skips it unless --decode-steps is given)"

    if args.identity_cases > 0:
        log(f"greedy identity: {args.identity_cases} cases, tabfill's engine on the transformers peer's token ids")
        try:
            results["identity"] = identity.measure(args.model, args.identity_cases)
            gc.collect()
        except Exception as exc:  # a broken part is reported, the rest of the run goes on
            results["skipped"]["greedy identity"] = f"{type(exc).__name__}: {exc}"
            log(f"greedy identity failed: {exc}")
    else:
        results["skipped"]["greedy identity"] = "not run (--identity-cases 0; --smoke skips it unless given)"

    if args.ablation_cases > 0:
        variants = tuple(v for v in line_eval.VARIANTS if v.name in args.ablation_variants.split(","))
        log(f"line completion ablation: {args.ablation_cases} cases × {len(variants)} variants, whole answers")
        try:
            results["ablation"] = line_eval.measure(args.model, args.ablation_cases, variants)
            gc.collect()  # its model goes before the servers start
        except Exception as exc:  # a broken part is reported, the rest of the run goes on
            results["skipped"]["line completion ablation"] = f"{type(exc).__name__}: {exc}"
            log(f"line completion ablation failed: {exc}")
    else:
        results["skipped"]["line completion ablation"] = "not run (--ablation-cases 0; --smoke skips it unless given)"

    server_options: dict[str, Any] = {} if args.deadline_ms is None else {"deadlineMs": args.deadline_ms}
    repeat_typing = typing if args.repeat_cases == "same" else typing_cases(2 * len(typing), pace=args.pace)[len(typing):]
    for name in systems:
        system: System
        if name == "tabfill":
            system = TabfillSystem("tabfill", args.model, server_options)
        elif name == "transformers":
            system = TransformersSystem(model_dir)
        elif name == "llama.cpp":
            if llama_python is None or gguf is None:
                log(f"llama.cpp skipped: {results['skipped'].get(name)}")
                continue
            system = LlamaCppSystem(llama_python, gguf, model_dir)
        else:
            raise SystemExit(f"unknown system {name!r}; choose from {', '.join(ALL_SYSTEMS)}")
        if name == "tabfill":
            results["systems"].append(await run_system(system, lines, typing, replays=args.replays, repeat_typing=repeat_typing))
        else:
            results["systems"].append(await run_system(system, lines, typing))
        if name == "tabfill" and TABFILL_PLAIN_OPTIONS and not args.smoke:
            plain = TabfillSystem("tabfill (plain prompt)", args.model, {**server_options, **TABFILL_PLAIN_OPTIONS})
            results["systems"].append(await run_system(plain, lines, typing, only_lines=True))
    return results


def measure_decode_step(model_dir: str, steps: int, bandwidth_gbs: float) -> tuple[dict[str, float | str] | None, str]:
    """bench/decode_step.py's `measure` (ms per token of the engine's decode variants and the floor),
    when that module is there; (None, why) when it is not or it failed. Numbers and strings (a dtype's
    name) are kept, anything else left out. Its floors use this run's one bandwidth figure."""
    try:
        module = importlib.import_module("bench.decode_step")
    except ImportError as exc:
        return None, f"bench/decode_step.py not available ({exc})"
    try:
        measured = dict(module.measure(model_dir, steps, bandwidth_gbs=bandwidth_gbs))
        gc.collect()  # its models go before the servers start
        kept: dict[str, float | str] = {}
        for key, value in measured.items():
            if isinstance(value, str):
                kept[str(key)] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                kept[str(key)] = float(value)
        if len(kept) < len(measured):
            log(f"decode step: left out what is neither a number nor a string: {sorted(set(map(str, measured)) - set(kept))}")
        return kept, ""
    except Exception as exc:  # a broken part is reported, the rest of the run goes on
        log(f"decode step measurement failed: {exc}")
        return None, f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="two cases (one line, one short function), fast pace")
    parser.add_argument("--ci", action="store_true",
                        help="a CI-sized subset (about 5 minutes): 10 line cases, 2 functions, one replay, 60 ablation "
                        "cases (plain, similar, tabfill), 20 identity cases, 8 decode steps")
    parser.add_argument("--model", default="default", help="tabfill model spec (default: the packaged SmolLM2-135M)")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    parser.add_argument("--line-cases", type=int, default=40, help="line cases over LSP, every system (default 40)")
    parser.add_argument("--typing-cases", type=int, default=6)
    parser.add_argument("--pace", type=float, default=1.0, help="typing speed multiplier (1.0: 8–12 chars/s)")
    parser.add_argument("--syntax-lines", type=int, default=3000)
    parser.add_argument("--deadline-ms", type=int, help="tabfill's per-request deadline (default: the server's; raise it for a large model on a CPU)")
    parser.add_argument("--replays", type=int, default=2,
                        help="tabfill only: type the replay this many times in one server process (latency from the first; "
                        "the rest reported as the repeat replay, and resident memory after each)")
    parser.add_argument("--repeat-cases", choices=("same", "fresh"), default="same",
                        help="the repeat replays type the same functions again, or as many other functions")
    parser.add_argument("--decode-steps", type=int, help="decode steps for bench/decode_step.py (default 32; 0 skips; --smoke skips it unless given)")
    parser.add_argument("--ablation-cases", type=int,
                        help="line cases for bench/line_eval.py, in process, whole answers (default 440, of which "
                        "≥ 300 verbatim-free; 0 skips; --smoke skips it unless given)")
    parser.add_argument("--ablation-variants", default="plain,postprocess,similar,tabfill",
                        help=f"bench/line_eval.py's variants (of {','.join(v.name for v in line_eval.VARIANTS)})")
    parser.add_argument("--identity-cases", type=int,
                        help="line cases for bench/identity.py, the greedy-identity check (default 60; 0 skips; --smoke skips it unless given)")
    parser.add_argument("--no-install", action="store_true", help="skip llama.cpp unless it is already built")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder for RESULTS.md, results.json, latency.png")
    args = parser.parse_args(argv)
    if args.replays < 1:
        parser.error("--replays must be at least 1")
    if args.smoke:
        args.line_cases, args.typing_cases, args.syntax_lines = 1, 1, 300
        args.pace = max(args.pace, 3.0)
    elif args.ci:
        args.line_cases, args.typing_cases, args.replays = 10, 2, 1
        args.ablation_variants = "plain,similar,tabfill"
        args.ablation_cases = 60 if args.ablation_cases is None else args.ablation_cases
        args.identity_cases = 20 if args.identity_cases is None else args.identity_cases
        args.decode_steps = 8 if args.decode_steps is None else args.decode_steps
    if args.ablation_cases is None:
        args.ablation_cases = 0 if args.smoke else 440
    if args.identity_cases is None:
        args.identity_cases = 0 if args.smoke else 60
    if args.decode_steps is None:
        args.decode_steps = 0 if args.smoke else 32  # it loads the model three ways and prefills each: not for a smoke run
    args.command_line = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    results = asyncio.run(run(args))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.plot(results, args.out / "latency.png")
    (args.out / "RESULTS.md").write_text(report.markdown(results, args.out))
    log(f"done in {results['wall_s']} s: {args.out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
