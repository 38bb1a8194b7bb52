"""The peer a Python developer would write: transformers `generate`, greedy, on tabfill's prompt builder
(its budgets over the whole prefix, no token healing), and no cache kept between requests. Configured as
a fair engineer would: the same token budget as tabfill (its single-line and multi-line allowances), and a
StoppingCriteria that ends the generation where
tabfill's stop rule cuts the text (at the line end for a single line; the block rule for several), so it
never generates tokens it throws away. JSON lines on stdio; the newest request wins and a cancelled one
stops between tokens (another StoppingCriteria), which is as far as plain `generate` lets a client go.

    {"id": 3, "prefix": "...", "suffix": "...", "multi": false, "block_indent": 4}  ->  {"id": 3, "text": "..."}
    {"cancel": 3}                                                                    ->  {"id": 3, "cancelled": true}
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from bench.systems import peer_prompt
from tabfill.completion.engine import stop_index
from tabfill.completion.fim import detect_template
from tabfill.completion.types import Prompt, StopRule


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)  # type: ignore[return-value]


class StopAtRule(StoppingCriteria):
    """Stop once the text generated so far is cut by tabfill's stop rule (`stop_index`): the first newline
    for a single line; for several lines, a line indented out of the block, two blank lines or the line limit."""

    def __init__(self, tokenizer: Any, prompt_length: int, stop: StopRule) -> None:
        self.tokenizer, self.prompt_length, self.stop = tokenizer, prompt_length, stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        done = [stop_index(self.tokenizer.decode(row[self.prompt_length :], skip_special_tokens=True), self.stop) is not None
                for row in input_ids]
        return torch.tensor(done, dtype=torch.bool)  # type: ignore[return-value]


@dataclass(frozen=True)
class PeerAnswer:
    text: str  # cut where the stop rule cuts it
    token_ids: tuple[int, ...]  # every generated token (the last one may lie past the cut)
    logits: tuple[torch.Tensor, ...] = ()  # the raw next-token logits [V] before each generated token, when asked


def generate_answer(model: Any, tokenizer: Any, prompt: Prompt, cancelled: threading.Event | None = None,
                    keep_logits: bool = False) -> PeerAnswer:
    """Plain greedy `generate` on the prompt's token ids, within its token budget, stopping at its stop rule,
    at the model's end-of-sequence tokens and at the template's stop tokens (as tabfill does)."""
    input_ids = torch.tensor([list(prompt.token_ids)])
    criteria = [StopAtRule(tokenizer, input_ids.shape[1], prompt.stop), _Cancelled(cancelled or threading.Event())]
    eos = model.generation_config.eos_token_id
    eos_ids = sorted({*(eos if isinstance(eos, list) else [] if eos is None else [eos]), *prompt.stop_token_ids})
    with torch.inference_mode():
        output = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=prompt.max_new_tokens,
            do_sample=False, stopping_criteria=StoppingCriteriaList(criteria), eos_token_id=eos_ids or None,
            pad_token_id=tokenizer.eos_token_id, return_dict_in_generate=True, output_logits=keep_logits,
        )
    generated = [int(i) for i in output.sequences[0, input_ids.shape[1] :] if int(i) not in eos_ids]
    text = str(tokenizer.decode(generated, skip_special_tokens=True))
    cut = stop_index(text, prompt.stop)
    logits = tuple(step[0] for step in output.logits) if keep_logits and output.logits else ()
    return PeerAnswer(text if cut is None else text[:cut], tuple(generated), logits)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    template = detect_template(tokenizer)
    newest: queue.Queue[dict[str, Any]] = queue.Queue()
    cancelled: dict[int, threading.Event] = {}
    lock = threading.Lock()
    out = sys.stdout

    def send(message: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(message) + "\n")
            out.flush()

    def work() -> None:
        while True:
            request = newest.get()
            event = cancelled.setdefault(request["id"], threading.Event())
            if event.is_set():
                send({"id": request["id"], "cancelled": True})
                continue
            prompt = peer_prompt(request["prefix"], request["suffix"], template, tokenizer, bool(request["multi"]),
                                 int(request.get("block_indent", 0)))
            answer = generate_answer(model, tokenizer, prompt, event)
            if event.is_set():
                send({"id": request["id"], "cancelled": True})
                continue
            send({"id": request["id"], "text": answer.text})

    threading.Thread(target=work, daemon=True).start()
    send({"ready": True, "time": time.time()})
    for line in sys.stdin:
        message = json.loads(line)
        if "cancel" in message:
            cancelled.setdefault(message["cancel"], threading.Event()).set()
        else:
            newest.put(message)


if __name__ == "__main__":
    main()
