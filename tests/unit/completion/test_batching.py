"""BatchedEngine against the single-stream Engine's greedy generate (the reference twin), on a tiny model."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tabfill.completion.batching import BatchedEngine, BatchEvent, BatchRequest, generate_all
from tabfill.completion.engine import Engine, EngineInfo
from tabfill.completion.prefix_cache import PrefixCache
from tabfill.completion.runners import LeanRunner, make_runner
from tabfill.completion.types import CancelToken, Deadline, Generation, Prompt, StopRule
from tabfill.kernels import steps
from tabfill.kernels.batch import RowInput
from tests.support import make_tiny_model_dir

NO_STOP = StopRule(single_line=False, block_indent=0, max_lines=10_000)
TEXTS = [
    "def add(a, b):\n    return a",
    "import os\n\nfor name in os.listdir(path):\n    ",
    "class Point:\n    def __init__(self, x, y):\n        self.",
    "const total = items.reduce((sum, item) => ",
    "# 漢字 😀 comment\nvalue = ",
    "\n".join(f"x{i} = {i} * {i}" for i in range(30)),
    "export function debounce(fn, wait) {\n  let timer = null;\n  return (...args) => {\n",
    "for (let i = 0; i < n; i++) {\n  total += ",
]


@dataclass
class Twins:
    engine: Engine  # single stream: the reference
    batched: BatchedEngine
    tokenizer: Any

    def ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reference(self, prompt: Prompt, corpus: tuple[int, ...] = ()) -> Generation:
        return self.engine.generate(prompt, CancelToken(), Deadline(), corpus)

    def top2_gap(self, prompt: Prompt, generated: tuple[int, ...]) -> float:
        """The reference's top-2 logit gap for the token after `generated` (a float tie when ~0)."""
        logits = self.engine.runner.forward(list(prompt.token_ids) + list(generated), 0)
        self.engine._live, self.engine._owner = [], None  # its live slot was just overwritten
        top2 = logits.topk(2).values
        return float(top2[0] - top2[1])


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    directory = make_tiny_model_dir(tmp_path_factory.mktemp("batch-model"))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    runner = make_runner(model, torch.device("cpu"), max_tokens=512, quantize=None)
    assert isinstance(runner, LeanRunner)
    engine = Engine(model, tokenizer, "cpu", EngineInfo(str(directory), "cpu", "float32", 0.0, "prefix-only"), runner=runner)
    batched = BatchedEngine(
        model, tokenizer, "cpu", slots=3, max_tokens=400, prefix_cache=PrefixCache(8, 4 * 2**20),
        decoder=runner.decoder, prefill_chunk=16,
    )
    # a random model may pick EOS anywhere; these tests run to their limits unless a stop rule says otherwise
    engine.eos_ids = batched.eos_ids = frozenset()
    yield Twins(engine, batched, tokenizer)


def joined(events: list[BatchEvent]) -> tuple[tuple[int, ...], str, str | None]:
    assert events and all(e.finish is None for e in events[:-1]) and events[-1].finish is not None
    return tuple(t for e in events for t in e.token_ids), "".join(e.text for e in events), events[-1].finish


def assert_same_as_reference(twins: Twins, requests: list[BatchRequest], results: dict[str, list[BatchEvent]]) -> int:
    """Every request's tokens, text and finish equal the single-stream engine's; returns the float ties
    (a divergence where the reference's top two logits are equal to 1e-4), which must be rare."""
    ties = 0
    for request in requests:
        tokens, text, finish = joined(results[request.id])
        expected = twins.reference(request.prompt, request.corpus)
        if tokens != expected.token_ids:
            at = next(i for i, (a, b) in enumerate(zip(tokens, expected.token_ids)) if a != b)
            assert twins.top2_gap(request.prompt, tokens[:at]) < 1e-4, f"{request.id} diverged at token {at} without a tie"
            ties += 1
            continue
        assert (text, finish) == (expected.text, expected.finish_reason), request.id
        assert results[request.id][-1].prompt_tokens == len(request.prompt.token_ids)
        # how sure the model was of each token travels with the events, as the single stream has it
        confidence = [pair for event in results[request.id] for pair in event.confidence]
        assert [offset for offset, _ in confidence] == [offset for offset, _ in expected.confidence], request.id
        assert [p for _, p in confidence] == pytest.approx([p for _, p in expected.confidence], abs=1e-3), request.id
    return ties


