"""Prefill chunks sized from the measured cost per token, so one chunk fits the deadline for any model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch

from tabfill.completion.engine import Engine, EngineInfo
from tabfill.completion.forward_cost import BACKGROUND_CHUNK_MS, MIN_CHUNK_TOKENS, ForwardCost
from tabfill.completion.types import CancelToken, Deadline, Prompt, StopRule
from tabfill.kernels.steps import PREFILL_CHUNK_TOKENS

VOCAB = 16


def test_the_cost_model_separates_the_fixed_cost_from_the_cost_per_token() -> None:
    cost = ForwardCost()
    assert cost.chunk_tokens(80, 128) == 128  # nothing measured yet: as before
    for _ in range(20):  # a forward of n tokens: 3 ms + 2 ms per token
        cost.observe(1, 5.0)  # a decode step
        cost.observe(4, 11.0)  # a draft check: too narrow to count
        cost.observe(64, 3.0 + 64 * 2.0)  # a prefill chunk
    assert cost.step_ms == pytest.approx(5.0)
    assert cost.per_token_ms == pytest.approx(2.0)
    assert cost.estimate_ms(10) == pytest.approx(23.0)
    assert cost.chunk_tokens(80, 128) == 38  # 3 + 2 * 38 = 79 ms
    assert cost.chunk_tokens(1000, 128) == 128  # never wider than the most
    assert cost.chunk_tokens(3, 128) == MIN_CHUNK_TOKENS  # the deadline is (nearly) past: the narrowest chunk
    assert cost.chunk_tokens(None, 128) == 23  # no deadline (a warm-up): chunks of BACKGROUND_CHUNK_MS (49 ms)
    assert BACKGROUND_CHUNK_MS == 50
    cost.observe(1, 500.0)  # one slow step (another process on the CPU) moves it by at most 2x
    assert cost.step_ms < 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CostlyRunner:
    """A runner whose forward of n tokens takes `fixed_ms + per_token_ms * n` on a fake clock."""

    max_tokens = 4096
    kv_bytes_per_token = 0

    def __init__(self, clock: FakeClock, fixed_ms: float, per_token_ms: float) -> None:
        self.clock, self.fixed_ms, self.per_token_ms = clock, fixed_ms, per_token_ms
        self.widths: list[int] = []

    def forward(self, token_ids: Sequence[int], start_pos: int, *, all_logits: bool = False) -> torch.Tensor:
        self.widths.append(len(token_ids))
        self.clock.now += (self.fixed_ms + self.per_token_ms * len(token_ids)) / 1000
        logits = torch.zeros(len(token_ids), VOCAB)
        logits[:, 3] = 1.0  # always token 3
        return logits if all_logits else logits[-1]

    def keep(self, num_tokens: int) -> int:
        return num_tokens

    def describe(self) -> dict[str, str]:
        return {"runner": "fake"}


def costly_engine(clock: FakeClock, fixed_ms: float, per_token_ms: float) -> tuple[Engine, CostlyRunner]:
    runner = CostlyRunner(clock, fixed_ms, per_token_ms)
    tokenizer = SimpleNamespace(eos_token_id=None, decode=lambda ids, **_: "x" * len(ids))
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None), config=SimpleNamespace(eos_token_id=None, vocab_size=VOCAB))
    engine = Engine(model, tokenizer, "cpu", EngineInfo("fake", "cpu", "float32", 0.0, "prefix-only"), runner=runner)
    engine.vocabulary._sorted = ([], [])  # no vocabulary to decode
    return engine, runner


@pytest.mark.parametrize("per_token_ms", [0.15, 3.0])  # a small model, and one like a 1.5B model on this CPU
def test_a_long_prompt_answers_by_its_deadline_whatever_a_token_costs(monkeypatch: pytest.MonkeyPatch, per_token_ms: float) -> None:
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(time, "monotonic", clock)
    engine, runner = costly_engine(clock, fixed_ms=4.0, per_token_ms=per_token_ms)
    engine.warm_up()
    runner.widths.clear()
    prompt = Prompt(tuple(range(10, 10 + 600)), max_new_tokens=8, stop=StopRule(single_line=False, max_lines=100))
    started = clock.now
    generation = engine.generate(prompt, CancelToken(), Deadline.after_ms(80))
    elapsed_ms = (clock.now - started) * 1000
    assert elapsed_ms <= 80.5, (elapsed_ms, runner.widths)
    if per_token_ms > 1:
        # the prompt cannot be read in time: cut by the deadline after chunks that each fit the budget
        assert generation.finish_reason == "deadline" and generation.continuation is not None
        assert runner.widths[0] == int((80 - 4) / per_token_ms)  # the widest that fits: 4 + 3 * 25 = 79 ms
        assert max(runner.widths) < PREFILL_CHUNK_TOKENS
    else:
        assert max(runner.widths) == PREFILL_CHUNK_TOKENS  # a cheap model keeps the widest chunks


def test_a_warm_up_prefill_runs_in_short_chunks_so_a_request_waits_little(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(time, "monotonic", clock)
    engine, runner = costly_engine(clock, fixed_ms=4.0, per_token_ms=3.0)
    engine.warm_up()
    runner.widths.clear()
    assert engine.warm(list(range(10, 410)), CancelToken()) == 399
    costs = [4.0 + 3.0 * width for width in runner.widths]
    assert max(costs) <= BACKGROUND_CHUNK_MS, runner.widths
