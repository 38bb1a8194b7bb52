"""One greedy generation's state and its per-token rules, shared by the single-stream `Engine` and the
continuous-batching `BatchedEngine`: stop rules, EOS, token healing, prompt-lookup drafts and their
verification. Neither the model nor the KV slot lives here: the caller forwards tokens and hands back logits.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tabfill.completion.drafts import NgramDrafter
from tabfill.completion.postprocess import stop_index
from tabfill.completion.types import FinishReason, Prompt

log = logging.getLogger(__name__)

DRAFT_TOKENS = 6  # at most this many speculative tokens verified per forward (prompt lookup)
# What a forward of w tokens costs, relative to one token, before the engine has measured its own (a guess
# between a GPU, where width is nearly free, and these CPUs: SmolLM2's GGUF C step 1.3x at 2 tokens, 2.3x at 4).
GUESSED_WIDTH_COST = 0.45
# Each verification counts for this much less afterwards; and each proposal not verified (its odds said no)
# pulls the counts towards the prior by as much, so drafting that stopped for bad odds is tried again later.
ODDS_DECAY = 0.97
ODDS_PRIOR = (1.0, 1.0)  # (accepted, rejected) pseudo-counts: p = 0.5 with no evidence


class DraftOdds:
    """How likely the model is to accept a prompt-lookup draft, learnt from the verifications of every
    generation on one engine, per kind of match (n-gram length, found in the previous suggestion or in the
    sequence itself).

    A draft token is accepted only when all before it were, so accepted runs are modelled as geometric: each
    next draft token is accepted with probability p. A verification of k tokens that accepted a of them is a
    successes and, when a < k, one failure; p is their (decayed) ratio."""

    def __init__(self) -> None:
        self._counts: dict[tuple[int, bool], tuple[float, float]] = {}

    def p(self, kind: tuple[int, bool]) -> float:
        accepted, rejected = self._counts.get(kind, ODDS_PRIOR)
        return accepted / (accepted + rejected)

    def observe(self, kind: tuple[int, bool], proposed: int, accepted: int) -> None:
        old_accepted, old_rejected = self._counts.get(kind, ODDS_PRIOR)
        self._counts[kind] = (
            ODDS_DECAY * old_accepted + accepted,
            ODDS_DECAY * old_rejected + (1.0 if accepted < proposed else 0.0),
        )

    def skipped(self, kind: tuple[int, bool]) -> None:
        """A proposal of this kind was not verified: its counts drift back towards the prior."""
        counts = self._counts.get(kind)
        if counts is not None:
            prior_accepted, prior_rejected = ODDS_PRIOR
            self._counts[kind] = (
                prior_accepted + ODDS_DECAY * (counts[0] - prior_accepted),
                prior_rejected + ODDS_DECAY * (counts[1] - prior_rejected),
            )

    def describe(self) -> dict[str, float]:
        return {f"{n}-gram{' (previous suggestion)' if corpus else ''}": round(self.p((n, corpus)), 3) for n, corpus in sorted(self._counts)}


def draft_length(p: float, cost_ms: Callable[[int], float] | None, proposed: int, budget_ms: float | None = None) -> int:
    """How many of `proposed` draft tokens to verify: the k (0 = a plain one-token step) with the most tokens
    expected per millisecond, (1 + p + ... + p^k) / cost(1 + k), whose forward fits `budget_ms` (None: no
    limit). `cost_ms(w)`: what a forward of w tokens costs here (None: not measured yet, GUESSED_WIDTH_COST of
    a step per extra token, and no time to judge `budget_ms` by)."""
    cost = cost_ms if cost_ms is not None else (lambda width: 1.0 + GUESSED_WIDTH_COST * (width - 1))
    if cost_ms is None:
        budget_ms = None
    best, best_rate = 0, 1.0 / max(cost(1), 1e-9)
    expected = term = 1.0
    for k in range(1, proposed + 1):
        term *= p
        expected += term
        ms = cost(1 + k)
        if budget_ms is not None and ms > budget_ms:
            break
        if expected / max(ms, 1e-9) > best_rate:
            best, best_rate = k, expected / max(ms, 1e-9)
    return best


def strip_healing(text: str, healing: str) -> str | None:
    """The continuation after the healing text, or None while the healing text is not complete."""
    if not healing:
        return text
    if text.startswith(healing):
        return text[len(healing) :]
    return None


@dataclass(eq=False)
class Decoding:
    """One generation in progress. Engine thread only; a deadline hands it back for `Engine.resume`."""

    prompt: Prompt
    stop_ids: frozenset[int]
    drafter: NgramDrafter
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded `generated`, healing text included
    logits: torch.Tensor | None = None  # next-token logits [V]; valid only while the engine's live slot is ours
    started: bool = False  # its first prefill ran (`cached_tokens` counts the reuse of that one)
    cached_tokens: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    # Each generated token's probability when it was chosen (softmax of its logits), and where its text
    # starts in `text`: the confidence of each piece of the answer (see `confidence`).
    probabilities: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    # NOTE: a draft is verified in a wider forward, which costs more the wider it is (on a CPU, a draft token
    # costs about half a one-token step), so how many of the proposed tokens are verified is chosen from the
    # measured cost of each width and the odds of acceptance (`draft_length`), shared by the engine's
    # generations.
    odds: DraftOdds = field(default_factory=DraftOdds)
    draft_kind: tuple[int, bool] = (0, False)  # the kind of match behind the draft being verified

    @classmethod
    def begin(cls, prompt: Prompt, eos_ids: frozenset[int], corpus: tuple[int, ...] | list[int] = (), odds: DraftOdds | None = None) -> Decoding:
        """A new generation of `prompt`; `corpus` (e.g. the previous suggestion's tokens) feeds the drafts,
        `odds` (the engine's) say how likely they are to be accepted."""
        return cls(prompt, eos_ids | prompt.stop_token_ids, NgramDrafter(prompt.token_ids, corpus), odds=odds or DraftOdds())

    @property
    def tokens(self) -> list[int]:
        return list(self.prompt.token_ids) + self.generated

    @property
    def limit(self) -> int:
        """Tokens it may generate: max_new_tokens, plus the healed token."""
        return self.prompt.max_new_tokens + (1 if self.prompt.healing_text else 0)

    @property
    def continuation(self) -> str | None:
        return strip_healing(self.text, self.prompt.healing_text)

    @property
    def confidence(self) -> tuple[tuple[int, float], ...]:
        """(offset in `continuation` where a generated token's text starts, its probability) per token; a
        token that completes the healing text starts at 0."""
        healed = len(self.prompt.healing_text)
        return tuple((max(0, start - healed), p) for start, p in zip(self.starts, self.probabilities))

    def append(self, token_id: int, tokenizer: Any, probability: float = 1.0) -> FinishReason | None:
        """Add a chosen token; "eos" for a stop id (not added), "stop" when the stop rule cuts the text."""
        if token_id in self.stop_ids:
            return "eos"
        self.starts.append(len(self.text))
        self.probabilities.append(probability)
        self.generated.append(token_id)
        self.drafter.extend((token_id,))
        self.text = tokenizer.decode(self.generated, skip_special_tokens=False)
        continuation = self.continuation
        if continuation is not None:
            cut = stop_index(continuation, self.prompt.stop)
            if cut is not None:
                self.text = self.prompt.healing_text + continuation[:cut]
                return "stop"
        return None

    def choose(self, logits: torch.Tensor, vocabulary: Vocabulary, tokenizer: Any) -> tuple[int, FinishReason | None]:
        """Pick the next token greedily from `logits` [V] (healing-constrained) and append it.
        Returns (token id, finish): finish None keeps going; the token must then be forwarded next."""
        healing = self.prompt.healing_text
        if healing and self.continuation is None:
            if not healing.startswith(self.text):
                # The decoded text left the healing text (a tokenizer whose lone tokens decode without
                # their leading space): give up rather than return text that does not fit the prefix.
                self.text = healing
                return -1, "stop"
            # NOTE: token healing — the prompt's last token was removed; only tokens consistent
            # with re-producing its text may come first.
            remaining = healing[len(self.text) :]
            logits = logits.masked_fill(~vocabulary.healing_mask(remaining, logits.shape[-1], logits.device), float("-inf"))
        token_id, probability = greedy(logits)
        return token_id, self.append(token_id, tokenizer, probability)

    def next_draft(self, most: int, cost_ms: Callable[[int], float] | None, budget_ms: float | None = None) -> list[int]:
        """Draft tokens to verify after the chosen token (empty: a plain one-token step): up to `most` proposed
        by prompt lookup, as many of them as `draft_length` says pay for their wider forward."""
        budget = min(most, self.limit - len(self.generated))
        if budget <= 0 or self.continuation is None:
            return []
        draft = self.drafter.propose(budget)
        if not draft:
            return []
        kind = self.drafter.kind
        keep = draft_length(self.odds.p(kind), cost_ms, len(draft), budget_ms)
        if not keep:
            self.odds.skipped(kind)
        self.draft_kind = kind
        return draft[:keep]

    def count_draft(self, proposed: int, accepted: int) -> None:
        """A verified draft: its statistics, and what it says of the odds of its kind."""
        self.draft_tokens += proposed
        self.accepted_draft_tokens += accepted
        self.odds.observe(self.draft_kind, proposed, accepted)

    def append_all(self, token_ids: list[int], tokenizer: Any, logits: torch.Tensor) -> FinishReason | None:
        """`append` each of `token_ids` (accepted draft tokens, greedy choices from the rows of `logits`
        [>= len(token_ids), V]) until one finishes the generation."""
        probabilities = top_probabilities(logits[: len(token_ids)]) if token_ids else []
        for token_id, probability in zip(token_ids, probabilities):
            finish = self.append(token_id, tokenizer, probability)
            if finish:
                return finish
        return None


def _cpu_values(logits: torch.Tensor) -> np.ndarray | None:
    """`logits` as a numpy array when they are fp32 on the CPU (reduced there by numpy: see `greedy`), else None."""
    return logits.detach().contiguous().numpy() if logits.device.type == "cpu" and logits.dtype == torch.float32 else None


def greedy(logits: torch.Tensor) -> tuple[int, float]:
    """The greedy choice of `logits` [V] (the first of equal maxima, as torch.argmax) and its probability
    under softmax. NOTE: on CPU through numpy: torch's reductions over one 49,152-logit vector wake its
    thread pool (argmax 43 µs, logsumexp 233 µs with 2 threads here, against numpy's 3 and 35 µs), which
    was ~5 % of a SmolLM2 decode step."""
    values = _cpu_values(logits)
    if values is not None:
        index = int(values.argmax())
        top = values[index]
        if np.isfinite(top):
            return index, 1.0 / float(np.exp(values - top).sum())
    return int(torch.argmax(logits).item()), top_probability(logits)


def top_probability(logits: torch.Tensor) -> float:
    """Probability of the greedy choice under softmax(`logits` [V])."""
    logits = logits.float()
    return float(torch.exp(logits.max() - torch.logsumexp(logits, dim=-1)))


def top_probabilities(logits: torch.Tensor) -> list[float]:
    """`top_probability` of each row of `logits` [K, V] (numpy on CPU, as `greedy`)."""
    values = _cpu_values(logits)
    if values is not None:
        top = values.max(axis=-1, keepdims=True)
        if np.isfinite(top).all():
            return [float(p) for p in 1.0 / np.exp(values - top).sum(axis=-1)]
    logits = logits.float()
    return torch.exp(logits.max(dim=-1).values - torch.logsumexp(logits, dim=-1)).tolist()


class Vocabulary:
    """Each id's text in context, for token healing (decoded once, lazily)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._texts: list[str] | None = None
        self._sorted: tuple[list[str], list[int]] | None = None

    def texts(self) -> list[str]:
        """The text each vocabulary id decodes to in context (leading spaces kept)."""
        if self._texts is None:
            started = time.perf_counter()
            self._texts = _decode_vocabulary(self.tokenizer, self.vocab_size)
            log.debug("decoded vocabulary in %.0f ms", (time.perf_counter() - started) * 1000)
        return self._texts

    def sorted(self) -> tuple[list[str], list[int]]:
        """The usable token texts sorted, with their ids (built once)."""
        if self._sorted is None:
            pairs = sorted((text, i) for i, text in enumerate(self.texts()) if text and "\ufffd" not in text)
            self._sorted = ([text for text, _ in pairs], [i for _, i in pairs])
        return self._sorted

    def healing_mask(self, remaining: str, vocab_size: int, device: torch.device) -> torch.Tensor:
        """Boolean mask [V] of tokens consistent with having to produce `remaining` next: tokens whose text
        starts with it (a range of the sorted vocabulary) or is a prefix of it (one lookup per length)."""
        texts, ids = self.sorted()
        low = bisect_left(texts, remaining)
        high = bisect_left(texts, remaining + "\U0010ffff", low)
        allowed = ids[low:high]
        for end in range(1, len(remaining)):
            at = bisect_left(texts, remaining[:end])
            while at < len(texts) and texts[at] == remaining[:end]:
                allowed.append(ids[at])
                at += 1
        mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        allowed = [i for i in allowed if i < vocab_size]
        if allowed:
            mask[torch.tensor(allowed, device=device)] = True
        return mask


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: list[int] = []
    for candidate in (getattr(model.generation_config, "eos_token_id", None), model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            ids.append(candidate)
        elif isinstance(candidate, (list, tuple)):
            ids.extend(int(c) for c in candidate)
    return frozenset(ids)


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