def request(twins: Twins, text: str, n: int = 12, *, rid: str = "", salt: bytes = b"t", priority: float = 0.0,
            stop: StopRule = NO_STOP, healing: bool = False) -> BatchRequest:
    ids = twins.ids(text)
    healing_text = twins.tokenizer.decode(ids[-1:]) if healing else ""
    prompt = Prompt(ids[:-1] if healing else ids, max_new_tokens=n, stop=stop, healing_text=healing_text)
    return BatchRequest(rid or f"r{abs(hash((text, n, healing, stop)))}", prompt, salt, priority)


def test_batched_output_equals_single_stream_greedy_on_many_prompts(twins: Twins) -> None:
    requests = [request(twins, text, n, rid=f"p{i}-{n}") for i, text in enumerate(TEXTS) for n in (5, 14)]
    requests += [request(twins, text, 10, rid=f"h{i}", healing=True) for i, text in enumerate(TEXTS[:4])]
    requests += [request(twins, text, 40, rid=f"s{i}", stop=StopRule(single_line=False, block_indent=4, max_lines=3)) for i, text in enumerate(TEXTS[:3])]
    results = generate_all(twins.batched, requests)  # 3 slots: most requests queue, then join as others leave
    assert assert_same_as_reference(twins, requests, results) <= 1
    assert twins.batched.idle and twins.batched.active == 0


def test_drafts_are_verified_per_row(twins: Twins) -> None:
    # repetitive prompts and a corpus: prompt lookup proposes drafts, which must not change the tokens
    texts = ["a = [1, 2, 3]\nb = [1, 2, 3]\nc = [1, 2", "x.y.z = x.y.z + x.y"]
    requests = [BatchRequest(f"d{i}", Prompt(twins.ids(t), 16, NO_STOP), b"t", 0.0, twins.ids(t)) for i, t in enumerate(texts)]
    calls: list[list[RowInput]] = []
    real = twins.batched.batch.forward_rows
    twins.batched.batch.forward_rows = lambda rows: calls.append(list(rows)) or real(rows)  # type: ignore[method-assign]
    try:
        results = generate_all(twins.batched, requests)
    finally:
        del twins.batched.batch.forward_rows
    assert any(row.all_logits and len(row.token_ids) > 1 for rows in calls for row in rows), "no draft was verified"
    assert assert_same_as_reference(twins, requests, results) == 0


def test_one_prefill_chunk_per_step_and_decoding_rows_never_wait(twins: Twins) -> None:
    engine = twins.batched
    short = request(twins, TEXTS[0], 30, rid="short")
    cold = request(twins, "\n".join(f"y{i} = {i} + {i}" for i in range(25)), 4, rid="cold")
    assert len(cold.prompt.token_ids) > 6 * engine.prefill_chunk
    engine.add(short)
    events: dict[str, list[BatchEvent]] = {"short": [], "cold": []}
    while not events["short"]:
        for event in engine.step():
            events[event.id].append(event)
    engine.add(cold)
    steps = 0
    while not engine.idle:
        prefill_rows: list[RowInput] = []
        real = engine.batch.forward_rows

        def spy(rows: list[RowInput]) -> list[torch.Tensor]:
            prefill_rows.extend(r for r in rows if not r.all_logits and len(r.token_ids) > 1)
            return real(rows)

        engine.batch.forward_rows = spy  # type: ignore[method-assign]
        try:
            step_events = engine.step()
        finally:
            del engine.batch.forward_rows
        steps += 1
        assert sum(len(r.token_ids) for r in prefill_rows) <= engine.prefill_chunk  # one chunk's width a step
        ids = {e.id for e in step_events}
        if any(not e.finish for e in events["short"][-1:]) and steps < 6:
            assert "short" in ids, "a decoding row waited for another row's prefill"
        for event in step_events:
            events[event.id].append(event)
    assert assert_same_as_reference(twins, [short, cold], events) == 0


