"""Prompt-lookup drafts: what the drafter proposes, and how many of its tokens are worth verifying."""

from __future__ import annotations

import pytest

from tabfill.completion.decoding import GUESSED_WIDTH_COST, ODDS_PRIOR, Decoding, DraftOdds, draft_length
from tabfill.completion.drafts import NgramDrafter
from tabfill.completion.types import Prompt, StopRule

# what the GGUF C step of SmolLM2-135M took here for 1..7 tokens (ms): a draft token costs ~40 % of a step
CPU_COST = {1: 5.5, 2: 7.3, 3: 10.4, 4: 12.5, 5: 14.8, 6: 17.3, 7: 20.0}


def test_the_drafter_says_which_match_proposed_its_draft() -> None:
    drafter = NgramDrafter([1, 2, 3, 4, 5, 9, 9, 1, 2, 3, 4], corpus=[7, 8, 6])
    assert drafter.propose(3) == [5, 9, 9]
    assert drafter.kind == (4, False)  # the 4-gram (1, 2, 3, 4) earlier in the sequence
    drafter = NgramDrafter([0, 7, 8], corpus=[7, 8, 6, 5])
    assert drafter.propose(4) == [6, 5]
    assert drafter.kind == (2, True)  # (7, 8) in the previous suggestion
    assert NgramDrafter([1, 2, 3]).propose(4) == []
    assert NgramDrafter([1, 2, 3]).kind == (0, False)


@pytest.mark.parametrize(
    ("p", "expected"),
    [(0.0, 0), (0.2, 0), (0.5, 1), (0.75, 1), (0.9, 4), (0.95, 5)],
)
def test_draft_length_verifies_as_many_tokens_as_pay_for_their_wider_forward(p: float, expected: int) -> None:
    assert draft_length(p, CPU_COST.__getitem__, 6) == expected


def test_draft_length_keeps_the_forward_within_the_time_left_and_the_proposal() -> None:
    assert draft_length(0.95, CPU_COST.__getitem__, 6, budget_ms=13.0) == 3  # 4 tokens: 12.5 ms
    assert draft_length(0.95, CPU_COST.__getitem__, 6, budget_ms=5.0) == 0
    assert draft_length(0.95, CPU_COST.__getitem__, 2) == 2
    # where width is almost free (a GPU), any likely token is worth it
    assert draft_length(0.5, lambda width: 10.0 + 0.01 * width, 6) == 6


def test_draft_length_guesses_the_cost_before_the_engine_measured_it() -> None:
    assert 0 < GUESSED_WIDTH_COST < 1
    assert draft_length(0.1, None, 6) == 0
    assert draft_length(0.9, None, 6) > 2
    assert draft_length(0.9, None, 6, budget_ms=2.0) == draft_length(0.9, None, 6)  # a guess has no milliseconds


def test_draft_odds_learn_from_verifications_and_forget_towards_the_prior() -> None:
    odds = DraftOdds()
    kind = (2, False)
    assert odds.p(kind) == ODDS_PRIOR[0] / sum(ODDS_PRIOR)
    for _ in range(30):
        odds.observe(kind, 4, 0)  # rejected outright
    low = odds.p(kind)
    assert low < 0.1
    assert odds.p((4, True)) == 0.5  # another kind keeps its own odds
    for _ in range(200):
        odds.skipped(kind)  # not verified for a long while: tried again
    assert 0.45 < odds.p(kind) <= 0.5
    for _ in range(30):
        odds.observe(kind, 3, 3)
    assert odds.p(kind) > 0.95
    assert "2-gram" in odds.describe()


def test_a_generation_verifies_only_the_drafts_its_odds_pay_for_and_counts_them() -> None:
    odds = DraftOdds()
    tokens = (1, 2, 3, 4, 5, 6, 1, 2)  # the tail (1, 2) occurred before: a proposal of 6 tokens
    state = Decoding.begin(Prompt(tokens, 16, StopRule()), frozenset(), odds=odds)
    for _ in range(40):
        odds.observe((2, False), 5, 0)
    assert state.next_draft(6, CPU_COST.__getitem__) == []  # bad odds: a plain step
    for _ in range(40):
        odds.observe((2, False), 5, 5)
    assert state.next_draft(6, CPU_COST.__getitem__) == [3, 4, 5, 6]  # a 5th token does not pay here
    draft = state.next_draft(6, lambda width: 10.0 + 0.01 * width)  # width almost free: the whole proposal
    assert draft == [3, 4, 5, 6, 1, 2]
    state.count_draft(len(draft), 2)
    assert (state.draft_tokens, state.accepted_draft_tokens) == (6, 2)
    assert odds.p((2, False)) < 0.95  # the rejection counted against its kind
    assert state.next_draft(0, CPU_COST.__getitem__) == []  # drafts off
