"""The peer a Python developer would write: transformers `generate`, greedy, on the same prompt tokens as
tabfill, and no cache kept between requests. JSON lines on stdio; the newest request wins and a cancelled
one stops between tokens (a StoppingCriteria), which is as far as plain `generate` lets a client go.

    {"id": 3, "prefix": "...", "suffix": "...", "multi": false}  ->  {"id": 3, "text": "..."}
    {"cancel": 3}                                                   ->  {"id": 3, "cancelled": true}
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from bench.systems import peer_prompt
from tabfill.completion.fim import detect_template


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)  # type: ignore[return-value]


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
            multi = bool(request["multi"])
            prompt = peer_prompt(request["prefix"], request["suffix"], template, tokenizer, multi)
            input_ids = torch.tensor([prompt.token_ids])
            with torch.inference_mode():
                output = model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=prompt.max_new_tokens,
                    do_sample=False, stopping_criteria=StoppingCriteriaList([_Cancelled(event)]),
                    pad_token_id=tokenizer.eos_token_id,
                )
            if event.is_set():
                send({"id": request["id"], "cancelled": True})
                continue
            text = str(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True))
            if not multi:
                text = text.split("\n", 1)[0]
            send({"id": request["id"], "text": text})

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
