"""Greedy identity: tabfill's engine and the transformers peer, on the very same prompt token ids, give the
same first line.

tabfill's engine decodes greedily with a lean decoder, a prefix KV cache and prompt-lookup drafts verified
by the model; none of that may change a greedy answer. The peer (`bench/naive_peer.py`'s `generate_answer`:
plain `generate`, its stop criterion and token budget) and the engine, set up as the server sets it up, run
here in one process on the prompt the peer builds (`bench.systems.peer_prompt`: no token healing), so the
token ids are the same by construction and the only thing that may differ is the arithmetic. Where the
first lines differ, the first differing token is found and the peer's two best logits there are compared:
closer than `TIE_EPSILON` is a floating-point tie (the order of additions decides it), anything else a bug.

    python -m bench.identity --cases 60
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from bench.cases import LineCase, line_cases
from bench.naive_peer import PeerAnswer, generate_answer
from bench.systems import peer_prompt
from tabfill.completion.engine import Engine
from tabfill.completion.fim import detect_template
from tabfill.completion.models import resolve_model
from tabfill.completion.sources import open_local
from tabfill.completion.types import CancelToken, Deadline, Generation, Settings

TIE_EPSILON = 1e-3  # logits (fp32, magnitude ~10): a gap this small is within the kernels' rounding differences


def tabfill_engine(model: str, settings: Settings | None = None) -> Engine:
    """The engine exactly as the server opens it in process (`sources.open_local`): the lean runner, the
    prefix cache, drafts on, warmed up."""
    engine = open_local(dataclasses.replace(settings or Settings(), model=model), lambda stage, fraction: None)
    assert isinstance(engine, Engine), type(engine)
    return engine


def first_difference(one: tuple[int, ...], other: tuple[int, ...]) -> int:
    """Index of the first token where the two sequences differ (the shorter one's length if one is a prefix)."""
    for index, (a, b) in enumerate(zip(one, other)):
        if a != b:
            return index
    return min(len(one), len(other))


def top2_gap(logits: torch.Tensor) -> float:
    best = torch.topk(logits.float(), 2).values
    return float(best[0] - best[1])


def compare(case_name: str, peer: PeerAnswer, ours: Generation, tie_epsilon: float = TIE_EPSILON) -> dict[str, Any]:
    """One case's row: both first lines, whether they are identical, and at a difference the peer's top-2
    logit gap at the first differing token and whether that is a tie."""
    peer_line, our_line = peer.text.split("\n", 1)[0], ours.text.split("\n", 1)[0]
    row: dict[str, Any] = {"case": case_name, "peer": peer_line, "tabfill": our_line, "identical": peer_line == our_line,
                           "gap": None, "tie": False}
    if not row["identical"]:
        at = first_difference(peer.token_ids, ours.token_ids)
        row["token"] = at
        if at < len(peer.logits):
            row["gap"] = round(top2_gap(peer.logits[at]), 6)
            row["tie"] = row["gap"] < tie_epsilon
    return row


def summarize(rows: list[dict[str, Any]], tie_epsilon: float = TIE_EPSILON) -> dict[str, Any]:
    return {
        "cases": len(rows),
        "identical": sum(row["identical"] for row in rows),
        "ties": sum(bool(row["tie"]) for row in rows if not row["identical"]),
        "tie_epsilon": tie_epsilon,
        "rows": rows,
    }


def evaluate(engine: Engine, peer_model: Any, cases: list[LineCase]) -> list[dict[str, Any]]:
    tokenizer = engine.tokenizer
    template = detect_template(tokenizer)
    rows = []
    for case in cases:
        prompt = peer_prompt(case.prefix, case.suffix, template, tokenizer, multi=False)
        peer = generate_answer(peer_model, tokenizer, prompt, keep_logits=True)
        ours = engine.generate(prompt, CancelToken(), Deadline())
        rows.append(compare(case.name, peer, ours))
    return rows


def measure(model: str, count: int) -> dict[str, Any]:
    """`count` line cases (the benchmark's, single-line): {"cases", "identical", "ties", "tie_epsilon", "rows"}."""
    from transformers import AutoModelForCausalLM

    engine = tabfill_engine(model)
    # The peer's own model object, loaded as naive_peer.py loads it (the lean runner may repack the engine's).
    peer_model = AutoModelForCausalLM.from_pretrained(resolve_model(model), dtype=torch.float32).eval()
    return summarize(evaluate(engine, peer_model, line_cases(count)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    measured = measure(args.model, args.cases)
    print(f"identical first line: {measured['identical']} of {measured['cases']}; ties among the rest: {measured['ties']}")
    for row in measured["rows"]:
        if not row["identical"]:
            print(f"  {row['case']}: peer {row['peer']!r} tabfill {row['tabfill']!r} gap {row['gap']}")
    if args.out:
        args.out.write_text(json.dumps(measured, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
