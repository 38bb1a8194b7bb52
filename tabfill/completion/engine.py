"""Greedy generation over one live KV slot of a model runner (the lean kernels/ forward or transformers).

The hot path is a few short steps — `prefill`, `decode_one_token`, `verify_draft` (kernels.steps on the live
slot) and `stop_index` — driven by `resume`, which checks the cancel token and the deadline between steps, so
cancelled work stops within one step and a deadline leaves a generation that can be resumed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from tabfill.completion.decoding import DRAFT_TOKENS, Decoding, DraftOdds, Vocabulary, eos_ids
from tabfill.completion.forward_cost import MIN_CHUNK_TOKENS, TimedForward
from tabfill.completion.postprocess import stop_index
from tabfill.completion.prefix_cache import PrefixCache, common_prefix
from tabfill.completion.runners import Runner, TransformersRunner
from tabfill.completion.types import CancelToken, Deadline, EngineInfo, FinishReason, Generation, Prompt, Resumable, Timings
from tabfill.kernels import steps

log = logging.getLogger(__name__)

__all__ = ["Decoding", "Engine", "stop_index"]  # Decoding lives in decoding.py (shared with batching), stop_index in postprocess.py

# NOTE: transformers 5.2x warns that `past_key_values` becomes `cache`, but passing `cache=` there does
# not fill the given cache; keep the working name and silence just this warning.
warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)


class Engine:
    """Owns one loaded model and its live KV slot; not thread-safe: exactly one worker thread calls it.

    The live slot holds the KV of `self._live` (verified tokens only: prompt tokens and generated or
    accepted draft tokens). A new prompt reuses its longest common prefix with the live slot (or with the
    prefix store, for another document) and prefills only the rest."""

    # A cut prompt advances only while `resume` runs (no server prefills it meanwhile): flights gives such a
    # continuation long slices until its first token (flights.PREFILL_SLICE_MS)
    prefills_while_resumed = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        info: EngineInfo,
        runner: Runner | None = None,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.info = info
        self.runner: Runner = runner or TransformersRunner(model, self.device)
        self.prefix_cache = prefix_cache if self.runner.kv_bytes_per_token > 0 else None
        self.eos_ids = eos_ids(model, tokenizer)
        self.draft_tokens = DRAFT_TOKENS
        self.draft_odds = DraftOdds()  # how often each kind of draft is accepted, over every generation here
        self.vocabulary = Vocabulary(tokenizer, model.config.vocab_size)
        self._live: list[int] = []
        self._owner: Decoding | None = None  # whose next-token logits are valid for the live slot
        self.last_reused_tokens = 0
        self.timed = TimedForward(self.runner)  # its measured cost (.cost) sizes prefill chunks, judges the next step

    @torch.inference_mode()
    def warm_up(self) -> float:
        """One short forward and the vocabulary table, so the first request does not pay for
        kernel initialisation (~1 s on this CPU). Returns milliseconds."""
        started = time.perf_counter()
        self.runner.forward([0, 0, 0, 0], 0)
        self.timed.calibrate(steps.PREFILL_CHUNK_TOKENS, at=4)
        self._live, self._owner = [0, 0, 0, 0], None
        self.vocabulary.sorted()
        return (time.perf_counter() - started) * 1000

    def describe(self) -> dict[str, object]:
        """The runner, the prefix store (set-up and counters) and the drafts, for `tabfill/status`."""
        described: dict[str, object] = dict(self.runner.describe())
        store = self.prefix_cache
        described["prefix_cache"] = (
            f"{store.max_bytes // 2**20} MiB, blocks of {store.block_tokens} tokens" if store else "off (the runner does not export KV)"
        )
        described["drafts"] = f"prompt lookup, up to {self.draft_tokens} tokens per forward"
        described.update(forwardCost=self.timed.cost.describe(), draftOdds=self.draft_odds.describe(), liveTokens=len(self._live))
        if store is not None:
            described.update(prefixCacheBytes=store.num_bytes, prefixCacheBlocks=store.num_blocks, prefixCacheStats=dataclasses.asdict(store.stats))
        return described

    def close(self) -> None:
        """Nothing to release but memory: the model goes with the last reference to this engine."""
        self._live, self._owner = [], None

    # ----------------------------------------------------------------- token healing support
    def token_texts(self) -> list[str]:
        """The text each vocabulary id decodes to in context (leading spaces kept); built once, lazily."""
        return self.vocabulary.texts()

    def _healing_mask(self, remaining: str, vocab_size: int) -> torch.Tensor:
        return self.vocabulary.healing_mask(remaining, vocab_size, self.device)

    # ----------------------------------------------------------------- steps
    def prefill(self, token_ids: list[int], cancel: CancelToken, deadline: Deadline) -> torch.Tensor | None:
        """Make the live slot hold `token_ids`: reuse the longest cached prefix, run the rest in chunks.
        Returns the last position's logits [V], or None when cancelled or past the deadline (the chunks
        done so far stay in the live slot, so the next call continues from there)."""
        self._owner = None
        reuse = self.last_reused_tokens = self._reuse(token_ids)
        if cancel.cancelled:
            return None
        logits: torch.Tensor | None = None
        for written, logits in steps.prefill_chunks(self.timed, token_ids, reuse, self.timed.cost.chunker(deadline, steps.PREFILL_CHUNK_TOKENS)):
            self._live = token_ids[:written]
            if written < len(token_ids) and (cancel.cancelled or deadline.within_ms(self.timed.cost.estimate_ms(MIN_CHUNK_TOKENS))):
                return None
        return logits

    @torch.inference_mode()
    def warm(self, token_ids: list[int], cancel: CancelToken, *, document: str = "") -> int:
        """Prefill all but the last token of a prompt expected soon (a real request then forwards at least
        that one). Stops between chunks when cancelled. Returns the tokens it ran."""
        head = token_ids[:-1]
        if len(head) < 2 or self._live[: len(head)] == head:
            return 0
        self.prefill(head, cancel, Deadline())
        return len(self._live) - self.last_reused_tokens

    def _reuse(self, token_ids: list[int]) -> int:
        """How many leading tokens of `token_ids` already have KV in the live slot (after loading what the
        prefix store has, when that is more). At least the last token is always left to run."""
        live = self._live
        common = max(0, min(common_prefix(live, token_ids), len(token_ids) - 1))
        store = self.prefix_cache
        if store is not None:
            if common < len(live) - store.block_tokens:
                # NOTE: the live slot is about to be overwritten with another sequence: keep its blocks
                # first (only verified tokens are in `live`).
                store.commit(live, len(live), self.runner.read_kv)
            match = store.match(token_ids[: len(token_ids) - 1])
            if match.num_cached_tokens > common:
                kv = store.load(match)
                if kv is not None:
                    self.runner.write_kv(common, kv[:, :, :, common : match.num_cached_tokens])
                    common = match.num_cached_tokens
        common = self.runner.keep(common)
        self._live = token_ids[:common]
        return common

    def decode_one_token(self, token_id: int) -> torch.Tensor:
        """Forward one token at the end of the live slot; returns the next-token logits [V]."""
        logits = steps.decode_one_token(self.timed, token_id, len(self._live))
        self._live.append(token_id)
        return logits

    def verify_draft(self, token_id: int, draft: list[int]) -> tuple[list[int], torch.Tensor]:
        """Forward `token_id` and the draft after it in one pass (steps.verify_draft). Returns (accepted
        draft tokens, logits [len(accepted) + 1, V]: the rows that chose them, then the next token's); only
        verified tokens join the live slot."""
        accepted, logits = steps.verify_draft(self.timed, token_id, draft, len(self._live))
        self._live.extend([token_id, *accepted])
        return accepted, logits[: len(accepted) + 1]

    # ----------------------------------------------------------------- the loop
    def start(self, prompt: Prompt, corpus: Sequence[int] = ()) -> Decoding:
        """A new generation of `prompt`; `corpus` (e.g. the previous suggestion's tokens) feeds the drafts."""
        return Decoding.begin(prompt, self.eos_ids, tuple(corpus), self.draft_odds)

    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline, corpus: Sequence[int] = (), *, document: str = "") -> Generation:
        """Greedy decoding of `prompt` until a stop, EOS, max tokens, the deadline or cancellation."""
        return self.resume(self.start(prompt, corpus), cancel, deadline)

    @torch.inference_mode()
    def resume(self, state: Resumable, cancel: CancelToken, deadline: Deadline) -> Generation:
        """Run (or continue) `state` until it finishes or is interrupted. A "deadline" result carries
        `state` as its continuation; resuming later reuses the live slot (or re-prefills what changed)."""
        if not isinstance(state, Decoding):
            raise TypeError(f"not a generation of this engine: {type(state).__name__}")
        timings = Timings()
        if state.logits is None or self._owner is not state:
            started = time.perf_counter()
            logits = self.prefill(state.tokens, cancel, deadline)
            if not state.started:
                state.cached_tokens, state.started = self.last_reused_tokens, True
            timings = timings.add("prefill", (time.perf_counter() - started) * 1000)
            if logits is None:
                return self._result(state, "cancelled" if cancel.cancelled else "deadline", timings)
            state.logits, self._owner = logits, state
        started = time.perf_counter()
        finish = self._decode(state, cancel, deadline)
        timings = timings.add("decode", (time.perf_counter() - started) * 1000)
        return self._result(state, finish, timings)

    def _decode(self, state: Decoding, cancel: CancelToken, deadline: Deadline) -> FinishReason:
        limit = state.limit
        assert state.logits is not None
        logits = state.logits
        while len(state.generated) < limit:
            token_id, finish = state.choose(logits, self.vocabulary, self.tokenizer)
            if finish:
                return finish
            # NOTE: stop before a step that would end past the deadline (the answer is due by then), judged
            # by the last steps' duration.
            if cancel.cancelled or deadline.within_ms(self.timed.cost.estimate_ms(1)):
                state.logits = None  # the last token is not in the live slot yet; resume forwards it
                return "cancelled" if cancel.cancelled else "deadline"
            cost = self.timed.cost
            draft = state.next_draft(self.draft_tokens, cost.estimate_ms if cost.measured else None, deadline.remaining_ms)
            if draft:
                accepted, rows = self.verify_draft(token_id, draft)
                state.count_draft(len(draft), len(accepted))
                finish = state.append_all(accepted, self.tokenizer, rows)
                if finish:
                    return finish
                logits = rows[-1]
            else:
                logits = self.decode_one_token(token_id)
            state.logits = logits
        return "length"

    def _result(self, state: Decoding, finish: FinishReason, timings: Timings) -> Generation:
        continuation = state.continuation
        return Generation(
            tuple(state.generated),
            continuation or "",
            finish,
            len(state.prompt.token_ids),
            timings,
            cached_tokens=state.cached_tokens,
            draft_tokens=state.draft_tokens,
            accepted_draft_tokens=state.accepted_draft_tokens,
            confidence=state.confidence,
            continuation=state if finish == "deadline" else None,
        )
