"""llama.cpp's decode step and prefill on a GGUF, through llama-cpp-python (run in its own environment).

    <llama-venv>/bin/python bench/llama_step.py MODEL.gguf THREADS STEPS REPEATS < token_ids.json

Reads the prompt's token ids (JSON list) on stdin, prints JSON: decode ms/token at the prompt's length
(every step rewrites the same position, as bench/decode_step.py does for tabfill), prefill ms of the first
`prefill` ids, each the median over REPEATS runs. Only the standard library and llama_cpp: this file runs
under the llama venv's Python, not tabfill's.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def main() -> None:
    from llama_cpp import Llama

    path, threads, steps, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    request = json.load(sys.stdin)
    prompt: list[int] = request["prompt"]
    prefill: int = request["prefill"]
    llm = Llama(
        model_path=path, n_ctx=len(prompt) + 64, n_batch=512, n_ubatch=512, n_threads=threads,
        n_threads_batch=threads, verbose=False,
    )

    def run_prefill() -> float:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt[:prefill])
        return (time.perf_counter() - start) * 1e3

    def cpu_ms(fn: object) -> tuple[float, float]:  # (wall ms, CPU ms of the whole process) of one call
        cpu = time.process_time()
        wall = fn()  # type: ignore[operator]
        return wall, (time.process_time() - cpu) * 1e3

    def run_decode() -> float:
        context = len(prompt)
        start = time.perf_counter()
        for i in range(steps):
            llm.n_tokens = context  # eval() drops the KV from n_tokens on: rewrite position `context`
            llm.eval([prompt[i % context]])
        return (time.perf_counter() - start) * 1e3 / steps

    run_prefill()  # warm-up
    prefills = [cpu_ms(run_prefill) for _ in range(repeats)]
    llm.reset()
    llm.eval(prompt)
    run_decode()
    decodes = [cpu_ms(run_decode) for _ in range(repeats)]
    print(json.dumps({
        "decode_ms": statistics.median(w for w, _ in decodes),
        "prefill_ms": statistics.median(w for w, _ in prefills),
        # CPU time of all threads: on a busy machine, what the work costs apart from waiting for a core
        "decode_cpu_ms": statistics.median(c for _, c in decodes) / steps,
        "prefill_cpu_ms": statistics.median(c for _, c in prefills),
    }))


if __name__ == "__main__":
    main()
