"""Where to split a suggestion: the first drawn line's precision for each `confidencePercent`.

The server splits an answer before every token the model chose with less than `confidencePercent`
probability; the editor plugins draw the first piece (and the next as the user types into it or accepts).
This scores that choice on the line cases, whole answers through the server's own `CompletionService` (as
bench/line_eval.py, all context on), one model load, every threshold from the same generations:

- *right*: the first drawn line is non-empty and the expected line starts with it (what a user sees is
  correct so far: typing on or Tab keeps it);
- *correct chars*: the characters of those right drawings (what Tab could save at that keystroke);
- *wrong*: something was drawn and it is not how the line goes on.

Threshold 0 is the whole answer (no split). Cases whose expected line occurs verbatim where the server may
read it are reported apart (bench/cases.py).

    python -m bench.confidence --cases 200      # writes bench/CONFIDENCE.md and bench/confidence.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.cases import line_cases
from bench.line_eval import WHOLE_ANSWER_MS, complete_case, workspace_store
from bench.machine import provenance
from tabfill.completion.postprocess import uncertain_cuts
from tabfill.completion.service import CompletionService
from tabfill.completion.types import Settings

HERE = Path(__file__).parent
THRESHOLDS = (0, 10, 20, 30, 40, 50, 60, 70, 80)


def generate(model: str, count: int) -> list[dict[str, Any]]:
    """Each case's whole answer, the generated text behind it and its per-token confidence."""
    service = CompletionService(dataclasses.replace(Settings(), model=model, deadline_ms=WHOLE_ANSWER_MS))
    store = workspace_store()
    rows = []
    try:
        service.load().result()
        for case in line_cases(count):
            service.last_generation = None
            completion, _ = complete_case(service, store, case)
            generation = service.last_generation if completion.source == "model" else None
            rows.append({
                "case": case.name, "language": case.language_id, "verbatim": case.verbatim, "expected": case.expected,
                "text": completion.text, "generated": generation.text if generation else "",
                "confidence": [list(pair) for pair in generation.confidence] if generation else [],
            })
    finally:
        service.close()
    return rows


def drawn(row: dict[str, Any], percent: int) -> str:
    """The first line of what the plugins draw for this answer at `percent`."""
    text = row["text"]
    cuts = uncertain_cuts(row["generated"], [tuple(pair) for pair in row["confidence"]], text, percent / 100)
    return (text[: cuts[0]] if cuts else text).split("\n", 1)[0]


def score(rows: list[dict[str, Any]], percent: int) -> dict[str, Any]:
    right = wrong = chars = 0
    for row in rows:
        line = drawn(row, percent)
        if not line.strip():
            continue
        if row["expected"].startswith(line):
            right, chars = right + 1, chars + len(line)
        else:
            wrong += 1
    return {"percent": percent, "cases": len(rows), "right": right, "wrong": wrong, "correct_chars": chars}


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Where to split a suggestion (`confidencePercent`)", "",
        f"- Command: `{results['command']}`; {results['date']}; commit `{results['commit']}`; model `{results['model']}`",
        f"- Machine: {results['machine']}; {results['seconds']:.0f} s", "",
        __doc__.split("\n\n")[1].replace("\n", " "), "",
        "*Right*: the first drawn line is non-empty and the expected line starts with it; *correct chars*: the characters"
        " of those; *wrong*: drawn and not how the line goes on. 0 % = the whole answer.", "",
    ]
    for subset, name in (("all", "all cases"), ("verbatim-free", "verbatim-free cases")):
        lines += [f"## {name}", "", "| confidencePercent | cases | right | wrong | correct chars |", "|---|---|---|---|---|"]
        for row in results["scores"][subset]:
            lines.append(f"| {row['percent']} % | {row['cases']} | {row['right']} ({row['right'] / max(1, row['cases']):.0%}) | {row['wrong']} | {row['correct_chars']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.confidence", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=HERE / "CONFIDENCE.md")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = generate(args.model, args.cases)
    subsets = {"all": rows, "verbatim-free": [row for row in rows if not row["verbatim"]]}
    results = {
        **provenance("python -m bench.confidence " + " ".join(argv if argv is not None else sys.argv[1:])),
        "model": args.model, "seconds": time.monotonic() - started,
        "scores": {name: [score(chosen, percent) for percent in THRESHOLDS] for name, chosen in subsets.items()},
        "rows": rows,
    }
    args.out.write_text(report(results), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
