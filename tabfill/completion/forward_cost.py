"""What a forward of n tokens costs on this model and machine, measured as it runs, and the prefill chunk
that fits a time budget.

A prefill chunk cannot be cut once started, so a deadline holds only if one chunk fits in the time left.
A fixed chunk size cannot do that for every model: 128 tokens take ~20 ms with SmolLM2-135M here but far
more than a whole 80 ms deadline with Qwen2.5-Coder-1.5B.

A forward's cost is not linear in its width at small widths (measured here: 1 token 12.4 ms, 4 tokens 37,
8 tokens 59, 32 tokens 124, 128 tokens 422), so one slope fitted from narrow forwards is far too steep,
and a slope kept as a moving average is poisoned by one stalled forward (GC, page faults, another process
on the CPU). So the cost is kept per width bucket (powers of two: 1, 2-3, 4-7, 8-15, ...), each the median
of its last few forwards (one stall does not move it), and read between buckets by linear interpolation.
Beyond the widest measured bucket it grows in proportion to the width (an upper bound while a forward's
cost per token does not grow with its width); narrower than the narrowest, it is that bucket's cost. When
buckets disagree with "wider costs more, but not more per token", the more trusted one wins (the median of
more forwards, then the newer). A chunk now and then probes one bucket wider than its estimate allows (only
when that estimate is a guess: an extrapolation, an old measurement or one moved by the others; and only
when PROBE_SHARE of it fits the time left, so a probe overruns by a third at most), so a too pessimistic
estimate corrects itself instead of keeping every chunk narrow.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from tabfill.completion.types import Deadline

MIN_CHUNK_TOKENS = 8  # below this a forward is mostly its fixed cost: progress per chunk would stall
# A prefill with no deadline (a warm-up) runs in chunks of about this long, so a real request that arrives
# meanwhile waits at most that for the engine.
BACKGROUND_CHUNK_MS = 50.0
WINDOW = 5  # forwards kept per width bucket; its cost is their median (two stalls of five do not move it)
_BUCKETS = 16  # widths 1 .. 2**15 and wider (the widest bucket takes them all)
# A probe (a chunk one bucket wider than the estimate allows) at most once per this many forwards, when the
# wider width's estimate is a guess and PROBE_SHARE of it fits the time left.
PROBE_EVERY = 32
PROBE_SHARE = 0.75
# A bucket's cost is a guess again when not measured for STALE_FORWARDS forwards (the machine may have
# changed) or when newer buckets moved it by more than _MOVED from its own median.
STALE_FORWARDS = 500
_MOVED = 0.1
_CONFIRMED = 3  # forwards in a bucket before its median outranks a newer but thinner bucket


class _Curve:
    """The buckets' costs reconciled (monotone, not more per token when wider), ascending by width."""

    __slots__ = ("costs", "moved", "seen", "widths")

    def __init__(self, widths: list[int], costs: list[float], seen: list[int], moved: list[bool]) -> None:
        self.widths, self.costs, self.seen = widths, costs, seen
        self.moved = moved  # moved by more than _MOVED from its own median (newer buckets disagree)


