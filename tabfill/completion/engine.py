"""Greedy generation over a transformers causal LM with a KV cache.

The hot path is three short steps — `prefill`, `decode_one_token`, `stop_index` — driven by `generate`,
which checks the cancel token and the deadline between steps, so cancelled work stops within one step.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from tabfill.completion.types import CancelToken, Deadline, Generation, Prompt, StopRule, Timings
from tabfill.syntax_cache.context import indent_width

log = logging.getLogger(__name__)

PREFILL_CHUNK_TOKENS = 256

# NOTE: transformers 5.2x warns that `past_key_values` becomes `cache`, but passing `cache=` there does
# not fill the given cache; keep the working name and silence just this warning.
warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class EngineInfo:
    source: str
    device: str
    dtype: str
    load_ms: float
    template: str
    import_ms: float = 0.0
    warmup_ms: float = 0.0


def stop_index(text: str, stop: StopRule) -> int | None:
    """Index at which `text` (the continuation so far) must be cut, or None to keep generating.

    Single-line: at the first newline. Multi-line: before the first complete non-empty line indented
    less than `stop.block_indent`, before a second consecutive blank line, or after `stop.max_lines`.
    """
    if stop.single_line:
        newline = text.find("\n")
        return None if newline < 0 else newline
    line_start = 0
    blank_run = 0
    line_number = 0
    while True:
        newline = text.find("\n", line_start)
        if newline < 0:
            return None  # the last line is still being written
        line = text[line_start:newline]
        if line_number > 0:  # the first line continues the cursor line: its indent is not ours to judge
            if line.strip():
                blank_run = 0
                if indent_width(line) < stop.block_indent:
                    return max(line_start - 1, 0)
            else:
                blank_run += 1
                if blank_run >= 2:
                    return max(line_start - 1, 0)
        line_number += 1
        if line_number >= stop.max_lines:
            return newline
        line_start = newline + 1


class Engine:
    """Owns one loaded model; not thread-safe: exactly one worker thread calls it."""

    def __init__(self, model: Any, tokenizer: Any, device: str, info: EngineInfo) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.info = info
        self.eos_ids = frozenset(_eos_ids(model, tokenizer))
        self._token_texts: list[str] | None = None

    @torch.inference_mode()
    def warm_up(self) -> float:
        """One short forward and the vocabulary table, so the first request does not pay for
        kernel initialisation (~1 s on this CPU). Returns milliseconds."""
        from transformers import DynamicCache

        started = time.perf_counter()
        self._forward(torch.tensor([[0, 0, 0, 0]], device=self.device), DynamicCache())
        self.token_texts()
        return (time.perf_counter() - started) * 1000

    # ----------------------------------------------------------------- token healing support
    def token_texts(self) -> list[str]:
        """The text each vocabulary id decodes to in context (leading spaces kept); built once, lazily."""
        if self._token_texts is None:
            started = time.perf_counter()
            self._token_texts = _decode_vocabulary(self.tokenizer, self.model.config.vocab_size)
            log.debug("decoded vocabulary in %.0f ms", (time.perf_counter() - started) * 1000)
        return self._token_texts

    def _healing_mask(self, remaining: str, vocab_size: int) -> torch.Tensor:
        """Boolean mask [V] of tokens consistent with having to produce `remaining` next."""
        texts = self.token_texts()
        allowed = [
            i
            for i, text in enumerate(texts[:vocab_size])
            if text and "\ufffd" not in text and (text.startswith(remaining) or remaining.startswith(text))
        ]
        mask = torch.zeros(vocab_size, dtype=torch.bool, device=self.device)
        if allowed:
            mask[torch.tensor(allowed, device=self.device)] = True
        return mask

    # ----------------------------------------------------------------- steps
    def prefill(self, token_ids: list[int], cache: Any, cancel: CancelToken, deadline: Deadline) -> tuple[torch.Tensor | None, Any]:
        """Run the prompt through the model in chunks; returns last logits [V] (None if interrupted)."""
        logits: torch.Tensor | None = None
        for start in range(0, len(token_ids), PREFILL_CHUNK_TOKENS):
            if cancel.cancelled or (deadline.expired and start > 0):
                return None, cache
            chunk = torch.tensor([token_ids[start : start + PREFILL_CHUNK_TOKENS]], device=self.device)  # [1, S]
            logits, cache = self._forward(chunk, cache)
        return logits, cache

    def decode_one_token(self, token_id: int, cache: Any) -> tuple[torch.Tensor, Any]:
        step = torch.tensor([[token_id]], device=self.device)  # [1, 1]
        return self._forward(step, cache)

    def _forward(self, input_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float(), out.past_key_values  # [V]

    # ----------------------------------------------------------------- the loop
    @torch.inference_mode()
    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline) -> Generation:
        """Greedy decoding of `prompt` until a stop, EOS, max tokens, the deadline or cancellation."""
        from transformers import DynamicCache

        timings = Timings()
        started = time.perf_counter()
        stop_ids = self.eos_ids | prompt.stop_token_ids
        cache: Any = DynamicCache()
        logits, cache = self.prefill(list(prompt.token_ids), cache, cancel, deadline)
        timings = timings.add("prefill", (time.perf_counter() - started) * 1000)
        if logits is None:
            reason = "cancelled" if cancel.cancelled else "deadline"
            return Generation((), "", reason, len(prompt.token_ids), timings)

        decode_started = time.perf_counter()
        generated: list[int] = []
        text = ""
        finish = "length"
        healing = prompt.healing_text
        vocab_size = logits.shape[-1]
        for _step in range(prompt.max_new_tokens + (1 if healing else 0)):
            decoded_so_far = _strip_healing(text, healing)
            if healing and decoded_so_far is None:
                if not healing.startswith(text):
                    # The decoded text left the healing text (a tokenizer whose lone tokens decode without
                    # their leading space): give up rather than return text that does not fit the prefix.
                    text, finish = healing, "stop"
                    break
                # NOTE: token healing — the prompt's last token was removed; only tokens consistent
                # with re-producing its text may come first.
                remaining = healing[len(text) :]
                logits = logits.masked_fill(~self._healing_mask(remaining, vocab_size), float("-inf"))
            token_id = int(torch.argmax(logits).item())
            if token_id in stop_ids:
                finish = "eos"
                break
            generated.append(token_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=False)
            continuation = _strip_healing(text, healing)
            if continuation is not None:
                cut = stop_index(continuation, prompt.stop)
                if cut is not None:
                    text = healing + continuation[:cut]
                    finish = "stop"
                    break
            if cancel.cancelled:
                finish = "cancelled"
                break
            if deadline.expired:
                finish = "deadline"
                break
            logits, cache = self.decode_one_token(token_id, cache)
        timings = timings.add("decode", (time.perf_counter() - decode_started) * 1000)
        continuation = _strip_healing(text, healing)
        return Generation(tuple(generated), continuation or "", finish, len(prompt.token_ids), timings)


def _strip_healing(text: str, healing: str) -> str | None:
    """The continuation after the healing text, or None while the healing text is not complete."""
    if not healing:
        return text
    if text.startswith(healing):
        return text[len(healing) :]
    return None


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for candidate in (getattr(model.generation_config, "eos_token_id", None), model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            ids.append(candidate)
        elif isinstance(candidate, (list, tuple)):
            ids.extend(int(c) for c in candidate)
    return ids


def _decode_vocabulary(tokenizer: Any, vocab_size: int) -> list[str]:
    """Decode every id behind an anchor token, so tokenizers that strip a leading space (SentencePiece)
    still report it."""
    size = min(vocab_size, len(tokenizer))
    anchor_ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    anchor = tokenizer.decode(anchor_ids[-1:]) if anchor_ids else ""
    if anchor_ids:
        pairs = tokenizer.batch_decode([[anchor_ids[-1], i] for i in range(size)], skip_special_tokens=False)
        texts = [pair[len(anchor) :] if pair.startswith(anchor) else "" for pair in pairs]
    else:
        texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    texts = ["" if i in special else text for i, text in enumerate(texts)]
    return texts + [""] * (vocab_size - size)
