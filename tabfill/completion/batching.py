"""Continuous batching: many greedy generations share one model, one batched forward per step.

`BatchedEngine.step()` runs one `forward_rows` (kernels/batch.py) over a pool of KV slots: every decoding
row's next token (with its prompt-lookup draft, verified per row) plus at most one prefill chunk, so a cold
1k-token prompt delays the other rows by one chunk per step, never by its whole prefill. Requests join
(`add`) and leave (`cancel`, or a stop) between steps; waiting prompts are prefilled in `priority` order
(smaller first: the deadline). The per-token rules — stop rules, EOS, token healing, drafts — are the
single-stream `Engine`'s (completion/decoding.py), so a row's tokens equal `Engine.generate`'s up to float
ties. A row's prompt prefix comes from the prefix store under its request's salt (tenant) and its verified
KV goes back there when it leaves, so tenants never share a hit.

Single thread: the engine server's scheduler thread calls add / cancel / step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tabfill.completion.batch_types import BatchEvent, BatchRequest
from tabfill.completion.decoding import DRAFT_TOKENS, Decoding, DraftOdds, Vocabulary, eos_ids
from tabfill.completion.forward_cost import MIN_CHUNK_TOKENS, ForwardCost
from tabfill.completion.models import LoadedModel
from tabfill.completion.prefix_cache import PrefixCache, common_prefix
from tabfill.kernels import steps
from tabfill.kernels.batch import BatchedDecoder, RowInput
from tabfill.kernels.decoder import LeanDecoder

log = logging.getLogger(__name__)

# NOTE: a step that carries a prefill chunk costs about one chunk's forward more than a decode step: the
# bound on how long one cold prompt delays everyone's next token. A fixed width cannot hold that bound for
# every model and machine (128 tokens: ~30 ms of fp32 SmolLM2 on a GPU-less laptop of 8 cores, ~420 ms on
# this 2-core box over the GGUF's blocks), so with `prefill_budget_ms` the chunk is the widest whose step is
# expected to fit the budget (ForwardCost, measured on the engine's own steps), at most PREFILL_CHUNK_TOKENS.
PREFILL_CHUNK_TOKENS = 128
PREFILL_TOKEN_MS_GUESS = 4.0  # a prompt token's share of a 16-token chunk before the engine measured one (SmolLM2, 2 cores)

FINISHES = ("stop", "length", "eos", "cancelled", "error")
COUNTERS = (
    "steps", "step_ms", "decode_rows", "draft_tokens", "prefill_tokens", "prefill_rows",
    "prompts", "prompt_tokens", "slot_kept_tokens", "store_tokens", "cancelled_prefilling",
)


@dataclass(eq=False)
class _Row:
    request: BatchRequest
    state: Decoding
    order: int  # arrival order: ties of priority go first come, first served
    slot: int = -1
    written: int = 0  # slot positions holding verified KV (prompt, then chosen and accepted tokens)
    pending: int | None = None  # the chosen token not yet forwarded (decoding rows only)
    draft: list[int] = field(default_factory=list)
    sent_tokens: int = 0
    sent_text: str = ""
    kept_hint: int = 0  # prompt tokens a free slot held when the row arrived (what it will not prefill)

    @property
    def prefilling(self) -> bool:
        return self.pending is None


class BatchedEngine:
    """Greedy generation for many requests at once over a `BatchedDecoder`'s slots. Not thread-safe."""

    def __init__(
        self,
        loaded_model: Any,
        tokenizer: Any,
        device: str,
        *,
        slots: int,
        max_tokens: int,
        prefix_cache: PrefixCache | None,
        decoder: LeanDecoder | None = None,
        prefill_chunk: int = PREFILL_CHUNK_TOKENS,
        prefill_budget_ms: float | None = None,
    ) -> None:
        """`loaded_model`: a transformers causal LM (or a `LoadedModel`); the lean decoder is built from it
        unless `decoder` (already built from that model) is given. `max_tokens`: positions per slot.
        `prefill_budget_ms`: size prefill chunks to steps of about this long (None: always `prefill_chunk`)."""
        model = loaded_model.model if isinstance(loaded_model, LoadedModel) else loaded_model
        if decoder is None:
            # NOTE: no single-sequence cache next to the slot pool (SmolLM2: 45 KB a token, ~90 MB at 2048
            # tokens): the RSS is the weights plus the pool.
            decoder = _decoder(model, max_tokens)
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.batch = BatchedDecoder(decoder, slots=slots, max_tokens=max_tokens)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.prefix_cache = prefix_cache
        self.eos_ids = eos_ids(model, tokenizer)
        self.vocabulary = Vocabulary(tokenizer, decoder.vocab_size)
        self.draft_tokens = DRAFT_TOKENS
        self.draft_odds = DraftOdds()  # how often each kind of draft is accepted, over every row here
        self.prefill_chunk = prefill_chunk
        self.prefill_budget_ms = prefill_budget_ms
        self.cost = ForwardCost()  # what a step of n tokens takes here (observed every step)
        self.max_tokens = max_tokens
        self._rows: dict[str, _Row] = {}
        self._free: list[int] = list(range(slots))
        # What a free slot still holds from its last row: (salt, tokens whose KV is in positions 0.., when it
        # left). A request that starts where its document's last one left off (the next keystroke) takes that
        # slot and prefills only what changed, to the token: the prefix store keeps whole blocks of 32 tokens,
        # so it alone re-prefills up to 32 tokens a keystroke (~120 ms on this CPU, past any typing deadline).
        self._held: dict[int, tuple[bytes, tuple[int, ...], int]] = {}
        self._left = 0
        self._arrivals = 0
        self._events: list[BatchEvent] = []  # produced between steps (cancellations), returned by the next step
        # What the steps did (read by the engine's status from another thread: fixed keys, int values)
        self.counters = dict.fromkeys(COUNTERS, 0)

    # ------------------------------------------------------------------ requests in and out
    def add(self, request: BatchRequest) -> None:
        """Queue a request; it is prefilled when it is the most urgent waiting one and a slot is free.
        Raises ValueError (and changes nothing) for bad token ids, a prompt that does not fit a slot with
        its max_new_tokens, a duplicate id or a priority that is not a number."""
        prompt = request.prompt
        if not request.id or request.id in self._rows:
            raise ValueError(f"request id {request.id!r} is empty or already running")
        ids = prompt.token_ids
        if not ids:
            raise ValueError("the prompt has no tokens")
        vocab = self.batch.vocab_size
        bad = next((t for t in (*ids, *request.corpus) if type(t) is not int or not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad!r} is outside the vocabulary (0..{vocab - 1})")
        if not 1 <= prompt.max_new_tokens <= self.max_tokens:
            raise ValueError(f"max_new_tokens {prompt.max_new_tokens} outside 1..{self.max_tokens}")
        needed = len(ids) + prompt.max_new_tokens + (1 if prompt.healing_text else 0)
        if needed > self.max_tokens:
            raise ValueError(
                f"prompt of {len(ids)} tokens + max_new_tokens {prompt.max_new_tokens} needs {needed} positions; "
                f"a slot holds {self.max_tokens}"
            )
        if not math.isfinite(request.priority):
            raise ValueError(f"priority must be a finite number, got {request.priority!r}")
        state = Decoding.begin(prompt, self.eos_ids, request.corpus, self.draft_odds)
        row = _Row(request, state, self._arrivals)
        row.kept_hint = max((common_prefix(held, ids) for salt, held, _ in self._held.values() if salt == request.salt), default=0)
        self._rows[request.id] = row
        self._arrivals += 1

    def cancel(self, request_id: str) -> None:
        """Drop a request now: its slot is free for the next step; the next `step` reports it "cancelled".
        Unknown ids (already finished) are ignored."""
        row = self._rows.get(request_id)
        if row is not None:
            self._events.append(self._finish(row, "cancelled"))

    @property
    def idle(self) -> bool:
        return not self._rows and not self._events

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        return sum(1 for row in self._rows.values() if row.slot >= 0)

    @property
    def queued(self) -> int:
        return sum(1 for row in self._rows.values() if row.slot < 0)

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = dict(self.batch.describe())
        described["prefill_chunk_tokens"] = self.prefill_chunk
        described["prefill_budget_ms"] = self.prefill_budget_ms
        described["step_cost"] = self.cost.describe()
        described["drafts"] = f"prompt lookup, up to {self.draft_tokens} tokens per row per step"
        described["draft_odds"] = self.draft_odds.describe()
        store = self.prefix_cache
        described["prefix_cache"] = (
            f"{store.max_bytes // 2**20} MiB, blocks of {store.block_tokens} tokens, salted per tenant" if store else "off"
        )
        described["rows"] = {"active": self.active, "queued": self.queued}
        return described

    # ------------------------------------------------------------------ the step
    @torch.inference_mode()
    def step(self) -> list[BatchEvent]:
        """One batched forward: every decoding row's token (+ draft) and one prefill chunk's width of prompt
        tokens (the most urgent prompt's, the next one's with what is left of the width, ...).
        Returns the events of this step (and of cancellations since the last one)."""
        events, self._events = self._events, []
        decoding = [row for row in self._rows.values() if not row.prefilling]
        if len(decoding) > 1 and self.batch.c_rows is not None:
            # NOTE: on the quantized CPU path a token costs about the same compute in a draft as in a decode
            # row (the kernels are compute-bound), and a draft row leaves the C rows call for the torch
            # forward: with several rows decoding, drafts cost more than the steps they save
            for row in decoding:
                row.draft = []
        inputs = [RowInput(row.slot, [row.pending, *row.draft], row.written, bool(row.draft)) for row in decoding]  # type: ignore[list-item]
        # NOTE: the prefill tokens of a step are one chunk's width, shared by the most urgent prompts in turn:
        # a keystroke's prompt differs from its document's last one by a few tokens (its slot holds the rest),
        # so several editors' keystrokes are prefilled in one step instead of one a step behind each other
        prefills: list[tuple[_Row, list[int]]] = []
        width = self._chunk_width(sum(len(row.token_ids) for row in inputs)) if any(r.prefilling for r in self._rows.values()) else 0
        while width > 0 and (prefill := self._next_prefill({id(row) for row, _ in prefills})) is not None:
            chunk = list(prefill.state.prompt.token_ids[prefill.written : prefill.written + width])
            prefills.append((prefill, chunk))
            inputs.append(RowInput(prefill.slot, chunk, prefill.written))
            width -= len(chunk)
        if not inputs:
            return events
        try:
            started = time.perf_counter()
            outputs = self.batch.forward_rows(inputs)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            self.cost.observe(sum(len(row.token_ids) for row in inputs), elapsed_ms)
        except Exception:  # a kernel failure ends this step's rows, never the engine
            log.exception("batched forward failed; ending the %d rows of this step", len(inputs))
            return events + [self._finish(row, "error") for row in decoding + [row for row, _ in prefills]]
        counters = self.counters
        counters["steps"] += 1
        counters["step_ms"] += round(elapsed_ms)
        counters["decode_rows"] += len(decoding)
        counters["draft_tokens"] += sum(len(row.draft) for row in decoding)
        counters["prefill_rows"] += len(prefills)
        counters["prefill_tokens"] += sum(len(chunk) for _, chunk in prefills)
        for row, logits in zip(decoding, outputs):
            events.extend(self._after_decode(row, logits))
        for (prefill, chunk), logits in zip(prefills, outputs[len(decoding) :]):
            prefill.written += len(chunk)
            if prefill.written == len(prefill.state.prompt.token_ids):
                events.extend(self._next_token(prefill, logits))
        return events

    def _chunk_width(self, decode_tokens: int) -> int:
        """The prefill chunk of a step that also carries `decode_tokens` decode/draft tokens."""
        if self.prefill_budget_ms is None or not self.cost.measured:
            return self.prefill_chunk
        # the prefill gets at least as long as the decode rows take (else a busy engine prefills a few tokens
        # a step and new prompts wait for hundreds of steps)
        budget = max(self.prefill_budget_ms, 2 * self.cost.estimate_ms(decode_tokens))
        whole = self.cost.chunk_tokens(budget, self.prefill_chunk + decode_tokens)
        return max(MIN_CHUNK_TOKENS, min(self.prefill_chunk, whole - decode_tokens))

    def _after_decode(self, row: _Row, logits: torch.Tensor) -> list[BatchEvent]:
        state = row.state
        draft, row.draft = row.draft, []
        row.written += 1
        if draft:
            accepted = steps.accepted_run(draft, logits)
            state.count_draft(len(draft), accepted)
            row.written += accepted
            finish = state.append_all(draft[:accepted], self.tokenizer, logits)
            logits = logits[accepted]
            if finish:
                return [self._finish(row, finish)]
        return self._next_token(row, logits)

    def _next_token(self, row: _Row, logits: torch.Tensor) -> list[BatchEvent]:
        """Choose the row's next token from `logits` [V]; it is forwarded (with a draft) in the next step."""
        state = row.state
        if len(state.generated) >= state.limit:
            return [self._finish(row, "length")]
        token_id, finish = state.choose(logits, self.vocabulary, self.tokenizer)
        if finish:
            return [self._finish(row, finish)]
        if len(state.generated) >= state.limit:  # the last token: no forward needed for it
            return [self._finish(row, "length")]
        row.pending = token_id
        # NOTE: judged by what a step of the row's width alone costs; in a full step a draft token costs about
        # as much as another row's decode token (the products are compute-bound at 8 rows here), so the
        # lone-row figure is what its latency gains against.
        row.draft = state.next_draft(self.draft_tokens, self.cost.estimate_ms if self.cost.measured else None)
        return [self._event(row, None)]

    # ------------------------------------------------------------------ slots and the prefix store
    def _next_prefill(self, taken: Collection[int] = ()) -> _Row | None:
        """The most urgent row still prefilling (not in `taken`: ids of rows this step already carries); a
        waiting one gets a slot (and its cached prefix) first."""
        candidates = [row for row in self._rows.values() if row.prefilling and id(row) not in taken and (row.slot >= 0 or self._free)]
        if not candidates:
            return None
        # NOTE: the most urgent is the one whose prefill would end first if started when its priority says
        # (its deadline): priority + its remaining prompt tokens' time. By the deadline alone, a busy engine
        # (8 editors typing on 2 cores) gave each step's chunk to whichever document's user paused longest,
        # moved on at the next keystroke, and ended 8 of 940 prefills in 30 s; counting the work left, the
        # documents whose slot already holds their prompt answer first, and a cold one ages into its turn
        # (the scheduler keeps an unanswered document's earliest priority across its keystrokes)
        per_token_s = self._prefill_token_ms() / 1000.0
        row = min(candidates, key=lambda r: (r.request.priority + per_token_s * self._remaining(r), r.order))
        if row.slot < 0:
            row.slot, kept = self._take_slot(row)
            row.written = row.state.cached_tokens = self._load_prefix(row, kept)
            counters = self.counters
            counters["prompts"] += 1
            counters["prompt_tokens"] += len(row.state.prompt.token_ids)
            counters["slot_kept_tokens"] += kept
            counters["store_tokens"] += row.written - kept
            log.debug("request %s: slot %d, prompt %d tokens, %d kept in the slot, %d from the store (priority %.3f)",
                      row.request.id, row.slot, len(row.state.prompt.token_ids), kept, row.written - kept, row.request.priority)
        return row

    def _remaining(self, row: _Row) -> int:
        """Prompt tokens `row` has still to prefill (expected: from the slot it would take, when waiting)."""
        return len(row.state.prompt.token_ids) - (row.written if row.slot >= 0 else row.kept_hint)

    def _prefill_token_ms(self) -> float:
        """What a prompt token costs in a prefill chunk of MIN_CHUNK_TOKENS * 2 here (a guess before measured)."""
        width = 2 * MIN_CHUNK_TOKENS
        return self.cost.estimate_ms(width) / width if self.cost.measured else PREFILL_TOKEN_MS_GUESS

    def _take_slot(self, row: _Row) -> tuple[int, int]:
        """A free slot for `row`, and how many leading tokens of its prompt that slot already holds: the one
        holding the longest prefix of it (same salt only), else the one left longest ago."""
        ids, salt = row.state.prompt.token_ids, row.request.salt
        best, kept = None, 0
        for slot in self._free:
            held = self._held.get(slot)
            if held is not None and held[0] == salt:
                common = common_prefix(held[1], ids)
                if common > kept:
                    best, kept = slot, common
        if best is None:
            best = min(self._free, key=lambda slot: (self._held[slot][2] if slot in self._held else 0, slot))  # stamps start at 1
        self._free.remove(best)
        self._held.pop(best, None)
        return best, min(kept, len(ids) - 1)  # at least the last prompt token runs, for its logits

    def _load_prefix(self, row: _Row, kept: int) -> int:
        """The row's slot already holds `kept` tokens of its prompt; copy a longer cached prefix (its salt
        only) from the prefix store when there is one. At least the last prompt token is left to run."""
        store = self.prefix_cache
        ids = row.state.prompt.token_ids
        if store is None:
            return kept
        match = store.match(ids[: len(ids) - 1], row.request.salt)
        if match.num_cached_tokens <= kept:
            return kept
        kv = store.load(match)
        if kv is None:
            return kept
        self.batch.write_kv(row.slot, 0, kv)
        return match.num_cached_tokens

    def _finish(self, row: _Row, finish: str) -> BatchEvent:
        """End a row: keep its verified KV in the prefix store (its salt), free its slot, report the rest."""
        self._rows.pop(row.request.id, None)
        if finish == "cancelled" and row.prefilling:
            self.counters["cancelled_prefilling"] += 1
        log.debug("request %s: %s in slot %d, %d of %d prompt tokens written, %d generated",
                  row.request.id, finish, row.slot, row.written, len(row.state.prompt.token_ids), len(row.state.generated))
        if row.slot >= 0:
            # NOTE: a draft token after a stop (an EOS, or the text the stop rule cut) was forwarded but never
            # joined the generation: only the positions of tokens the generation holds count as verified
            tokens = row.state.tokens
            written = min(row.written, len(tokens))
            store = self.prefix_cache
            if store is not None and finish != "error" and written >= store.block_tokens:
                slot = row.slot
                store.commit(tokens, written, lambda s, e: self.batch.read_kv(slot, s, e), row.request.salt)
            if finish != "error":  # NOTE: a failed forward may have left anything in the slot
                self._left += 1
                self._held[row.slot] = (row.request.salt, tuple(tokens[:written]), self._left)
            self._free.append(row.slot)
            row.slot = -1
        return self._event(row, finish)

    def _event(self, row: _Row, finish: str | None) -> BatchEvent:
        state = row.state
        text = _settled_text(state, finish is not None)
        if not text.startswith(row.sent_text):
            log.warning("request %s: decoded text changed before what was already sent", row.request.id)
            text = row.sent_text
        new_tokens = tuple(state.generated[row.sent_tokens :])
        confidence = state.confidence[row.sent_tokens :]
        delta = text[len(row.sent_text) :]
        row.sent_tokens, row.sent_text = len(state.generated), text
        prompt_tokens = len(state.prompt.token_ids)
        return BatchEvent(row.request.id, new_tokens, delta, finish, state.cached_tokens, prompt_tokens, confidence=confidence)


def _decoder(model: Any, max_tokens: int) -> LeanDecoder:
    """The lean decoder of a transformers model, or of a GGUF's own blocks (`GgufWeights`: the quantized CPU
    path, whose kernels unpack each weight block once for all the batch's decode rows)."""
    from tabfill.completion.gguf_models import GgufWeights

    if isinstance(model, GgufWeights):
        from tabfill.kernels.gguf_decoder import decoder_from_gguf

        return decoder_from_gguf(model.path, model.config, max_tokens=max_tokens, cache_tokens=0)
    return LeanDecoder.from_hf(model, max_tokens=max_tokens, cache_tokens=0)


def _settled_text(state: Decoding, finished: bool) -> str:
    """The continuation that no later token can change. While running it holds back an incomplete
    character and trailing spaces (decoding may merge them with what follows) and, for multi-line
    completions, the last unfinished line (the block rule may still drop it, with its newline)."""
    text = state.continuation or ""
    if finished:
        return text
    text = text.rstrip(" \ufffd")
    if not state.prompt.stop.single_line:
        newline = text.rfind("\n")
        if newline >= 0:
            text = text[:newline]
    return text


def generate_all(engine: BatchedEngine, requests: Sequence[BatchRequest], max_steps: int = 100_000) -> dict[str, list[BatchEvent]]:
    """Run `requests` (all added now) to the end; their events by id. For tests and the bench."""
    for request in requests:
        engine.add(request)
    events: dict[str, list[BatchEvent]] = {request.id: [] for request in requests}
    for _ in range(max_steps):
        if engine.idle:
            return events
        for event in engine.step():
            events[event.id].append(event)
    raise RuntimeError(f"requests still running after {max_steps} steps")


__all__ = ["FINISHES", "BatchEvent", "BatchRequest", "BatchedEngine", "generate_all"]
