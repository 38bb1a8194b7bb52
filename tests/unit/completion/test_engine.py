"""The engine's greedy loop against transformers' own greedy `generate` (the reference twin)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tabfill.completion.engine import Engine
from tabfill.completion.types import EngineInfo
from tabfill.completion.prefix_cache import PrefixCache
from tabfill.completion.runners import LeanRunner, make_runner
from tabfill.completion.types import CancelToken, Deadline, Prompt, StopRule
from tests.support import make_tiny_model_dir

PROMPTS = [
    "def add(a, b):\n    return a",
    "import os\n\nfor name in os.listdir(path):\n    ",
    "class Point:\n    def __init__(self, x, y):\n        self.",
    "const total = items.reduce((sum, item) => ",
    "# 漢字 😀 comment\nvalue = ",
]


@pytest.fixture(scope="module", params=["transformers", "lean"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The engine on transformers' forward, and on the lean kernels/ forward with a prefix store of small
    blocks (so short prompts exercise it)."""
    directory = make_tiny_model_dir(tmp_path_factory.mktemp("engine-model"))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    info = EngineInfo(str(directory), "cpu", "float32", 0.0, "prefix-only")
    if request.param == "lean":
        runner = make_runner(model, torch.device("cpu"), max_tokens=2048, quantize=None)
        assert isinstance(runner, LeanRunner)
        loaded = Engine(model, tokenizer, "cpu", info, runner=runner, prefix_cache=PrefixCache(8, 4 * 2**20))
    else:
        loaded = Engine(model, tokenizer, "cpu", info)
    loaded.eos_ids = frozenset()  # a random model may pick EOS anywhere; these tests run to their limits
    yield loaded


