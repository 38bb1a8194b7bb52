"""bench/follow.py's judge: what counts as visible, right and typed ahead."""

from __future__ import annotations

from bench.cases import TypingCase
from bench.follow import judge


def test_typed_ahead_counts_each_typed_character_once() -> None:
    case = TypingCase("c", "python", "", "", "abcdef\nxyz", ())
    keys = [(0.0, "a"), (0.2, "b"), (0.4, "c"), (0.6, "d")]
    seen = ["bcdef\nxyz", "cdef\nxyz", "", "eQ"]  # right, right (the same characters again), nothing, wrong
    visible, right, ahead, typed = judge(case, keys, seen)
    assert (visible, right, typed) == (3, 2, 4)
    # b, c and d were on screen before they were typed; e was shown but not typed yet; the second showing
    # of c and d counts nothing more (the old sum counted 9 + 8 characters here)
    assert ahead == 3


def test_a_right_first_line_counts_even_when_the_rest_is_wrong() -> None:
    case = TypingCase("c", "python", "", "", "ab\ncd", ())
    visible, right, ahead, typed = judge(case, [(0.0, "a"), (0.1, "b")], ["b\nzz", ""])
    assert (visible, right, ahead, typed) == (1, 1, 1, 2)


def test_the_targets_show_the_models_whole_answers_beside_the_right_share_targets() -> None:
    from bench.follow import WHOLE_ANSWERS, targets

    def row(pace: str, right: float) -> dict[str, object]:
        return {"pace": pace, "visible": 0.9, "right": right, "model_p50_ms": 20.0}

    nvim = {"name": "Neovim plugin", "rows": [row("4 keys/s", 0.45), row("10 keys/s", 0.34)]}
    whole = {"name": WHOLE_ANSWERS, "rows": [row("every key answered in full", 0.43)]}
    without = "\n".join(targets({"clients": [nvim]}))
    assert "10 keys/s: right ≥ 55 % | 34 % | **missed**" in without and "no deadline" not in without
    lines = targets({"clients": [nvim, whole]})
    assert "| (reference) right when every key is answered in full, no deadline | 43 % | the model's own answers |" in lines
