"""The engine's greedy loop against transformers' own greedy `generate` (the reference twin)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tabfill.completion.engine import Engine, EngineInfo
from tabfill.completion.types import CancelToken, Deadline, Prompt, StopRule
from tests.support import make_tiny_model_dir

PROMPTS = [
    "def add(a, b):\n    return a",
    "import os\n\nfor name in os.listdir(path):\n    ",
    "class Point:\n    def __init__(self, x, y):\n        self.",
    "const total = items.reduce((sum, item) => ",
    "# 漢字 😀 comment\nvalue = ",
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    directory = make_tiny_model_dir(tmp_path_factory.mktemp("engine-model"))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    loaded = Engine(model, tokenizer, "cpu", EngineInfo(str(directory), "cpu", "float32", 0.0, "prefix-only"))
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
    monkeypatch.setattr("tabfill.completion.engine.PREFILL_CHUNK_TOKENS", 64)
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