def test_join_leave_and_cancel_mid_batch_frees_the_slot(twins: Twins) -> None:
    engine = twins.batched
    a, b, c = (request(twins, TEXTS[i], 20, rid=f"jl{i}") for i in range(3))
    d = request(twins, TEXTS[3], 6, rid="jl3")
    events: dict[str, list[BatchEvent]] = {r.id: [] for r in (a, b, c, d)}

    def run(steps: int) -> None:
        for _ in range(steps):
            for event in engine.step():
                events[event.id].append(event)

    engine.add(a)
    run(3)
    engine.add(b)
    engine.add(c)
    run(4)
    assert engine.active == 3 and engine.queued == 0
    engine.add(d)  # all 3 slots taken: it waits
    run(1)
    assert engine.queued == 1
    engine.cancel("jl1")
    assert engine.active == 2 and len(engine._free) == 1  # freed now, before the next step
    run(1)  # the waiting request takes the freed slot in this very step
    assert engine.queued == 0 and engine.active == 3
    assert events["jl1"][-1].finish == "cancelled"
    engine.cancel("jl1")  # again: ignored
    engine.cancel("unknown")
    while not engine.idle:
        run(1)
    assert events["jl1"][-1].finish == "cancelled" and sum(e.finish is not None for e in events["jl1"]) == 1
    assert assert_same_as_reference(twins, [a, c, d], events) == 0


def test_shortest_deadline_is_prefilled_first(twins: Twins) -> None:
    engine = twins.batched
    late = request(twins, TEXTS[1], 3, rid="late", priority=200.0)
    soon = request(twins, TEXTS[2], 3, rid="soon", priority=100.0)
    engine.add(late)
    engine.add(soon)
    assert _first_token_order(engine) == ["soon", "late"]


def test_tenants_never_share_a_prefix_cache_hit(twins: Twins) -> None:
    engine = twins.batched
    text = "\n".join(f"secret_{i} = compute({i})" for i in range(12))
    first = generate_all(engine, [request(twins, text, 4, rid="a1", salt=b"tenant-a")])
    assert first["a1"][-1].cached_tokens == 0
    other = generate_all(engine, [request(twins, text, 4, rid="b1", salt=b"tenant-b")])
    assert other["b1"][-1].cached_tokens == 0
    again = generate_all(engine, [request(twins, text, 4, rid="a2", salt=b"tenant-a")])
    assert again["a2"][-1].cached_tokens >= len(twins.ids(text)) - 8
    assert joined(again["a2"])[0] == joined(first["a1"])[0] == joined(other["b1"])[0]


@pytest.mark.parametrize(
    ("ids", "n", "priority", "message"),
    [
        ((1, 2, 10**6), 4, 0.0, "outside the vocabulary"),
        ((1, -1), 4, 0.0, "outside the vocabulary"),
        ((), 4, 0.0, "no tokens"),
        ((1,) * 395, 10, 0.0, "a slot holds 400"),
        ((1, 2), 0, 0.0, "max_new_tokens"),
        ((1, 2), 10**9, 0.0, "max_new_tokens"),
        ((1, 2), 4, math.nan, "priority"),
    ],
)
def test_bad_input_raises_and_disturbs_nothing(twins: Twins, ids: tuple[int, ...], n: int, priority: float, message: str) -> None:
    engine = twins.batched
    good = request(twins, TEXTS[0], 8, rid="good")
    engine.add(good)
    engine.step()
    with pytest.raises(ValueError, match=message):
        engine.add(BatchRequest("bad", Prompt(ids, n, NO_STOP), b"t", priority))
    with pytest.raises(ValueError, match="already running"):
        engine.add(good)
    events = {"good": list(engine._rows["good"].state.generated)}
    assert "bad" not in engine._rows
    rest: list[BatchEvent] = []
    while not engine.idle:
        rest += engine.step()
    assert all(e.id == "good" for e in rest)
    tokens = tuple(events["good"]) + tuple(t for e in rest for t in e.token_ids)
    assert tokens == twins.reference(good.prompt).token_ids


def test_describe_sizes_the_pool_in_bytes(twins: Twins) -> None:
    info = twins.batched.describe()
    per_token = twins.engine.runner.kv_bytes_per_token
    assert info["kv_pool_bytes"] == 3 * 400 * per_token
    assert info["slots"] == 3 and info["slot_tokens"] == 400 and info["prefill_chunk_tokens"] == 16
    assert "salted" in str(info["prefix_cache"])


