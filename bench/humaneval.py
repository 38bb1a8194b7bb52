"""HumanEval infilling, scored by running the tests: `python -m bench.humaneval` (see bench/README.md).

Each task becomes a document opened over LSP (the code before the hole, the hole's indentation, then the code
after it), one inline completion is asked with the cursor after that indentation, and the whole answer is
followed as the editor plugins do (`tabfill/completionReady`, then ask again). The answer is put into the
hole and the task's tests run in bench/sandbox.py: pass@1 (greedy, one answer per task) and exact match.
The same tasks run side by side, in one run: tabfill, tabfill with the plain prompt, and llama.cpp on the
same GGUF file. Writes bench/HUMANEVAL.md and bench/humaneval.json (one entry per model and subset; a run
replaces only its own entry).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import humaneval_report, machine
from bench.sandbox import isolation, run_program
from bench.systems import REPO, LlamaCppSystem, Pending, System, TabfillSystem, _PromptWindow, peer_prompt
from tabfill.completion.fim import FimTemplate

SUBSETS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
ALL_SYSTEMS = ("tabfill", "tabfill-plain", "llama.cpp")
# tabfill with its syntax-aware parts off: the plain prompt (the same switches as `python -m bench`)
PLAIN_OPTIONS: dict[str, Any] = {"syntaxPostprocess": False, "crossFileContext": False}
ANSWER_TIMEOUT_S = 180.0
# How long to wait for tabfill/completionReady before asking again: the server's background continuation runs
# at most 5 s (service.CONTINUE_MAX_MS); past that no announcement is coming until someone asks.
READY_WAIT_S = 10.0
TEST_TIMEOUT_S = 10.0
TEST_MEMORY_MB = 1024


def log(message: str) -> None:
    print(f"[humaneval {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Task:
    task_id: str
    entry_point: str
    prompt: str
    suffix: str
    solution: str
    test: str

    @property
    def problem(self) -> int:
        return int(self.task_id.split("/")[2])


@dataclass(frozen=True)
class TaskDocument:
    """The editor's view of a task: `text` with the cursor at `offset`; the hole's text after the cursor is
    `expected`. `indent` is already typed (as an editor's auto-indent puts it) and `tail` ("\\n" or "") closes the
    hole's last line when the hole ended one."""

    text: str
    offset: int
    indent: str
    tail: str
    expected: str

    def program(self, task: Task, answer: str) -> str:
        """The file with `answer` in the hole, then the task's tests."""
        return f"{task.prompt}{self.indent}{answer}{self.tail}{task.suffix}\n\n{task.test}\n\ncheck({task.entry_point})\n"


def task_document(task: Task) -> TaskDocument:
    indent = ""
    if task.prompt == "" or task.prompt.endswith("\n"):
        indent = re.match(r"[ \t]*", task.solution).group(0)  # type: ignore[union-attr]
    tail = "\n" if task.solution.endswith("\n") else ""
    text = task.prompt + indent + tail + task.suffix
    expected = task.solution[len(indent) : len(task.solution) - len(tail)]
    return TaskDocument(text, len(task.prompt) + len(indent), indent, tail, expected)


def data_dir(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else []
    if os.environ.get("TABFILL_HUMANEVAL_DATA"):
        candidates.append(Path(os.environ["TABFILL_HUMANEVAL_DATA"]))
    candidates += [base / "shared" / "eval" / "human-eval-infilling" for base in (REPO.parent, REPO.parent.parent)]
    for candidate in candidates:
        if candidate is not None and (candidate / SUBSETS["single-line"]).is_file():
            return candidate
    raise SystemExit("HumanEval infilling data not found: pass --data DIR (the folder with the .jsonl.gz files)")


def load_tasks(subset: str, directory: Path) -> list[Task]:
    with gzip.open(directory / SUBSETS[subset], "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [Task(r["task_id"], r["entry_point"], r["prompt"], r["suffix"], r["canonical_solution"], r["test"]) for r in rows]


def select(tasks: list[Task], count: int | None, every_task: bool) -> list[Task]:
    """One task per problem (the one in the middle of the problem's holes, so neither the signature's first line
    nor the final return is favoured), unless `every_task`; then `count` of them spread evenly over the problems."""
    if not every_task:
        by_problem: dict[int, list[Task]] = {}
        for task in tasks:
            by_problem.setdefault(task.problem, []).append(task)
        tasks = [group[len(group) // 2] for _, group in sorted(by_problem.items())]
    if count is None or count >= len(tasks):
        return tasks
    return [tasks[(index * len(tasks)) // count] for index in range(count)]


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def score(task: Task, document: TaskDocument, answer: str, single_line: bool) -> dict[str, Any]:
    """Run the tests on the file with `answer` in the hole; single-line tasks take the answer's first line
    (the hole is one line; what the editor shows on the cursor's line)."""
    used = first_line(answer) if single_line else answer
    outcome = run_program(document.program(task, used), timeout_s=TEST_TIMEOUT_S, memory_mb=TEST_MEMORY_MB)
    return {
        "answer": used,
        "passed": outcome.passed,
        "status": outcome.status,
        "detail": outcome.detail.splitlines()[-1][:200] if outcome.detail else "",
        "exact": normalized(used) == normalized(document.expected),
        "empty": not used.strip(),
    }


class FimWindow:
    """llama-cpp-python's server asked for the hole the way its FIM-aware clients would.

    NOTE: llama-cpp-python 0.3.36's server has no `/infill` route, and its `suffix` field on /v1/completions
    does not do FIM: `Llama._create_completion` hard-codes the prefix/suffix/middle token ids to 0 (a "TODO: Fix"
    in its source), so a suffix would add token 0 three times. So the FIM prompt is sent as text in `prompt`,
    which it tokenizes with special tokens parsed (`special=True` when no suffix is given): the same
    `<|fim_prefix|>…<|fim_suffix|>…<|fim_middle|>` sequence llama.cpp's own `/infill` builds, over the same
    prefix and suffix windows and token allowance as tabfill's prompt. A model without FIM tokens gets the
    prefix text window (what the bench's llama.cpp peer gets)."""

    def __init__(self, window: _PromptWindow) -> None:
        self.window = window
        self.tokenizer, self.template = window.tokenizer, window.template

    def prompt(self, text: str, offset: int, multi: bool) -> tuple[str, int]:
        if self.template is None:
            return self.window.prompt(text, offset, multi)
        prompt = peer_prompt(text[:offset], text[offset:], self.template, self.tokenizer, multi)
        prefix, suffix = text[offset - prompt.prefix_chars : offset], text[offset : offset + prompt.suffix_chars]
        return fim_prompt_text(self.template, prefix, suffix), prompt.max_new_tokens


def fim_prompt_text(template: FimTemplate, prefix: str, suffix: str) -> str:
    lead = " " if template.prefix_space == "always" else ""
    if template.order == "spm":
        return f"{template.suffix_marker}{suffix}{template.prefix_marker}{lead}{prefix}{template.middle_marker}"
    return f"{template.prefix_marker}{lead}{prefix}{template.suffix_marker}{suffix}{template.middle_marker}"


async def _last_generation(system: System) -> dict[str, Any]:
    if not isinstance(system, TabfillSystem) or system.client is None:
        return {}
    return (await system.client.request("tabfill/status", None)).get("engine", {}).get("lastGeneration") or {}


async def _cut(system: System, handle: Pending, before: dict[str, Any]) -> bool:
    """Whether tabfill's answer was cut by its deadline (more is coming): its item says `partial`, or it sent no
    item and the status shows a new generation (not `before`, the one seen before asking) stopped at the
    deadline. An empty answer from the result cache leaves the status as it was: not cut."""
    if not isinstance(system, TabfillSystem) or handle.text is None:
        return False
    if handle.extra.get("partial"):
        return True
    if handle.text:
        return False
    generation = await _last_generation(system)
    return generation != before and generation.get("finishReason") == "deadline"


async def _wait(handle: Pending, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(handle.task), max(timeout_s, 0.1))
    except Exception:  # a timeout or an error: recorded on the handle (the caller cancels what is still open)
        pass


async def answer(system: System, uri: str, document: TaskDocument, answer_timeout_s: float = ANSWER_TIMEOUT_S) -> tuple[str | None, dict[str, Any]]:
    """The whole answer at the task's cursor and its timings. tabfill: when an answer is cut by the deadline,
    wait for `tabfill/completionReady` and ask again, as the editor plugins do; when the announcement does not
    come (the background continuation has a time cap, which a slow model on a loaded CPU can reach first), ask
    again at the same place anyway, as the plugin's next trigger would: the server resumes the same generation.
    `asks` counts the requests, `reasks` those made without an announcement."""
    await system.open(uri, "python", document.text)
    until = time.monotonic() + answer_timeout_s
    seen = await _last_generation(system)
    first = final = system.request(uri, "python", document.text, document.offset)
    await _wait(first, answer_timeout_s)
    asks, reasks = 1, 0
    while time.monotonic() < until and await _cut(system, final, seen):
        seen = await _last_generation(system)
        again = await system.settle(uri, "python", document.text, document.offset, final, min(READY_WAIT_S, until - time.monotonic()))
        asks += 1
        if again is not None:  # announced: the whole answer
            final = again
            break
        again = system.request(uri, "python", document.text, document.offset)
        await _wait(again, until - time.monotonic())
        reasks += 1
        final = again
    if not final.task.done():
        await system.cancel(final)
    await system.close_document(uri)

    def elapsed(handle: Pending) -> float | None:
        return None if handle.received_s is None else round((handle.received_s - first.sent_s) * 1000, 1)

    timing = {"first_ms": elapsed(first), "whole_ms": elapsed(final), "source": first.source, "asks": asks, "reasks": reasks}
    return final.text, {**timing, "error": final.error or first.error}


async def run_system(system: System, tasks: list[Task], root: Path, single_line: bool, answer_timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    log(f"{system.name}: starting")
    await system.start()
    log(f"{system.name}: ready in {time.perf_counter() - started:.1f} s; {len(tasks)} tasks")
    rows = []
    for index, task in enumerate(tasks, 1):
        document = task_document(task)
        uri = (root / (re.sub(r"[^A-Za-z0-9]+", "_", task.task_id) + ".py")).as_uri()
        text, timing = await answer(system, uri, document, answer_timeout_s)
        row = {"task_id": task.task_id, **timing, **score(task, document, text or "", single_line)}
        row["answered"] = text is not None
        rows.append(row)
        if index % 10 == 0 or index == len(tasks) or len(tasks) <= 20:
            passed = sum(r["passed"] for r in rows)
            log(f"{system.name}: {index}/{len(tasks)} tasks, pass {passed}/{index}")
    await system.stop()
    return {"name": system.name, "startup_s": round(time.perf_counter() - started, 1), "rows": rows}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tabfill.completion.models import preset_gguf, resolve_model

    tasks = select(load_tasks(args.subset, data_dir(args.data)), args.tasks, args.all_tasks)
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(systems) - set(ALL_SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    model_dir = resolve_model(args.model)
    single_line = args.subset == "single-line"
    results: dict[str, Any] = {
        **machine.provenance(args.command_line),
        "model": args.model,
        "subset": args.subset,
        "tasks": len(tasks),
        "selection": "every task" if args.all_tasks else "one task per problem (the middle hole)",
        "sandbox": isolation().describe(),
        "deadline_ms": args.deadline_ms,
        "systems": [],
        "skipped": {},
    }
    options: dict[str, Any] = {} if args.deadline_ms is None else {"deadlineMs": args.deadline_ms}
    with tempfile.TemporaryDirectory(prefix="tabfill-humaneval-") as tmp:
        root = Path(tmp)  # an empty workspace: no other file can hold an answer
        for name in systems:
            system: System
            if name == "tabfill":
                system = TabfillSystem("tabfill", args.model, options, root=root)
            elif name == "tabfill-plain":
                system = TabfillSystem("tabfill (plain prompt)", args.model, {**options, **PLAIN_OPTIONS}, root=root)
            else:
                from bench.run import ensure_llama_cpp

                python, how = ensure_llama_cpp(install=not args.no_install)
                gguf = preset_gguf(args.model)
                if python is None or gguf is None:
                    results["skipped"][name] = how if python is None else f"no GGUF file behind --model {args.model}"
                    continue
                system = LlamaCppSystem(python, gguf, model_dir)
                system.window = FimWindow(system.window)  # type: ignore[assignment]
                results["llama_cpp_prompt"] = "FIM as text in /v1/completions `prompt`" if system.window.template else "prefix only"
            results["systems"].append(await run_system(system, tasks, root, single_line, args.answer_timeout))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.humaneval", description=__doc__)
    parser.add_argument("--subset", choices=tuple(SUBSETS), default="single-line")
    parser.add_argument("--tasks", type=int, help="at most N tasks, spread evenly over the problems (default: all selected)")
    parser.add_argument("--all-tasks", action="store_true", help="every task of the subset (single-line: 1,033), not one per problem")
    parser.add_argument("--model", default="default", help="tabfill model spec: default, qwen2.5-coder-1.5b, a .gguf file, ...")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"comma-separated, from {', '.join(ALL_SYSTEMS)}")
    parser.add_argument("--deadline-ms", type=int, help="tabfill's per-request deadline (the whole answer is followed either way)")
    parser.add_argument("--answer-timeout", type=float, default=ANSWER_TIMEOUT_S, help="seconds for the whole answer to one task (default %(default)s)")
    parser.add_argument("--data", type=Path, help="folder with the HumanEval infilling .jsonl.gz files")
    parser.add_argument("--no-install", action="store_true", help="skip llama.cpp unless it is already built")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder for HUMANEVAL.md and humaneval.json")
    args = parser.parse_args(argv)
    if args.tasks is not None and args.tasks < 1:
        parser.error("--tasks must be at least 1")
    args.command_line = shlex.join(["python", "-m", "bench.humaneval", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    results = asyncio.run(run(args))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "humaneval.json"
    runs = json.loads(store.read_text()) if store.is_file() else {}
    runs[f"{args.model}/{args.subset}"] = results
    store.write_text(json.dumps(runs, indent=1, default=str) + "\n")
    (args.out / "HUMANEVAL.md").write_text(humaneval_report.markdown(runs))
    log(f"done in {results['wall_s']} s: {args.out / 'HUMANEVAL.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
