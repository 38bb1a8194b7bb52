"""Decode-step micro-benchmark: transformers vs LeanDecoder (fp32, int8, compiled) against the bandwidth floor.

    python -m bench.decode_step [--model DIR] [--steps N] [--context N] [--threads N] [--compile]

Prints ms/token of ``decode_one_token`` at a context of ~400 tokens, prefill of 384 tokens, a verify_draft of
8 tokens, and the weight-streaming floor: bytes of weights read per token / the memory bandwidth
(`bench.machine.memory_bandwidth_gbs`, the benchmark's one bandwidth measure: `python -m bench` passes the
figure it measured once, so its floor table and this one agree).
Timings on a shared machine are noisy: compare ratios between variants of the same run.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.machine import memory_bandwidth_gbs
from tabfill.kernels import LeanDecoder
from tabfill.kernels.steps import decode_one_token, prefill, verify_draft

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "tabfill" / "models" / "smollm2-135m"
PREFILL_TOKENS = 384
DRAFT_TOKENS = 8


def weight_bytes_per_token(model: Any, int8: bool) -> int:
    """Bytes of weights one decode step reads: every matrix once (a tied embedding once, as the lm_head).

    ``int8``: as LeanDecoder's int8 mode stores them — every matrix int8 except the MLP down projections.
    """
    seen: set[int] = set()
    total = 0
    embed = model.get_input_embeddings().weight
    for name, param in model.named_parameters(remove_duplicate=False):
        key = param.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        if param is embed and model.lm_head.weight is not embed:
            continue  # untied: one row per token
        quantized = int8 and param.dim() == 2 and not name.endswith(("down_proj.weight", "c_proj.weight"))
        total += param.numel() * (1 if quantized else param.element_size())
    return total


def _code_prompt(model_dir: str, n_tokens: int) -> list[int]:
    """``n_tokens`` of real Python (torch's own linear-layer source: fixed for a given torch version)."""
    from transformers import AutoTokenizer

    import torch.nn.modules.linear as source

    ids: list[int] = AutoTokenizer.from_pretrained(model_dir)(inspect.getsource(source))["input_ids"]
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


def _transformers_decode_ms(model: Any, prompt: list[int], steps: int) -> float:
    from transformers import DynamicCache

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cache = DynamicCache(config=model.config)
        model(torch.tensor([prompt]), past_key_values=cache, use_cache=True)
        token = torch.tensor([[prompt[-1]]])

        def step(_: int) -> object:
            return model(token, past_key_values=cache, use_cache=True).logits

        ms = _time_per_call_ms(step, steps, repeats=1)
    return ms


def _decoder_numbers(name: str, decoder: LeanDecoder, prompt: list[int], steps: int) -> dict[str, float]:
    context = len(prompt)
    prefill(decoder, prompt)
    # NOTE: every step rewrites position `context`: the same attention length each call, as in a decode loop.
    decode_ms = _time_per_call_ms(lambda i: decode_one_token(decoder, prompt[i % context], context), steps)
    prefill_ms = _time_per_call_ms(lambda _: prefill(decoder, prompt[:PREFILL_TOKENS]), 1)
    prefill(decoder, prompt)
    draft = prompt[:DRAFT_TOKENS]
    verify_ms = _time_per_call_ms(lambda _: verify_draft(decoder, draft[0], draft[1:], context), 5)
    return {
        f"{name} decode ms/token": decode_ms,
        f"{name} prefill {PREFILL_TOKENS} ms": prefill_ms,
        f"{name} verify_draft {DRAFT_TOKENS} ms": verify_ms,
    }


def _profile(decoder: LeanDecoder, prompt: list[int], steps: int) -> dict[str, float]:
    """Where a fp32 decode step's time goes, by wall clock: the step, the same matrix products alone (every
    layer's projections and the lm_head on one token, as the step runs them), and the rest (attention over
    the cache, norms, rotary, Python)."""
    context = len(prompt)
    prefill(decoder, prompt)
    step_ms = _time_per_call_ms(lambda i: decode_one_token(decoder, prompt[i % context], context), steps)
    hidden = decoder.embed.shape[0] if decoder.embed_transposed else decoder.embed.shape[1]
    x = torch.randn(1, hidden, dtype=decoder.dtype, device=decoder.device)  # [1, D]

    def matrices(_: int) -> None:
        for layer in decoder.layers:
            layer.qkv(x)
            layer.o(x[:, : decoder.num_heads * decoder.head_dim])
            up = layer.up(x)  # [1, 2I] or [1, I]
            layer.down(up[:, : up.shape[1] // 2] if decoder.arch.gated_mlp else up)
        decoder.lm_head(x)

    with torch.inference_mode():
        matrix_ms = _time_per_call_ms(matrices, steps)
    return {
        "profile: whole step (ms per fp32 step)": step_ms,
        "profile: matrix products alone (ms per fp32 step)": matrix_ms,
        "profile: everything else (ms per fp32 step)": max(0.0, step_ms - matrix_ms),
    }


def _compiled_decode(decoder: LeanDecoder, prompt: list[int], steps: int) -> dict[str, float]:
    context = len(prompt)
    prefill(decoder, prompt)
    compiled = torch.compile(decoder.forward, dynamic=True)
    token = torch.tensor([prompt[0]])
    start = time.perf_counter()
    compiled(token, context)
    compiled(token, context + 1)  # a second length: the decode loop moves on every step
    compile_s = time.perf_counter() - start
    decode_ms = _time_per_call_ms(lambda i: compiled(token, context + i % 2), steps)
    return {"compiled fp32 compile s": compile_s, "compiled fp32 decode ms/token": decode_ms}


def measure(model_dir: str, steps: int, *, context: int = 400, try_compile: bool = False,
            bandwidth_gbs: float | None = None) -> dict[str, float]:
    """ms/token and ms per call for each variant and the floors; keys name their units. The floors use
    `bandwidth_gbs` (the run's one figure, `bench.machine.memory_bandwidth_gbs`), measured here when None."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = _code_prompt(model_dir, context)
    bandwidth = memory_bandwidth_gbs() if bandwidth_gbs is None else bandwidth_gbs
    fp32_bytes = weight_bytes_per_token(model, int8=False)
    int8_bytes = weight_bytes_per_token(model, int8=True)
    results: dict[str, float] = {
        "memory bandwidth GB/s": bandwidth,
        "fp32 weight MB/token": fp32_bytes / 1e6,
        "fp32 floor ms/token": fp32_bytes / bandwidth / 1e6,
        "int8 weight MB/token": int8_bytes / 1e6,
        "int8 floor ms/token": int8_bytes / bandwidth / 1e6,
    }
    # NOTE: transformers first: from_hf rebinds its parameters to (transposed) views of the repacked weights.
    results["transformers decode ms/token"] = _transformers_decode_ms(model, prompt, steps)
    fp32 = LeanDecoder.from_hf(model, max_tokens=context + 64)
    results.update(_decoder_numbers("lean fp32", fp32, prompt, steps))
    results.update(_profile(fp32, prompt, max(8, steps // 2)))
    int8 = LeanDecoder.from_hf(model, max_tokens=context + 64, quantize="int8")
    results.update(_decoder_numbers("lean int8", int8, prompt, steps))
    with torch.no_grad():
        tokens = torch.tensor(prompt)
        reference = fp32.forward(tokens, 0, all_logits=True)
        quantized = int8.forward(tokens, 0, all_logits=True)
    results["int8 argmax agreement %"] = 100 * (reference.argmax(-1) == quantized.argmax(-1)).float().mean().item()
    del int8
    gc.collect()
    if try_compile:
        try:
            results.update(_compiled_decode(fp32, prompt, steps))
        except Exception as exc:  # noqa: BLE001 - a benchmark records the failure and goes on
            print(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:300]}")
            results["compiled fp32 decode ms/token"] = float("nan")
    results["lean fp32 / fp32 floor"] = results["lean fp32 decode ms/token"] / results["fp32 floor ms/token"]
    results["lean int8 / int8 floor"] = results["lean int8 decode ms/token"] / results["int8 floor ms/token"]
    # the figure the README quotes for `quantize: int8` (the same two measurements, one run)
    results["int8 decode speed-up over fp32 ×"] = results["lean fp32 decode ms/token"] / results["lean int8 decode ms/token"]
    results["transformers / lean fp32"] = results["transformers decode ms/token"] / results["lean fp32 decode ms/token"]
    # the variant tabfill serves with by default (quantize "none") and its floor, for the targets table
    results["tabfill_decode_ms"] = results["lean fp32 decode ms/token"]
    results["floor_ms"] = results["fp32 floor ms/token"]
    return results


def step_parser(doc: str | None, steps: int) -> argparse.ArgumentParser:
    """The options the step micro-benchmarks share: --model, --steps, --context, --threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--context", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def print_results(results: dict[str, float]) -> None:
    width = max(len(key) for key in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, 32)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd decode step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_results(measure(args.model, args.steps, context=args.context, try_compile=args.compile))


if __name__ == "__main__":
    main()
