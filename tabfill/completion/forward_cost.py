"""What a forward of n tokens costs on this model and machine, measured as it runs, and the prefill chunk
that fits a time budget.

A prefill chunk cannot be cut once started, so a deadline holds only if one chunk fits in the time left.
A fixed chunk size cannot do that for every model: 128 tokens take ~20 ms with SmolLM2-135M here but far
more than a whole 80 ms deadline with Qwen2.5-Coder-1.5B. The cost is modelled as
`step + per_token * (n - 1)` (a forward streams the weights once, then pays per token): `step` is what a
one-token forward (a decode step) takes, each term a moving average of what the forwards really took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from tabfill.completion.types import Deadline

MIN_CHUNK_TOKENS = 8  # below this a forward is mostly its fixed cost: progress per chunk would stall
# A prefill with no deadline (a warm-up) runs in chunks of about this long, so a real request that arrives
# meanwhile waits at most that for the engine.
BACKGROUND_CHUNK_MS = 50.0
_SMOOTHING = 0.3  # weight of the newest observation


class ForwardCost:
    """Moving estimates of a one-token forward (decode steps) and of the cost of each further token (from
    wider forwards). Engine thread only."""

    def __init__(self) -> None:
        self.step_ms: float | None = None
        self.per_token_ms: float | None = None

    def observe(self, tokens: int, ms: float) -> None:
        if tokens <= 0 or ms < 0:
            return
        if tokens == 1:
            self.step_ms = _average(self.step_ms, ms)
        elif tokens >= MIN_CHUNK_TOKENS:  # NOTE: narrower ones (draft checks) tell too little about the slope
            self.per_token_ms = _average(self.per_token_ms, max(ms - (self.step_ms or 0.0), 0.0) / (tokens - 1))

    def estimate_ms(self, tokens: int) -> float:
        """Expected milliseconds for a forward of `tokens` (0 before anything was measured)."""
        step = self.step_ms or 0.0
        if self.per_token_ms is None:
            return step * tokens  # only single steps seen: assume no batching gain (errs towards small chunks)
        return step + self.per_token_ms * (tokens - 1)

    def describe(self) -> str:
        if self.step_ms is None and self.per_token_ms is None:
            return "not measured yet"
        return f"{self.step_ms or 0:.2f} ms a step + {self.per_token_ms or 0:.3f} ms per further token (measured)"

    def chunker(self, deadline: Deadline, most: int) -> Callable[[], int]:
        """The width of the next prefill chunk for `deadline`, asked before each chunk."""
        return lambda: self.chunk_tokens(deadline.remaining_ms, most)

    def chunk_tokens(self, budget_ms: float | None, most: int) -> int:
        """The widest prefill chunk (MIN_CHUNK_TOKENS..`most`) expected to end within `budget_ms`
        (None: no deadline, BACKGROUND_CHUNK_MS). Before any measurement: `most`."""
        if self.per_token_ms is None and self.step_ms is None:
            return most
        budget = BACKGROUND_CHUNK_MS if budget_ms is None else budget_ms
        step = self.step_ms or 0.0
        per_token = self.per_token_ms if self.per_token_ms is not None else step
        fits = 1 + int((budget - step) / max(per_token, 1e-6))
        return max(MIN_CHUNK_TOKENS, min(most, fits))


def _average(previous: float | None, value: float) -> float:
    if previous is None:
        return value
    # NOTE: one slow forward (a first use of a shape, another process on the CPU) moves it by at most 2x
    return (1 - _SMOOTHING) * previous + _SMOOTHING * min(value, 4 * previous)


class _Forward(Protocol):
    def forward(self, token_ids: Sequence[int], start_pos: int, *, all_logits: bool = False) -> torch.Tensor: ...


class TimedForward:
    """A runner's forward that reports what each call took to a ForwardCost (a steps.Forward)."""

    def __init__(self, runner: _Forward) -> None:
        self.runner, self.cost = runner, ForwardCost()

    def forward(self, token_ids: Sequence[int], start_pos: int, *, all_logits: bool = False) -> torch.Tensor:
        started = time.perf_counter()
        logits = self.runner.forward(token_ids, start_pos, all_logits=all_logits)
        self.cost.observe(len(token_ids), (time.perf_counter() - started) * 1000)
        return logits

    def calibrate(self, most: int, at: int) -> None:
        """First estimates of the cost from forwards of 1 and `most` tokens at position `at` (each shape
        once untimed first: its first forward pays for kernel initialisation)."""
        for width in (1, most):
            self.runner.forward([0] * width, at)
        for width in (1, most, 1, most):
            self.forward([0] * width, at)