def test_an_engine_built_from_the_model_holds_weights_and_the_pool_only(twins: Twins) -> None:
    own = BatchedEngine(twins.engine.model, twins.tokenizer, "cpu", slots=2, max_tokens=128, prefix_cache=None)
    own.eos_ids = frozenset()
    assert own.batch.decoder.cache.k.numel() == 0  # no single-sequence cache beside the pool
    assert own.describe()["kv_pool_bytes"] == 2 * 128 * twins.engine.runner.kv_bytes_per_token
    first = request(twins, TEXTS[0], 8, rid="own")
    results = generate_all(own, [first])
    assert assert_same_as_reference(twins, [first], results) == 0


def test_prefill_chunks_shrink_to_the_step_budget(twins: Twins) -> None:
    """With a step budget the chunk is what fits beside the step's decode tokens, by the measured cost of
    a step of n tokens; without one it is the fixed width."""
    from tabfill.completion.forward_cost import ForwardCost

    engine = twins.batched
    saved = engine.cost, engine.prefill_budget_ms
    try:
        engine.cost = ForwardCost()
        for _ in range(3):  # ~5 ms a token
            for tokens, ms in ((1, 10.0), (4, 25.0), (8, 45.0), (16, 85.0)):
                engine.cost.observe(tokens, ms)
        engine.prefill_budget_ms = None
        assert engine._chunk_width(3) == engine.prefill_chunk == 16
        engine.prefill_budget_ms = 60.0
        # 11 tokens fit 60 ms (10 + 5 a further token); 12 would take 65
        assert engine._chunk_width(0) == 11
        assert engine._chunk_width(3) == 8
        # many decode tokens (20: ~106 ms): the prefill still gets as long as they take, here the whole
        # prefill_chunk (by the 60 ms budget alone it would get MIN_CHUNK_TOKENS, 8)
        assert engine._chunk_width(20) == 16
        engine.prefill_budget_ms = 1000.0
        assert engine._chunk_width(3) == 16  # never wider than prefill_chunk
    finally:
        engine.cost, engine.prefill_budget_ms = saved


def test_the_next_keystroke_takes_its_document_s_slot_and_reuses_it_to_the_token(twins: Twins) -> None:
    """A request that extends the last one of its tenant starts from the slot that one left, to the token
    (the prefix store alone reuses whole blocks: 8 tokens here, 32 in the engine); same tokens as the single
    stream; another tenant's request never gets that slot's tokens."""
    engine = twins.batched
    text = "\n".join(f"typed_{i} = compute({i}, limit)" for i in range(5))
    ids = twins.ids(text)
    n = len(ids) if len(ids) % 8 else len(ids) - 1
    ids = ids[:n]
    assert n % 8, "the reuse must not be a whole number of store blocks"
    first = generate_all(engine, [BatchRequest("k1", Prompt(ids, 3, NO_STOP), b"typist", 0.0)])
    generated = joined(first["k1"])[0]
    other = next(t for t in (11, 12, 13) if t != generated[0])
    keystroke = BatchRequest("k2", Prompt(ids + (other, 7), 5, NO_STOP), b"typist", 0.0)
    results = generate_all(engine, [keystroke])
    assert results["k2"][-1].cached_tokens == n  # the whole old prompt; from the store alone: n // 8 * 8
    assert assert_same_as_reference(twins, [keystroke], results) == 0
    stranger = BatchRequest("x1", Prompt(ids + (other, 7), 5, NO_STOP), b"someone-else", 0.0)
    assert generate_all(engine, [stranger])["x1"][-1].cached_tokens == 0


def test_several_keystrokes_are_prefilled_in_one_step(twins: Twins) -> None:
    """Three documents' next keystrokes (each a few tokens past what its slot holds) share one step's prefill
    width instead of waiting one step each; their answers are the single stream's."""
    engine = twins.batched
    first = [BatchRequest(f"doc{i}", Prompt(twins.ids(text), 2, NO_STOP), b"t", 0.0) for i, text in enumerate(TEXTS[1:4])]
    generate_all(engine, first)
    keystrokes = [BatchRequest(f"key{i}", Prompt(request.prompt.token_ids + (5, 6), 4, NO_STOP), b"t", 0.0) for i, request in enumerate(first)]
    for keystroke in keystrokes:
        engine.add(keystroke)
    seen: list[list[int]] = []
    real = engine.batch.forward_rows

    def spy(rows: list[RowInput]) -> list[torch.Tensor]:
        seen.append([len(r.token_ids) for r in rows])
        return real(rows)

    engine.batch.forward_rows = spy  # type: ignore[method-assign]
    try:
        events: dict[str, list[BatchEvent]] = {k.id: list(e) for k, e in zip(keystrokes, [[]] * 3)}
        for event in engine.step():
            events[event.id].append(event)
    finally:
        del engine.batch.forward_rows
    assert seen == [[2, 2, 2]]  # all three prompts' new tokens in the first step
    assert all(events[k.id] for k in keystrokes)  # and each has its first token
    while not engine.idle:
        for event in engine.step():
            events[event.id].append(event)
    assert assert_same_as_reference(twins, keystrokes, events) == 0