class ForwardCost:
    """Measured cost of a forward per width bucket (the median of its last WINDOW forwards), read between
    buckets by interpolation. Engine thread only; `observe` and `estimate_ms` are called per forward."""

    def __init__(self) -> None:
        self._windows: list[deque[tuple[int, float]]] = [deque(maxlen=WINDOW) for _ in range(_BUCKETS)]
        self._last_seen = [-1] * _BUCKETS  # the forward count at each bucket's latest observation
        self._curve: _Curve | None = None  # None: to recompute after an observation
        self.forwards = 0  # observations so far
        self.probes = 0  # chunks that probed a wider bucket
        self._last_probe = -PROBE_EVERY

    def observe(self, tokens: int, ms: float) -> None:
        if tokens <= 0 or not ms >= 0 or math.isinf(ms):
            return
        bucket = min(tokens.bit_length() - 1, _BUCKETS - 1)
        self._windows[bucket].append((tokens, ms))
        self._last_seen[bucket] = self.forwards
        self.forwards += 1
        self._curve = None

    @property
    def measured(self) -> bool:
        return self.forwards > 0

    def estimate_ms(self, tokens: int) -> float:
        """Expected milliseconds for a forward of `tokens` (0 before anything was measured)."""
        return self._estimate(tokens)[0]

    def chunker(self, deadline: Deadline, most: int) -> Callable[[], int]:
        """The width of the next prefill chunk for `deadline`, asked before each chunk."""
        return lambda: self.chunk_tokens(deadline.remaining_ms, most)

    def chunk_tokens(self, budget_ms: float | None, most: int) -> int:
        """The widest prefill chunk (MIN_CHUNK_TOKENS..`most`) expected to end within `budget_ms`
        (None: no deadline, BACKGROUND_CHUNK_MS), now and then one bucket wider as a probe (see the module
        doc). Before any measurement: `most`."""
        if not self.measured:
            return most
        budget = BACKGROUND_CHUNK_MS if budget_ms is None else budget_ms
        width = max(MIN_CHUNK_TOKENS, min(most, self.widest_within(budget, most)))
        if width < most and self.forwards - self._last_probe >= PROBE_EVERY:
            probe = min(1 << width.bit_length(), most)  # the narrowest width of the next bucket
            ms, guess = self._estimate(probe)
            if guess and PROBE_SHARE * ms <= budget:
                self._last_probe, self.probes = self.forwards, self.probes + 1
                return probe
        return width

    def widest_within(self, budget_ms: float, most: int) -> int:
        """The widest forward (0..`most`) expected to take at most `budget_ms` (no probing, no minimum)."""
        low, high = 0, most  # estimate_ms is monotone in the width: bisect
        while low < high:
            middle = (low + high + 1) // 2
            if self._estimate(middle)[0] <= budget_ms:
                low = middle
            else:
                high = middle - 1
        return low

    def describe(self) -> str:
        """What it believes, for `tabfill/status` (so a stuck estimate shows): the cost per measured width
        ("~": a guess, old or moved by newer buckets) and the chunks that would fit 50/100/200 ms."""
        if not self.measured:
            return "not measured yet"
        curve = self._reconciled()
        points = ", ".join(f"{width}: {cost:.1f}{'~' if self._guess(curve, at) else ''}" for at, (width, cost) in enumerate(zip(curve.widths, curve.costs, strict=True)))
        chunks = "/".join(str(max(MIN_CHUNK_TOKENS, self.widest_within(ms, 1024))) for ms in (50.0, 100.0, 200.0))
        return (
            f"ms per forward by width {{{points}}} (median of the last {WINDOW} each; ~: a guess, old or moved to agree with others); "
            f"chunks for 50/100/200 ms: {chunks} tokens; {self.forwards} forwards, {self.probes} probes"
        )

    # ----------------------------------------------------------------- internals
    def _stale(self, seen: int) -> bool:
        return self.forwards - 1 - seen >= STALE_FORWARDS

    def _guess(self, curve: _Curve, at: int) -> bool:
        return curve.moved[at] or self._stale(curve.seen[at])

    def _estimate(self, tokens: int) -> tuple[float, bool]:
        """(Expected milliseconds for `tokens`, whether that is a guess: extrapolated beyond the widest
        measured bucket, or interpolated towards a wider bucket not measured lately)."""
        if tokens <= 0 or not self.measured:
            return 0.0, False
        curve = self._reconciled()
        widths, costs = curve.widths, curve.costs
        at = bisect.bisect_left(widths, tokens)
        if at == len(widths):  # wider than anything measured: in proportion to the widest
            return costs[-1] * tokens / widths[-1], True
        if widths[at] == tokens:
            return costs[at], self._guess(curve, at)
        if at == 0:  # narrower than anything measured: the narrowest one's cost
            return costs[0], False
        left, right = widths[at - 1], widths[at]
        share = (tokens - left) / (right - left)
        return costs[at - 1] + share * (costs[at] - costs[at - 1]), self._guess(curve, at)

    def _reconciled(self) -> _Curve:
        curve = self._curve
        if curve is None:
            curve = self._curve = self._reconcile()
        return curve

    def _reconcile(self) -> _Curve:
        # each bucket's median forward (by cost per token, so a bucket of mixed widths keeps a real pair)
        points: list[tuple[int, float, int, int]] = []
        for bucket, window in enumerate(self._windows):
            if window:
                width, ms = sorted(window, key=lambda seen: seen[1] / seen[0])[(len(window) - 1) // 2]
                points.append((width, ms, self._last_seen[bucket], len(window)))
        # NOTE: a wider forward costs at least as much, and not more per token (it streams the weights once
        # for all its tokens). Buckets that disagree are settled by trust: a median of at least _CONFIRMED
        # forwards before fewer (one stall is not a median), then the newer before the older (a bucket
        # measured during a stall long ago must not hold back the rest). Each is moved into what the more
        # trusted ones allow; a moved one is only a bound on the others (down: an upper bound, up: a lower).
        order = sorted(range(len(points)), key=lambda i: (min(points[i][3], _CONFIRMED), points[i][2]), reverse=True)
        fixed: list[tuple[int, float, bool, bool]] = []  # width, cost, bounds the cost from above, from below
        costs = [0.0] * len(points)
        moved = [False] * len(points)
        for index in order:
            width, ms, _, _ = points[index]
            low, high = 0.0, math.inf
            for other_width, other_ms, upper, lower in fixed:
                narrower = other_width < width
                if upper:
                    high = min(high, other_ms * width / other_width if narrower else other_ms)
                if lower:
                    low = max(low, other_ms if narrower else other_ms * width / other_width)
            cost = max(low, min(high, ms))
            fixed.append((width, cost, cost <= ms, cost >= ms))
            costs[index] = cost
            moved[index] = abs(cost - ms) > _MOVED * ms
        # what a bound skipped above: a cost moved down is only an upper bound, so a wider one caps it too;
        # then monotone whatever is left (bisection relies on it)
        down = [cost < ms for cost, (_, ms, _, _) in zip(costs, points, strict=True)]
        for at in range(len(costs) - 2, -1, -1):
            if down[at]:
                costs[at] = min(costs[at], costs[at + 1])
        for at in range(1, len(costs)):
            costs[at] = max(costs[at], costs[at - 1])
        return _Curve([p[0] for p in points], costs, [p[2] for p in points], moved)


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
        """First estimates of the cost from forwards of 1, MIN_CHUNK_TOKENS and `most` tokens at position
        `at` (each width once untimed first: its first forward pays for kernel initialisation)."""
        widths = sorted({1, min(MIN_CHUNK_TOKENS, most), most})
        for width in widths:
            self.runner.forward([0] * width, at)
        for width in widths + widths:
            self.forward([0] * width, at)
