"""Batched decode step micro-benchmark: ms per ``forward_rows`` step for 1, 2, 4, 8, 16 decode rows vs the
single-row step of the lean decoder (``steps.decode_one_token``), every row at a context of ~400 tokens.

    python -m bench.batch_step [--model DIR] [--weights gguf,fp32] [--steps N] [--rounds N]
                               [--rows 1,2,4,8,16] [--context N] [--threads N] [--attention]

Weights: `gguf`, the decoder over the default model's GGUF blocks (what `tabfill engine` computes with on
CPU: `--quantize auto`), its single-row step being the whole-step C call; `fp32`, the lean decoder over the
transformers model (`--quantize none`, and the GPU path's shape). Paired: each round times the single-row
step and then every batch size, and each figure is the median over the rounds, so a noisy neighbour slows
both sides of a ratio alike. ``--attention`` also times attention alone for 8 rows: one SDPA call per row on
a view of its slot, one masked call over the rows' gathered slots (a copy), and one masked call over a view
of their slot range (what kernels/batch.py does).
Target (issue 14): 8 rows <= 2x the single-row step.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # before torch loads libgomp: as every `tabfill` command runs (tabfill/cli.py)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from bench.decode_step import DEFAULT_MODEL_DIR, _code_prompt, _time_per_call_ms, print_results, step_parser
from tabfill.kernels import LeanDecoder
from tabfill.kernels.batch import BatchedDecoder, RowInput
from tabfill.kernels.steps import decode_one_token, prefill

ROWS = (1, 2, 4, 8, 16)


def _decoder(model_dir: str | Path, weights: str, max_tokens: int) -> tuple[LeanDecoder, Any]:
    """(decoder, tokenizer): over the GGUF's blocks (`gguf`) or the fp32 transformers model (`fp32`)."""
    if weights == "gguf":
        from bench.decode_step import _model
        from tabfill.kernels.gguf_decoder import decoder_from_gguf

        path, config, tokenizer = _model("default" if str(model_dir) == str(DEFAULT_MODEL_DIR) else str(model_dir))
        return decoder_from_gguf(path, config, max_tokens=max_tokens), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return LeanDecoder.from_hf(model, max_tokens=max_tokens), AutoTokenizer.from_pretrained(str(model_dir))


def measure(
    model_dir: str | Path = DEFAULT_MODEL_DIR, rows: tuple[int, ...] = ROWS, steps: int = 8, *,
    rounds: int = 3, context: int = 400, attention: bool = False, weights: str = "fp32",
) -> dict[str, float]:
    """ms per step of each batch size and the single-row step; ratios to the single-row step."""
    decoder, tokenizer = _decoder(model_dir, weights, context + 8)
    prompt = _code_prompt(tokenizer, context + max(rows))
    batch = BatchedDecoder(decoder, slots=max(rows), max_tokens=context + 8)
    prefill(decoder, prompt[:context])
    for slot in range(max(rows)):  # each row its own ~400 tokens of code (shifted windows)
        batch.forward_rows([RowInput(slot, prompt[slot : slot + context], 0)])
    # NOTE: every step rewrites position `context`: the same attention length each call, as in a decode loop.
    single = lambda i: decode_one_token(decoder, prompt[i % context], context)  # noqa: E731

    def batched(n: int):  # type: ignore[no-untyped-def]
        return lambda i: batch.forward_rows([RowInput(s, [prompt[(i + s) % context]], context) for s in range(n)])

    timings: dict[str, list[float]] = {"single": [], **{f"b{n}": [] for n in rows}}
    for _ in range(rounds):
        timings["single"].append(_time_per_call_ms(single, steps, repeats=1))
        for n in rows:
            timings[f"b{n}"].append(_time_per_call_ms(batched(n), steps, repeats=1))
    single_ms = statistics.median(timings["single"])
    results = {"single-row step ms (steps.decode_one_token)": single_ms}
    for n in rows:
        ms = statistics.median(timings[f"b{n}"])
        results[f"batch {n} step ms"] = ms
        results[f"batch {n} / single-row step"] = ms / single_ms
        results[f"batch {n} ms per row"] = ms / n
    if attention:
        results.update(_attention_variants(batch, context, min(8, max(rows)), steps))
    return results


def _attention_variants(batch: BatchedDecoder, context: int, n: int, steps: int) -> dict[str, float]:
    """Attention alone for ``n`` decode rows over every layer: per-row SDPA calls vs one masked call."""
    d = batch.decoder
    q = torch.randn(n, d.num_heads, d.head_dim, dtype=d.dtype)  # [N, Hq, Dh]
    slots = torch.arange(n)
    gqa = d.num_heads != d.num_kv_heads
    kv_len = context + 1
    rows = [RowInput(s, [0], context) for s in range(n)]

    def per_row(_: int) -> None:
        for layer in range(len(d.layers)):
            batch._attend_per_row(q, batch.pool.k[layer], batch.pool.v[layer], rows, [1] * n)

    # rows of different lengths need a mask; here all are equal, so the mask only costs what it would
    mask = torch.ones(n, 1, 1, kv_len, dtype=torch.bool)

    def masked(_: int) -> None:
        for layer in range(len(d.layers)):
            k = batch.pool.k[layer][slots, :, :kv_len]  # gathers a copy [N, Hkv, T, Dh]
            v = batch.pool.v[layer][slots, :, :kv_len]
            F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, enable_gqa=gqa)

    from tabfill.kernels.batch import _ShortRows

    plan = _ShortRows.plan(rows, [1] * n, d.device)
    assert plan is not None

    def slot_range(_: int) -> None:
        for layer in range(len(d.layers)):
            plan(q, batch.pool.k[layer], batch.pool.v[layer], None)

    with torch.inference_mode():
        return {
            f"attention {n} rows, per-row SDPA ms/step": _time_per_call_ms(per_row, steps),
            f"attention {n} rows, one masked SDPA over gathered slots ms/step": _time_per_call_ms(masked, steps),
            f"attention {n} rows, one masked SDPA over a slot-range view ms/step (used)": _time_per_call_ms(slot_range, steps),
        }

def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, 8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="batch sizes, comma-separated")
    parser.add_argument("--attention", action="store_true", help="also time per-row vs masked attention")
    parser.add_argument("--weights", default="gguf,fp32", help="gguf (the engine's CPU default), fp32, or both, comma-separated")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = tuple(int(n) for n in args.rows.split(","))
    results: dict[str, float] = {}
    for weights in args.weights.split(","):
        measured = measure(args.model, rows, args.steps, rounds=args.rounds, context=args.context, attention=args.attention, weights=weights)
        results.update({f"{weights}: {name}": value for name, value in measured.items()})
    print_results(results)
    for weights in args.weights.split(","):
        ratio = results.get(f"{weights}: batch 8 / single-row step", float("nan"))
        print(f"target ({weights}): batch 8 <= 2x the single-row step: {'met' if ratio <= 2 else 'missed'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