def reference_greedy(engine: Engine, ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = engine.model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return [int(t) for t in out[0, len(ids) :]]


NO_STOP = StopRule(single_line=False, block_indent=0, max_lines=10_000)


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_tokens_equal_transformers_generate(engine: Engine, text: str) -> None:
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = Prompt(tuple(ids), max_new_tokens=12, stop=NO_STOP)
    # no EOS and no stops, so both run the full length
    generation = engine.generate(prompt, CancelToken(), Deadline())
    assert list(generation.token_ids) == reference_greedy(engine, ids, 12)
    assert generation.text == engine.tokenizer.decode(list(generation.token_ids))
    assert generation.finish_reason == "length"
    assert generation.prompt_tokens == len(ids)


def test_prefill_in_chunks_equals_one_pass(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "\n".join(f"x{i} = {i} * {i}" for i in range(120))
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 300
    monkeypatch.setattr("tabfill.kernels.steps.PREFILL_CHUNK_TOKENS", 64)
    chunked = engine.generate(Prompt(tuple(ids), 6, NO_STOP), CancelToken(), Deadline())
    assert list(chunked.token_ids) == reference_greedy(engine, ids, 6)


def test_healing_constrains_the_first_tokens(engine: Engine) -> None:
    text = "def f(x):\n    return x\n"
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    healing = engine.tokenizer.decode(ids[-1:])
    generation = engine.generate(Prompt(tuple(ids[:-1]), 8, NO_STOP, healing_text=healing), CancelToken(), Deadline())
    decoded = engine.tokenizer.decode(list(generation.token_ids))
    assert decoded.startswith(healing)
    assert decoded[len(healing) :].startswith(generation.text)  # the stop rule may cut the tail


def test_stop_rule_cuts_single_line(engine: Engine) -> None:
    ids = engine.tokenizer("x = 1\ny = 2\n", add_special_tokens=False)["input_ids"]
    generation = engine.generate(Prompt(tuple(ids), 64, StopRule(single_line=True)), CancelToken(), Deadline())
    assert "\n" not in generation.text
    if generation.finish_reason == "stop":
        full = engine.tokenizer.decode(list(generation.token_ids))
        assert full.startswith(generation.text) and "\n" in full[len(generation.text) :]


def test_cancel_and_deadline_stop_within_a_step(engine: Engine) -> None:
    ids = engine.tokenizer("value = ", add_special_tokens=False)["input_ids"]
    cancelled = CancelToken()
    cancelled.cancel()
    result = engine.generate(Prompt(tuple(ids), 50, NO_STOP), cancelled, Deadline())
    assert result.finish_reason == "cancelled" and result.token_ids == ()

    expired = engine.generate(Prompt(tuple(ids), 50, NO_STOP), CancelToken(), Deadline.after_ms(0.001))
    assert expired.finish_reason == "deadline" and len(expired.token_ids) <= 1

    token = CancelToken()
    threading.Timer(0.05, token.cancel).start()
    long = engine.generate(Prompt(tuple(ids), 100_000, NO_STOP), token, Deadline())
    assert long.finish_reason == "cancelled" and 0 < len(long.token_ids) < 100_000


def test_healing_that_cannot_be_matched_gives_up_with_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = engine.tokenizer("x = ", add_special_tokens=False)["input_ids"]
    # a decoder that drops the leading space, as SentencePiece does for a lone first token
    real_decode = engine.tokenizer.decode
    monkeypatch.setattr(engine.tokenizer, "decode", lambda token_ids, **kw: real_decode(token_ids, **kw).lstrip(" ") + "\u2400")
    generation = engine.generate(Prompt(tuple(ids), 8, NO_STOP, healing_text=" val"), CancelToken(), Deadline())
    assert (generation.text, generation.finish_reason) == ("", "stop")
    assert len(generation.token_ids) == 1


# ----------------------------------------------------------------------------- not recomputing
def _ids(engine: Engine, text: str) -> list[int]:
    return list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def _spec_prompts(count: int) -> list[str]:
    """Code-like prompts with repetition (so prompt lookup proposes drafts) and without."""
    import random

    rng = random.Random(5)
    names = ["total", "item", "value", "count", "result", "node", "self.x", "args", "data", "key"]
    prompts = []
    for i in range(count):
        a, b, c = rng.sample(names, 3)
        lines = [f"{a} = {b} + {rng.randint(0, 99)}", f"for {c} in {b}:", f"    {a} += {c}", f"print({a}, {b})"]
        rng.shuffle(lines)
        body = "\n".join(lines * rng.randint(1, 3))
        prompts.append(body + ("\n" if i % 3 else f"\n{lines[0][: rng.randint(1, len(lines[0]))]}"))
    return prompts


def test_speculative_drafts_give_token_identical_greedy_output_on_200_prompts(engine: Engine) -> None:
    proposed = accepted = 0
    for text in _spec_prompts(200):
        ids = _ids(engine, text)
        prompt = Prompt(tuple(ids), max_new_tokens=16, stop=NO_STOP)
        engine.draft_tokens = 0
        plain = engine.generate(prompt, CancelToken(), Deadline())
        engine.draft_tokens = 6
        # the previous suggestion as the draft corpus, with every fourth token wrong
        corpus = [t if i % 4 else (t + 1) % len(engine.tokenizer) for i, t in enumerate(plain.token_ids[3:])]
        drafted = engine.generate(prompt, CancelToken(), Deadline(), corpus=corpus)
        assert drafted.token_ids == plain.token_ids, text
        proposed += drafted.draft_tokens
        accepted += drafted.accepted_draft_tokens
    # the drafts were really exercised, both ways
    assert accepted > 100 and proposed > accepted


def test_a_prompt_differing_in_one_token_at_any_position_never_reuses_stale_kv(engine: Engine) -> None:
    base = _ids(engine, "def area(width, height):\n    return width * height\n\nprint(area(")
    fresh_engine = Engine(engine.model, engine.tokenizer, "cpu", engine.info)
    fresh_engine.eos_ids = frozenset()
    for position in range(len(base)):
        engine.generate(Prompt(tuple(base), 4, NO_STOP), CancelToken(), Deadline())  # the live slot holds `base`
        changed = list(base)
        changed[position] = (changed[position] + 7) % len(engine.tokenizer)
        reused = engine.generate(Prompt(tuple(changed), 6, NO_STOP), CancelToken(), Deadline())
        fresh_engine._live = []
        fresh = fresh_engine.generate(Prompt(tuple(changed), 6, NO_STOP), CancelToken(), Deadline())
        assert reused.token_ids == fresh.token_ids, position
        assert reused.cached_tokens == position


def test_a_keystroke_that_extends_the_prompt_prefills_only_the_new_tokens(engine: Engine) -> None:
    ids = _ids(engine, "import os\n\nfor name in os.listdir(path):\n    print(name)\n")
    engine.generate(Prompt(tuple(ids[:-3]), 4, NO_STOP), CancelToken(), Deadline())
    extended = engine.generate(Prompt(tuple(ids), 4, NO_STOP), CancelToken(), Deadline())
    assert extended.cached_tokens == len(ids) - 3
    fresh_engine = Engine(engine.model, engine.tokenizer, "cpu", engine.info)
    fresh_engine.eos_ids = frozenset()
    fresh = fresh_engine.generate(Prompt(tuple(ids), 4, NO_STOP), CancelToken(), Deadline())
    # NOTE: the fresh engine runs transformers' forward: the tokens are the same, the probabilities equal up to
    # the float order of two different forwards (seen: 1e-5 relative)
    assert extended == dataclasses.replace(
        fresh, timings=extended.timings, cached_tokens=extended.cached_tokens, confidence=extended.confidence
    )
    assert [i for i, _ in extended.confidence] == [i for i, _ in fresh.confidence]
    assert [p for _, p in extended.confidence] == pytest.approx([p for _, p in fresh.confidence], rel=1e-3)


def test_a_generation_stopped_by_its_deadline_resumes_to_the_same_tokens(engine: Engine) -> None:
    ids = _ids(engine, "class Point:\n    def __init__(self, x, y):\n        self.")
    whole = engine.generate(Prompt(tuple(ids), 20, NO_STOP), CancelToken(), Deadline())
    for other_in_between in (False, True):
        first = engine.generate(Prompt(tuple(ids), 20, NO_STOP), CancelToken(), Deadline.after_ms(0.001))
        assert first.finish_reason == "deadline" and first.continuation is not None
        assert len(first.token_ids) < 20
        if other_in_between:  # another request used the live slot meanwhile: resume re-prefills what changed
            engine.generate(Prompt(tuple(_ids(engine, "x = [1, 2, 3]\n")), 3, NO_STOP), CancelToken(), Deadline())
        rest = engine.resume(first.continuation, CancelToken(), Deadline())  # type: ignore[arg-type]
        assert rest.finish_reason == "length"
        assert rest.token_ids == whole.token_ids and rest.text == whole.text


@pytest.mark.parametrize("remaining", [" val", "x", "  ", "(", "def", "\n    ret", "😀", "é"])
def test_healing_mask_equals_a_scan_of_the_whole_vocabulary(engine: Engine, remaining: str) -> None:
    texts = engine.token_texts()
    expected = {
        i for i, text in enumerate(texts)
        if text and "\ufffd" not in text and (text.startswith(remaining) or remaining.startswith(text))
    }
    mask = engine._healing_mask(remaining, len(texts))
    assert set(torch.nonzero(mask).flatten().tolist()) == expected


def test_switching_documents_reuses_the_prefix_store_and_answers_the_same(engine: Engine) -> None:
    first = _ids(engine, "import os\n\nfor name in os.listdir(path):\n    print(name, os.path.getsize(name))\n")
    other = _ids(engine, "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n")
    before = engine.generate(Prompt(tuple(first), 6, NO_STOP), CancelToken(), Deadline())
    engine.generate(Prompt(tuple(other), 6, NO_STOP), CancelToken(), Deadline())  # the live slot now holds `other`
    again = engine.generate(Prompt(tuple(first), 6, NO_STOP), CancelToken(), Deadline())
    assert again.token_ids == before.token_ids and again.text == before.text
    if engine.prefix_cache is not None:
        block = engine.prefix_cache.block_tokens
        assert again.cached_tokens == (len(first) - 1) // block * block > 0
    else:
        assert again.cached_tokens == 0