def test_a_row_stopped_inside_its_accepted_draft_ends_alone(twins: Twins, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model accepts a whole draft whose first token is EOS: the row ends "eos" with the draft's other
    tokens forwarded but not in the generation. Its end must keep only verified tokens (committing the
    forwarded count failed the step, and with it every running request of the engine)."""
    engine = twins.batched
    eos = 3
    engine.eos_ids = frozenset({eos})
    try:
        stopping = request(twins, TEXTS[5], 20, rid="stopping")
        other = request(twins, TEXTS[6], 12, rid="other")
        engine.add(stopping)
        engine.add(other)
        events: dict[str, list[BatchEvent]] = {"stopping": [], "other": []}
        while not any(row.pending is not None for row in engine._rows.values() if row.request.id == "stopping"):
            for event in engine.step():
                events[event.id].append(event)
        row = engine._rows["stopping"]
        row.draft = [eos, 5, 6, 7]
        monkeypatch.setattr(engine.batch, "c_rows", None)  # keep the draft (the C path drops drafts of busy steps)
        monkeypatch.setattr(steps, "accepted_run", lambda draft, logits: len(draft))
        for event in engine.step():
            events[event.id].append(event)
        assert events["stopping"][-1].finish == "eos"
        monkeypatch.undo()
        while not engine.idle:
            for event in engine.step():
                events[event.id].append(event)
        assert events["other"][-1].finish in ("length", "stop")  # not "error": it was not failed with it
    finally:
        engine.eos_ids = frozenset()


def test_prefill_order_counts_the_work_left_and_a_cold_prompt_ages_into_its_turn(twins: Twins) -> None:
    """The next keystroke of a document whose slot holds its prompt is prefilled before a cold prompt due a
    little sooner (its answer is a step away, the cold one's many); a cold prompt due sooner by more than its
    own prefill takes goes first. The counters say what the steps did."""
    from tabfill.completion.forward_cost import ForwardCost

    engine = twins.batched
    saved = engine.cost
    try:
        engine.cost = ForwardCost()  # unmeasured: PREFILL_TOKEN_MS_GUESS a token
        first = BatchRequest("doc", Prompt(twins.ids(TEXTS[1]), 2, NO_STOP), b"t", 0.0)
        generate_all(engine, [first])

        counters = dict(engine.counters)
        cold_a = twins.ids("\n".join(f"z{i} = {i} - {i}" for i in range(30)))  # in no slot nor store
        assert len(cold_a) > 3 * engine.prefill_chunk
        engine.add(BatchRequest("cold-a", Prompt(cold_a, 2, NO_STOP), b"t", 100.0))
        engine.add(BatchRequest("key-a", Prompt(first.prompt.token_ids + (5, 6), 2, NO_STOP), b"t", 100.05))
        order = _first_token_order(engine)
        assert order == ["key-a", "cold-a"]
        assert engine.counters["prompts"] - counters["prompts"] == 2
        assert engine.counters["slot_kept_tokens"] - counters["slot_kept_tokens"] >= len(first.prompt.token_ids)
        cold_b = "\n".join(f"y{i} = {i} + {i}" for i in range(30))
        engine.add(BatchRequest("cold-b", Prompt(twins.ids(cold_b), 2, NO_STOP), b"t", 99.0))
        engine.add(BatchRequest("key-b", Prompt(first.prompt.token_ids + (5, 6, 7), 2, NO_STOP), b"t", 100.05))
        assert _first_token_order(engine) == ["cold-b", "key-b"]
    finally:
        engine.cost = saved


def _first_token_order(engine: BatchedEngine) -> list[str]:
    order: list[str] = []
    while not engine.idle:
        order += [e.id for e in engine.step() if e.token_ids and e.id not in order]
    return order
