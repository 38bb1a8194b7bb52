"""Prefill chunks sized from the measured cost per token, so one chunk fits the deadline for any model."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import pytest
import torch

from tabfill.completion.engine import Engine, EngineInfo
from tabfill.completion.forward_cost import BACKGROUND_CHUNK_MS, MIN_CHUNK_TOKENS, PROBE_EVERY, PROBE_SHARE, WINDOW, ForwardCost, TimedForward
from tabfill.completion.types import CancelToken, Deadline, Prompt, StopRule
from tabfill.kernels.steps import PREFILL_CHUNK_TOKENS

VOCAB = 16


def test_the_cost_is_read_between_measured_widths() -> None:
    cost = ForwardCost()
    for _ in range(20):  # a forward of n tokens: 3 ms + 2 ms per token
        cost.observe(1, 5.0)  # a decode step
        cost.observe(4, 11.0)  # a draft check
        cost.observe(64, 3.0 + 64 * 2.0)  # a prefill chunk
    assert cost.estimate_ms(1) == pytest.approx(5.0)
    assert cost.estimate_ms(10) == pytest.approx(23.0)
    assert cost.estimate_ms(256) == pytest.approx(131.0 * 4)  # beyond the widest: in proportion (an upper bound)
    assert cost.chunk_tokens(80, 128) == 38  # 3 + 2 * 38 = 79 ms
    assert cost.chunk_tokens(1000, 128) == 128  # never wider than the most
    assert cost.chunk_tokens(3, 128) == MIN_CHUNK_TOKENS  # the deadline is (nearly) past: the narrowest chunk
    assert cost.chunk_tokens(None, 128) == 23  # no deadline (a warm-up): chunks of BACKGROUND_CHUNK_MS (49 ms)
    assert BACKGROUND_CHUNK_MS == 50
    assert cost.probes == 0  # every estimate was measured lately: nothing to probe
    cost.observe(1, 500.0)  # one slow step (another process on the CPU) does not move the median
    assert cost.estimate_ms(1) == pytest.approx(5.0)


def test_nothing_measured_behaves_as_before() -> None:
    cost = ForwardCost()
    assert [cost.estimate_ms(n) for n in (0, 1, 8, 128)] == [0.0, 0.0, 0.0, 0.0]
    assert cost.chunk_tokens(80, 128) == 128
    assert cost.chunk_tokens(None, 128) == 128
    assert cost.chunk_tokens(1, 64) == 64
    assert cost.describe() == "not measured yet"
    cost.observe(0, 5.0)  # nothing to learn from
    cost.observe(8, -1.0)
    cost.observe(8, float("nan"))
    assert cost.chunk_tokens(80, 128) == 128


def test_only_single_steps_measured_assumes_no_batching_gain_as_before() -> None:
    cost = ForwardCost()
    cost.observe(1, 5.0)
    assert cost.estimate_ms(10) == pytest.approx(50.0)
    assert cost.chunk_tokens(80, 128) == 16  # 16 * 5 = 80 ms


# Measured on this box: a forward's cost is far from linear in its width at small widths.
MEASURED = {1: 12.4, 4: 37.0, 8: 59.0, 32: 124.0, 128: 422.0}


def measured_ms(tokens: int) -> float:
    """The measured curve, linear between (and beyond) the measured widths."""
    widths = sorted(MEASURED)
    for left, right in zip(widths, widths[1:]):
        if tokens <= right or right == widths[-1]:
            return MEASURED[left] + (tokens - left) * (MEASURED[right] - MEASURED[left]) / (right - left)
    raise AssertionError


def prefill(cost: ForwardCost, budget_ms: float, chunks: int, clock: Callable[[int], float] = measured_ms) -> list[int]:
    """The widths of `chunks` prefill chunks each chosen for `budget_ms`, each observed at `clock(width)`."""
    widths = []
    for _ in range(chunks):
        width = cost.chunk_tokens(budget_ms, 128)
        cost.observe(width, clock(width))
        widths.append(width)
    return widths


class CurveRunner:
    def __init__(self, ms: Callable[[int], float], clock: FakeClock | None = None) -> None:
        self.ms, self.clock, self.widths = ms, clock or FakeClock(), []

    def forward(self, token_ids: Sequence[int], start_pos: int, *, all_logits: bool = False) -> torch.Tensor:
        self.widths.append(len(token_ids))
        self.clock.now += self.ms(len(token_ids)) / 1000
        return torch.zeros(VOCAB)


@pytest.mark.parametrize(("budget_ms", "narrowest"), [(30, MIN_CHUNK_TOKENS), (50, MIN_CHUNK_TOKENS), (100, 16), (200, 48)])
def test_a_nonlinear_cost_gives_chunks_that_fit_the_deadline(monkeypatch: pytest.MonkeyPatch, budget_ms: float, narrowest: int) -> None:
    runner = CurveRunner(measured_ms)
    monkeypatch.setattr(time, "perf_counter", runner.clock)
    timed = TimedForward(runner)
    timed.calibrate(128, at=4)  # what warm_up does
    for _ in range(10):  # decode steps and draft checks, as a request makes
        timed.forward([0], 4)
        timed.forward([0] * 4, 4)
    widths = prefill(timed.cost, budget_ms, 12)
    assert min(widths) >= narrowest, widths
    for width in widths:
        # the chunk fits, unless even the narrowest cannot (then the narrowest)
        assert width == MIN_CHUNK_TOKENS or measured_ms(width) <= budget_ms, (width, measured_ms(width), widths)


def test_one_stalled_forward_does_not_shrink_the_chunks() -> None:
    cost = ForwardCost()
    for tokens, ms in MEASURED.items():
        cost.observe(tokens, ms)
        cost.observe(tokens, ms)
    before = cost.chunk_tokens(100, 128)
    assert before >= 16
    cost.observe(before, 2000.0)  # a GC pause or page faults in the middle of one chunk (a bucket's first)
    assert prefill(cost, 100, 1)[0] >= 16  # it moves the estimate by a bounded amount
    assert prefill(cost, 100, 1)[0] == before  # and one normal forward undoes it
    cost.observe(1, 900.0)  # a stalled decode step
    assert cost.estimate_ms(1) < 15.0


def test_a_burst_of_slow_forwards_is_forgotten_within_a_few_normal_ones() -> None:
    cost = ForwardCost()
    for tokens, ms in MEASURED.items():
        cost.observe(tokens, ms)
    prefill(cost, 100, WINDOW, lambda width: 10 * measured_ms(width))  # seconds of contention: all 10x slower
    assert cost.chunk_tokens(100, 128) == MIN_CHUNK_TOKENS  # believed: chunks shrink to the narrowest
    widths = prefill(cost, 100, WINDOW + 2)  # the contention is over
    assert widths[-1] >= 16, widths


def test_a_poisoned_wide_estimate_corrects_itself_by_probing() -> None:
    """The soak's stuck state: the wide forwards were measured during a stall (here both calibration
    forwards of 128 tokens took seconds), only narrow chunks run since, so nothing wider is ever measured."""
    cost = ForwardCost()
    for _ in range(2):
        cost.observe(1, 12.4)
        cost.observe(8, 59.0)
        cost.observe(128, 12.4 + 93.9 * 127)
    for _ in range(20):
        cost.observe(1, 12.4)
        cost.observe(8, 59.0)  # narrow chunks only
    assert "~" in cost.describe()  # the 128-token cost is shown as a guess
    widths = prefill(cost, 100, PROBE_EVERY + 4)
    assert widths[-1] >= 16, widths
    assert all(measured_ms(width) <= 100 for width in widths), widths  # the probes fit too
    assert cost.probes >= 1
    probes = cost.probes
    widths = prefill(cost, 200, 3 * PROBE_EVERY)  # a longer deadline: wider probes, up to the real curve
    assert widths[-1] >= 48, widths
    # a probe may overrun (its estimate is a guess) but by a bounded amount, and only a probe
    late = [width for width in widths if measured_ms(width) > 200]
    assert len(late) <= cost.probes - probes and all(measured_ms(width) <= 200 / PROBE_SHARE for width in late), widths


def test_estimates_grow_with_the_width() -> None:
    cost = ForwardCost()
    for tokens, ms in [(1, 12.4), (4, 37.0), (8, 70.0), (16, 65.0), (32, 124.0), (128, 300.0), (64, 400.0)]:
        cost.observe(tokens, ms)  # noisy, out of order, some inconsistent
    estimates = [cost.estimate_ms(n) for n in range(1, 300)]
    assert estimates == sorted(estimates)
    assert cost.estimate_ms(64) == pytest.approx(400.0)  # the newest measurement wins where they disagree


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
    assert "ms per forward by width {1: " in str(engine.describe()["forwardCost"])  # what it believes, for tabfill/status
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
