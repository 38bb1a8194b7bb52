"""Prompt building per FIM family, budgets and token healing (tokenizers built in the test)."""

from __future__ import annotations

import pytest

from tabfill.completion.fim import build_prompt, detect_template, truncate_prefix, truncate_suffix
from tabfill.completion.types import StopRule
from tests.support import FIM_FAMILIES, build_tiny_tokenizer

STOP = StopRule()
PREFIX = "import os\n\ndef read(path):\n    with open(path) as f:\n        return f.re"
SUFFIX = "\n\nprint(read('x'))\n"

# What each family's prompt must decode to (special tokens kept), prefix P and suffix S.
FORMATS = {
    "starcoder": "<fim_prefix>{P}<fim_suffix>{S}<fim_middle>",
    "qwen2.5-coder": "<|fim_prefix|>{P}<|fim_suffix|>{S}<|fim_middle|>",
    "deepseek-coder": "<｜fim▁begin｜>{P}<｜fim▁hole｜>{S}<｜fim▁end｜>",
    "codellama": "▁<PRE> {P}▁<SUF>{S}▁<MID>",
    "codegemma": "<|fim_prefix|>{P}<|fim_suffix|>{S}<|fim_middle|>",
    "codestral": "[SUFFIX]{S}[PREFIX]{P}",
}
STOPS = {
    "starcoder": {"<|endoftext|>", "<file_sep>"},
    "qwen2.5-coder": {"<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>"},
    "deepseek-coder": {"<｜end▁of▁sentence｜>", "<|EOT|>"},
    "codellama": {"▁<EOT>"},
    "codegemma": {"<|file_separator|>"},
    "codestral": {"[PREFIX]", "[SUFFIX]"},
}


def prompt_for(family: str | None, prefix: str = PREFIX, suffix: str = SUFFIX, **budgets: int):
    tokenizer = build_tiny_tokenizer(FIM_FAMILIES[family] if family else ())
    template = detect_template(tokenizer)
    prompt = build_prompt(
        prefix,
        suffix,
        template,
        tokenizer,
        max_prefix_tokens=budgets.get("max_prefix_tokens", 1000),
        max_suffix_tokens=budgets.get("max_suffix_tokens", 1000),
        max_new_tokens=16,
        stop=STOP,
    )
    return tokenizer, template, prompt


@pytest.mark.parametrize("family", list(FIM_FAMILIES))
def test_family_is_detected_and_formatted_exactly(family: str) -> None:
    tokenizer, template, prompt = prompt_for(family)
    assert template is not None and template.name == family
    assert prompt.template == family
    decoded = tokenizer.decode(list(prompt.token_ids), skip_special_tokens=False)
    expected = FORMATS[family].format(P=PREFIX, S=SUFFIX)
    if family == "codestral":  # the prefix ends the prompt, so its last token is healed
        assert decoded + prompt.healing_text == expected
        assert prompt.healing_text and PREFIX.endswith(prompt.healing_text)
    else:
        assert decoded == expected
        assert prompt.healing_text == ""
    # every marker is one special id, never split into pieces, and no other special id slips in
    markers = [marker for marker in FIM_FAMILIES[family] if marker in FORMATS[family]]
    specials = set(tokenizer.all_special_ids)
    assert sorted(t for t in prompt.token_ids if t in specials) == sorted(tokenizer.convert_tokens_to_ids(markers))
    stop_tokens = {tokenizer.convert_ids_to_tokens(token) for token in prompt.stop_token_ids}
    assert STOPS[family] <= stop_tokens


def test_plain_tokenizer_gets_a_prefix_only_prompt_with_healing() -> None:
    tokenizer, template, prompt = prompt_for(None)
    assert template is None and prompt.template == "prefix-only"
    decoded = tokenizer.decode(list(prompt.token_ids))
    assert decoded + prompt.healing_text == PREFIX
    assert prompt.healing_text and "re" in prompt.healing_text
    assert prompt.suffix_chars == 0 and prompt.prefix_chars == len(PREFIX)
    assert tokenizer.eos_token_id in prompt.stop_token_ids


def test_qwen_and_codegemma_share_marker_names_but_not_families() -> None:
    qwen = detect_template(build_tiny_tokenizer(FIM_FAMILIES["qwen2.5-coder"]))
    gemma = detect_template(build_tiny_tokenizer(FIM_FAMILIES["codegemma"]))
    assert qwen is not None and gemma is not None
    assert (qwen.name, gemma.name) == ("qwen2.5-coder", "codegemma")


def test_prefix_is_cut_at_a_line_boundary_within_budget() -> None:
    tokenizer = build_tiny_tokenizer()
    lines = [f"value_{i} = compute({i}, {i * 7})\n" for i in range(60)]
    prefix = "".join(lines) + "result = value_3"
    for budget in (20, 57, 200):
        kept, ids = truncate_prefix(tokenizer, prefix, budget)
        assert len(ids) <= budget
        assert prefix.endswith(kept)
        start = len(prefix) - len(kept)
        assert start == 0 or prefix[start - 1] == "\n", (budget, kept[:30])
        # nothing more fits: adding the previous whole line would exceed the budget
        if start > 0:
            previous_start = prefix.rfind("\n", 0, start - 1) + 1
            assert len(tokenizer(prefix[previous_start:], add_special_tokens=False)["input_ids"]) > budget
    assert truncate_prefix(tokenizer, prefix, 10_000) == (prefix, tokenizer(prefix, add_special_tokens=False)["input_ids"])


def test_a_single_line_over_budget_is_cut_inside_at_a_token_boundary() -> None:
    tokenizer = build_tiny_tokenizer()
    prefix = "x = [" + ", ".join(str(i) for i in range(200))
    kept, ids = truncate_prefix(tokenizer, prefix, 16)
    assert 0 < len(ids) <= 16 and prefix.endswith(kept) and len(kept) < len(prefix)


def test_suffix_is_right_truncated_at_a_line_boundary() -> None:
    tokenizer = build_tiny_tokenizer()
    suffix = ")\n" + "".join(f"print({i})\n" for i in range(100))
    kept, ids = truncate_suffix(tokenizer, suffix, 30)
    assert len(ids) <= 30 and suffix.startswith(kept) and kept.endswith("\n")
    assert truncate_suffix(tokenizer, suffix, 0) == ("", [])
    _, _, prompt = prompt_for("starcoder", suffix=suffix, max_suffix_tokens=30)
    assert prompt.suffix_chars == len(kept)


@pytest.mark.parametrize("prefix", ["", "\n", "# 漢字 😀 é\nname = '😀", "def f():\n    "])
def test_edge_prefixes_round_trip(prefix: str) -> None:
    tokenizer, _, prompt = prompt_for(None, prefix=prefix)
    assert tokenizer.decode(list(prompt.token_ids)) + prompt.healing_text == prefix
    tokenizer, _, fim = prompt_for("starcoder", prefix=prefix, suffix="")
    assert tokenizer.decode(list(fim.token_ids), skip_special_tokens=False) == f"<fim_prefix>{prefix}<fim_suffix><fim_middle>"


def test_build_prompt_is_pure() -> None:
    _, _, first = prompt_for("qwen2.5-coder")
    _, _, second = prompt_for("qwen2.5-coder")
    assert first == second
