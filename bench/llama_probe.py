"""Run llama-cpp-python's OpenAI-compatible server with one probe: every generate call appends a JSON line
{"prompt_tokens": N, "cached_tokens": K} to $TABFILL_LLAMA_PROBE, K being the prompt tokens whose KV the
server reuses from its previous sequence (its own prefix-match rule, re-computed here before the call; its
log line "N prefix-match hit" says the same but only when N > 0). Used by bench/serverfront.py, which runs
this file with the llama venv's python: `python bench/llama_probe.py --model … --port …`.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
from typing import Any

import llama_cpp

_LOCK = threading.Lock()
_ORIGINAL = llama_cpp.Llama.generate


def _reused(llama: llama_cpp.Llama, tokens: list[int]) -> int:
    if llama.n_tokens <= 0:
        return 0
    common = 0
    for cached, new in zip(llama._input_ids.tolist(), tokens):
        if cached != new:
            break
        common += 1
    if common == len(tokens):  # the whole prompt is cached: the server replays at most one token
        return common if llama.n_tokens == len(tokens) else common - 1
    return common


def _generate(self: llama_cpp.Llama, tokens: Any, *args: Any, **kwargs: Any) -> Any:
    tokens = list(tokens)
    record = {"prompt_tokens": len(tokens), "cached_tokens": _reused(self, tokens)}
    with _LOCK, open(os.environ["TABFILL_LLAMA_PROBE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
    return _ORIGINAL(self, tokens, *args, **kwargs)


llama_cpp.Llama.generate = _generate
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__")
