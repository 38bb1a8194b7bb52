"""How sure the model was of each piece of an answer: the probability of every chosen token (greedy and
draft-verified), where its text starts, and the cuts the editors split a suggestion at."""

from __future__ import annotations

import math

import pytest
import torch

from tabfill.completion.decoding import Decoding, greedy, top_probabilities, top_probability
from tabfill.completion.postprocess import uncertain_cuts
from tabfill.completion.types import Completion, Prompt, StopRule

TEXTS = {1: "ab", 2: "c", 3: "de", 4: "\n", 5: "a"}


class CharTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(TEXTS[i] for i in ids)


class TokensStartingWithA:
    """Healing "a": only the tokens whose text starts with it may come first."""

    def healing_mask(self, remaining: str, vocab_size: int, device: torch.device) -> torch.Tensor:
        return torch.tensor([i in TEXTS and TEXTS[i].startswith(remaining) for i in range(vocab_size)])


def logits_for(choice: int, probability: float, vocab: int = 6) -> torch.Tensor:
    """Logits [V] whose softmax gives `choice` exactly `probability`, the rest shared evenly."""
    rest = (1 - probability) / (vocab - 1)
    probs = torch.full((vocab,), rest, dtype=torch.float64)
    probs[choice] = probability
    return probs.log().float()


def test_top_probability_is_the_softmax_of_the_greedy_choice() -> None:
    logits = torch.tensor([2.0, 0.5, -1.0, 2.0 - math.log(3)])
    expected = torch.softmax(logits, -1).max().item()
    assert top_probability(logits) == pytest.approx(expected, rel=1e-6)
    rows = torch.stack([logits, logits_for(2, 0.9, 4)])
    assert top_probabilities(rows) == pytest.approx([expected, 0.9], rel=1e-5)
    # the CPU shortcut (numpy) agrees with torch: the first of equal maxima, masked (-inf) logits, a float64 input
    masked = torch.tensor([float("-inf"), 1.5, 3.0, 3.0, float("-inf")])
    assert greedy(masked) == (2, pytest.approx(torch.softmax(masked, -1)[2].item(), rel=1e-6))
    assert greedy(masked) == (int(torch.argmax(masked)), pytest.approx(top_probability(masked), rel=1e-6))
    assert greedy(logits.double()) == (0, pytest.approx(expected, rel=1e-6))
    big = torch.randn(2, 50_000) * 4
    assert top_probabilities(big) == pytest.approx([top_probability(big[0]), top_probability(big[1])], rel=1e-5)


def test_each_token_records_its_probability_and_start_healing_excluded() -> None:
    prompt = Prompt((9, 9), 8, StopRule(single_line=True), healing_text="a")
    state = Decoding.begin(prompt, frozenset())
    tokenizer = CharTokenizer()
    # the healed first token: its probability among the tokens the healing allows ("ab" and "a", not "c")
    healed = torch.tensor([0.0, 1.0, 3.0, 0.0, 0.0, 0.0])
    token, finish = state.choose(healed, TokensStartingWithA(), tokenizer)  # "ab" completes the healing "a"
    assert (token, finish) == (1, None)
    token, finish = state.choose(logits_for(2, 0.3), TokensStartingWithA(), tokenizer)  # "c"
    rows = torch.stack([logits_for(3, 0.6), logits_for(5, 0.95), logits_for(0, 0.5)])
    assert state.append_all([3, 5], tokenizer, rows) is None  # drafts "de", "a": probabilities from their rows
    assert state.continuation == "bcdea"
    offsets = [offset for offset, _ in state.confidence]
    probabilities = [p for _, p in state.confidence]
    assert offsets == [0, 1, 2, 4]  # "ab" starts inside the healing text: at 0 of the continuation
    assert probabilities == pytest.approx([math.e / (math.e + 1), 0.3, 0.6, 0.95], rel=1e-5)


def test_uncertain_cuts_start_pieces_where_the_model_was_unsure() -> None:
    confidence = [(0, 0.2), (6, 0.9), (9, 0.4), (14, 0.3)]
    generated = "total = compute(items)\n"
    text = "total = compute(items)"
    assert uncertain_cuts(generated, confidence, text, 0.5) == (9, 14)  # never at 0: something is always shown
    assert uncertain_cuts(generated, confidence, text, 0.35) == (14,)
    assert uncertain_cuts(generated, confidence, text, 0.0) == ()
    # post-processing changed the text after offset 12: no cut past what it shares with the generation
    assert uncertain_cuts(generated, confidence, "total = comp)", 0.5) == (9,)
    assert uncertain_cuts(generated, confidence, "", 0.5) == ()
    completion = Completion(text, 0, cuts=(9, 14))
    assert completion.pieces() == ["total = c", "omput", "e(items)"]
    assert Completion(text, 0).pieces() == [text]
