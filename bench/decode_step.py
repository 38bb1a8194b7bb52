"""Decode-step micro-benchmark: tabfill fp32 vs tabfill on the GGUF's blocks vs llama.cpp, same GGUF, same run.

    python -m bench.decode_step [--model default|DIR|FILE.gguf ...] [--steps N] [--context N] [--threads N]

For each model (default: the default model and, when present, Qwen2.5-Coder-1.5B Q4_K_M): ms/token of a
decode step at a context of ~400 tokens, prefill of 384 tokens, a verify of 8 draft tokens, for
- `fp32`: the lean decoder over the GGUF's matrices dequantized to fp32 (what the safetensors conversion
  holds; tabfill's `quantize none`),
- `gguf`: the lean decoder over the GGUF's own blocks (`quantize auto|gguf`, the CPU default),
- `llama.cpp`: llama-cpp-python 0.3.36 (its own venv, bench/llama_step.py), same GGUF, same threads,
  before and after tabfill's runs (median of both),
the teacher-forced argmax agreement of `gguf` with `fp32` over the prompt and the greedy first lines of
`--line-cases` of the bench's line cases on the first model (the exactness checks), and
the floor: bytes of weights one step reads / measured memory bandwidth. CPU ms (all threads of the
process) are reported beside wall ms: on a busy machine they show what the work costs apart from waiting.
tabfill's variants alternate (fp32, gguf, fp32, gguf) and report medians: timings on a shared machine are
noisy, compare ratios.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # before torch loads libgomp: as every `tabfill` command runs (tabfill/cli.py)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from bench.machine import decode_floor_ms, memory_bandwidth_gbs
from tabfill.kernels.gguf_decoder import GgufDecoder, decoder_from_gguf
from tabfill.kernels.steps import decode_one_token, prefill, verify_draft

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "tabfill" / "models" / "smollm2-135m"
PREFILL_TOKENS = 384
DRAFT_TOKENS = 8


def _model(spec: str) -> tuple[Path, Any, Any]:
    """(GGUF path, transformers config, tokenizer) for a model spec with a GGUF source."""
    from tabfill.completion.models import load_model

    loaded = load_model(spec, "cpu", quantize="gguf")
    return loaded.model.path, loaded.model.config, loaded.tokenizer


def _code_prompt(tokenizer: Any, n_tokens: int) -> list[int]:
    """``n_tokens`` of real Python (torch's own linear-layer source: fixed for a given torch version)."""
    import torch.nn.modules.linear as source

    ids: list[int] = tokenizer(inspect.getsource(source))["input_ids"]
    if len(ids) < n_tokens:
        raise ValueError(f"the sample source has only {len(ids)} tokens")
    return ids[:n_tokens]


def _time_per_call_ms(fn: Callable[[int], object], calls: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean ms per call of ``fn(i)`` over ``calls`` calls."""
    fn(0)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        runs.append((time.perf_counter() - start) * 1e3 / calls)
    return statistics.median(runs)


def _decoder_numbers(decoder: GgufDecoder, prompt: list[int], steps: int) -> dict[str, float]:
    context = len(prompt)
    prefill(decoder, prompt)
    # NOTE: every step rewrites position `context`: the same attention length each call, as in a decode loop.
    cpu = time.process_time()
    decode_ms = _time_per_call_ms(lambda i: decode_one_token(decoder, prompt[i % context], context), steps, repeats=1)
    decode_cpu = (time.process_time() - cpu) * 1e3 / (steps + 1)  # the warm-up call included
    cpu = time.process_time()
    prefill_ms = _time_per_call_ms(lambda _: prefill(decoder, prompt[:PREFILL_TOKENS]), 1, repeats=1)
    prefill_cpu = (time.process_time() - cpu) * 1e3 / 2
    prefill(decoder, prompt)
    draft = prompt[:DRAFT_TOKENS]
    verify_ms = _time_per_call_ms(lambda _: verify_draft(decoder, draft[0], draft[1:], context), 3, repeats=1)
    return {"decode": decode_ms, "prefill": prefill_ms, "verify": verify_ms, "decode_cpu": decode_cpu, "prefill_cpu": prefill_cpu}


def llama_cpp_numbers(gguf: Path, prompt: list[int], threads: int, steps: int) -> dict[str, float] | str:
    """llama.cpp's decode and prefill ms (bench/llama_step.py in the llama venv), or why not."""
    from tabfill.completion.models import cache_root

    python = cache_root() / "bench" / "llama-venv" / "bin" / "python"
    if not python.exists():
        return f"llama-cpp-python is not installed in {python.parent.parent} (python -m bench builds it)"
    script = Path(__file__).with_name("llama_step.py")
    # NOTE: llama.cpp with its own OpenMP default (spinning): PASSIVE slowed its decode ~3x here
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [str(python), str(script), str(gguf), str(threads), str(steps), "3"],
        input=json.dumps({"prompt": prompt, "prefill": PREFILL_TOKENS}), capture_output=True, text=True, timeout=1800, env=env,
    )
    if result.returncode != 0:
        return f"llama_step failed: {result.stderr.strip()[-300:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_model(spec: str, steps: int, *, context: int = 400, threads: int = 2, line_cases: int = 0) -> dict[str, float | str]:
    """One model's figures; keys name their units (and the model)."""
    gguf, config, tokenizer = _model(spec)
    prompt = _code_prompt(tokenizer, context)
    name = gguf.stem
    before = llama_cpp_numbers(gguf, prompt, threads, steps)
    quant = decoder_from_gguf(gguf, config, max_tokens=context + 64)
    fp32 = decoder_from_gguf(gguf, config, max_tokens=context + 64, dequantized=True)
    runs: dict[str, list[dict[str, float]]] = {"fp32": [], "gguf": []}
    for _ in range(2):  # A B A B
        runs["fp32"].append(_decoder_numbers(fp32, prompt, steps))
        runs["gguf"].append(_decoder_numbers(quant, prompt, steps))
    tokens = torch.tensor(prompt)
    reference = fp32.forward(tokens, 0, all_logits=True)
    quantized = quant.forward(tokens, 0, all_logits=True)
    agreement = 100 * (reference.argmax(-1) == quantized.argmax(-1)).float().mean().item()
    max_diff = (reference - quantized).abs().max().item()
    lines = first_line_agreement(quant, fp32, tokenizer, line_cases) if line_cases else {}
    del fp32, reference
    gc.collect()
    after = llama_cpp_numbers(gguf, prompt, threads, steps)
    weight_bytes = sum(layer.nbytes for layer in _linears(quant))
    out: dict[str, float | str] = {f"{name}: gguf weight MB/token": weight_bytes / 1e6}
    for variant, numbers in runs.items():
        for what, unit in (
            ("decode", "ms/token"), ("prefill", f"{PREFILL_TOKENS} ms"), ("verify", f"{DRAFT_TOKENS} ms"),
            ("decode_cpu", "CPU ms/token"), ("prefill_cpu", f"{PREFILL_TOKENS} CPU ms"),
        ):
            label = {"verify": "verify_draft", "decode_cpu": "decode", "prefill_cpu": "prefill"}.get(what, what)
            out[f"{name}: tabfill {variant} {label} {unit}"] = statistics.median(r[what] for r in numbers)
    llama = [r for r in (before, after) if isinstance(r, dict)]
    if llama:
        out[f"{name}: llama.cpp decode ms/token"] = statistics.median(r["decode_ms"] for r in llama)
        out[f"{name}: llama.cpp prefill {PREFILL_TOKENS} ms"] = statistics.median(r["prefill_ms"] for r in llama)
        out[f"{name}: llama.cpp decode CPU ms/token"] = statistics.median(r["decode_cpu_ms"] for r in llama)
        out[f"{name}: llama.cpp prefill {PREFILL_TOKENS} CPU ms"] = statistics.median(r["prefill_cpu_ms"] for r in llama)
        out[f"{name}: tabfill gguf / llama.cpp decode"] = out[f"{name}: tabfill gguf decode ms/token"] / out[f"{name}: llama.cpp decode ms/token"]  # type: ignore[operator]
        out[f"{name}: tabfill gguf / llama.cpp prefill"] = out[f"{name}: tabfill gguf prefill {PREFILL_TOKENS} ms"] / out[f"{name}: llama.cpp prefill {PREFILL_TOKENS} ms"]  # type: ignore[operator]
    else:
        out[f"{name}: llama.cpp"] = str(before)
    out[f"{name}: gguf vs fp32 argmax agreement %"] = agreement
    out[f"{name}: gguf vs fp32 max |logit diff|"] = max_diff
    out.update({f"{name}: gguf vs fp32 {key}": value for key, value in lines.items()})
    return out


def _greedy_first_line(decoder: GgufDecoder, tokenizer: Any, prompt: list[int], max_new: int) -> tuple[str, list[int], list[torch.Tensor]]:
    """Greedy tokens until the text holds a newline (or ``max_new``): (first line, tokens, each step's logits)."""
    logits = prefill(decoder, prompt)
    tokens: list[int] = []
    steps = []
    for _ in range(max_new):
        steps.append(logits)
        tokens.append(int(logits.argmax()))
        text = tokenizer.decode(tokens)
        if "\n" in text:
            break
        logits = decode_one_token(decoder, tokens[-1], len(prompt) + len(tokens) - 1)
    return tokenizer.decode(tokens).split("\n", 1)[0], tokens, steps


def first_line_agreement(quant: GgufDecoder, fp32: GgufDecoder, tokenizer: Any, cases: int, max_new: int = 24) -> dict[str, float]:
    """Greedy first lines of the bench's line cases (prefix prompt, last 384 tokens) from both decoders.

    A differing case counts as a float tie when, at the first differing token, the fp32 model's top two
    logits are within 1e-3 of each other (either choice is the GGUF model's answer up to fp32 rounding)."""
    from bench.cases import line_cases

    same = ties = 0
    chosen = line_cases(cases)
    for case in chosen:
        prompt = tokenizer(case.prefix)["input_ids"][-PREFILL_TOKENS:]
        line_q, tokens_q, _ = _greedy_first_line(quant, tokenizer, prompt, max_new)
        line_f, tokens_f, steps_f = _greedy_first_line(fp32, tokenizer, prompt, max_new)
        if line_q == line_f:
            same += 1
            continue
        first = next((i for i, (a, b) in enumerate(zip(tokens_q, tokens_f)) if a != b), min(len(tokens_q), len(tokens_f)))
        if first < len(steps_f):
            top2 = steps_f[first].topk(2).values
            ties += int(float(top2[0] - top2[1]) < 1e-3)
    return {
        "line cases": float(len(chosen)),
        "first lines identical %": 100 * same / len(chosen),
        "first lines identical or float tie %": 100 * (same + ties) / len(chosen),
    }


def _linears(decoder: GgufDecoder) -> list[Any]:
    layers = [m for layer in decoder.layers for m in (layer.qkv, layer.o, layer.up, layer.down)]
    return [*layers, decoder.lm_head]


def measure(
    model: str, steps: int, *, context: int = 400, threads: int | None = None, extra: tuple[str, ...] = (), line_cases: int = 0,
    bandwidth_gbs: float | None = None,
) -> dict[str, float | str]:
    """Every model's figures, the bandwidth, and the default model's headline pair for the targets table
    (`tabfill_decode_ms`: the gguf step tabfill serves with on CPU; `floor_ms`: its weight-streaming floor)."""
    threads = threads or torch.get_num_threads()
    bandwidth = memory_bandwidth_gbs() if bandwidth_gbs is None else bandwidth_gbs  # the run's one figure
    results: dict[str, float | str] = {"memory bandwidth GB/s": bandwidth}
    first = measure_model(model, steps, context=context, threads=threads, line_cases=line_cases)
    name = next(iter(first)).split(":")[0]
    results.update(first)
    results["tabfill_decode_ms"] = first[f"{name}: tabfill gguf decode ms/token"]
    results["floor_ms"] = decode_floor_ms(int(float(first[f"{name}: gguf weight MB/token"]) * 1e6), bandwidth)
    for spec in extra:
        results.update(measure_model(spec, steps, context=context, threads=threads))
    return results


def step_parser(doc: str | None, steps: int, model_default: str | None = str(DEFAULT_MODEL_DIR)) -> argparse.ArgumentParser:
    """The options the step micro-benchmarks share: --model, --steps, --context, --threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if model_default is None:
        parser.add_argument("--model", action="append", help="default, a preset, a converted directory or a .gguf (repeatable)")
    else:
        parser.add_argument("--model", default=model_default)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--context", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def print_results(results: dict[str, Any]) -> None:
    width = max(len(key) for key in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


def _pulled_code_model() -> list[str]:
    """The code-model preset, when `tabfill model pull qwen2.5-coder-1.5b` has been run (never fetched here)."""
    from tabfill.completion.models import SPLIT_PRESETS, cache_root

    return [name for name in SPLIT_PRESETS if (cache_root() / "models" / name).is_dir()]


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, 16, model_default=None)
    parser.add_argument("--line-cases", type=int, default=72, help="greedy first lines compared on the first model (0: skip)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = args.model or ["default", *_pulled_code_model()]
    print_results(measure(models[0], args.steps, context=args.context, threads=args.threads, extra=tuple(models[1:]), line_cases=args.line_cases))


if __name__ == "__main__":
    main()
