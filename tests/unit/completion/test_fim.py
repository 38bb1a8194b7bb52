"""Prompt building per FIM family, token budgets and token healing, on tokenizers trained in the test."""

from __future__ import annotations

import dataclasses
import time

import pytest
from transformers import PreTrainedTokenizerBase

from tabfill.completion.fim import MAX_CHARS_PER_TOKEN, TEMPLATES, FimTemplate, build_prompt, detect_template
from tabfill.completion.types import Prompt, StopRule
from tests.support import FIM_FAMILIES, build_tiny_tokenizer

STOP = StopRule()
PREFIX = "import os\n\ndef read(path):\n    with open(path) as f:\n        return f.re"
SUFFIX = "\n\nprint(read('x'))\n"

# Each family's documented prompt, as the tiny byte-level tokenizer decodes it (markers spelled as in the vocab).
FORMATS = {
    "starcoder": "<fim_prefix>{P}<fim_suffix>{S}<fim_middle>",
    "qwen2.5-coder": "<|fim_prefix|>{P}<|fim_suffix|>{S}<|fim_middle|>",
    "deepseek-coder": "<｜fim▁begin｜>{P}<｜fim▁hole｜>{S}<｜fim▁end｜>",
    "codellama": "▁<PRE> {P}▁<SUF>{S}▁<MID>",
    "codegemma": "<|fim_prefix|>{P}<|fim_suffix|>{S}<|fim_middle|>",
    "codestral": "[SUFFIX]{S}[PREFIX]{P}",
}
MARKERS = {
    "starcoder": ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
    "qwen2.5-coder": ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
    "deepseek-coder": ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
    "codellama": ["▁<PRE>", "▁<SUF>", "▁<MID>"],
    "codegemma": ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
    "codestral": ["[SUFFIX]", "[PREFIX]"],
}
STOPS = {
    "starcoder": {"<|endoftext|>", "<file_sep>", "<fim_pad>"},
    "qwen2.5-coder": {"<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>"},
    "deepseek-coder": {"<|endoftext|>", "<｜end▁of▁sentence｜>", "<|EOT|>"},
    "codellama": {"<|endoftext|>", "▁<EOT>"},
    "codegemma": {"<|endoftext|>", "<|file_separator|>", "<end_of_turn>"},
    "codestral": {"<|endoftext|>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"},
}


def tokenizer_for(family: str | None, sentencepiece: bool = False) -> PreTrainedTokenizerBase:
    return build_tiny_tokenizer(FIM_FAMILIES[family] if family else (), sentencepiece=sentencepiece)


def make(
    tokenizer: PreTrainedTokenizerBase,
    prefix: str = PREFIX,
    suffix: str = SUFFIX,
    template: FimTemplate | None = None,
    *,
    prefix_budget: int = 1000,
    suffix_budget: int = 1000,
    heal: bool = True,
) -> Prompt:
    return build_prompt(
        prefix,
        suffix,
        template,
        tokenizer,
        max_prefix_tokens=prefix_budget,
        max_suffix_tokens=suffix_budget,
        max_new_tokens=16,
        stop=STOP,
        heal=heal,
    )


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(found, int)
    return found


def decode(tokenizer: PreTrainedTokenizerBase, ids: tuple[int, ...] | list[int]) -> str:
    return str(tokenizer.decode(list(ids), skip_special_tokens=False))


def kept_prefix(prefix: str, prompt: Prompt) -> str:
    return prefix[len(prefix) - prompt.prefix_chars :]


# ------------------------------------------------------------------------------------------------ families


@pytest.mark.parametrize("family", list(FIM_FAMILIES))
def test_each_family_is_detected_and_its_prompt_is_exactly_the_documented_format(family: str) -> None:
    tokenizer = tokenizer_for(family)
    template = detect_template(tokenizer)
    assert template is not None and template.name == family
    prompt = make(tokenizer, template=template)
    assert prompt.template == family
    assert (prompt.prefix_chars, prompt.suffix_chars) == (len(PREFIX), len(SUFFIX))
    expected = FORMATS[family].format(P=PREFIX, S=SUFFIX)
    if template.prefix_ends_prompt:  # SPM: the prefix ends the prompt, so its last token is healed
        assert prompt.healing_text == "re"
        assert decode(tokenizer, prompt.token_ids) + prompt.healing_text == expected
    else:
        assert prompt.healing_text == ""
        assert decode(tokenizer, prompt.token_ids) == expected

    # each marker is its one special id, exactly once, in order; no other special id (nothing adds BOS here)
    marker_ids = [token_id(tokenizer, marker) for marker in MARKERS[family]]
    specials = set(tokenizer.all_special_ids) | set(marker_ids)
    assert [t for t in prompt.token_ids if t in specials] == marker_ids
    assert prompt.token_ids[0] == marker_ids[0]

    stop_tokens = set(tokenizer.convert_ids_to_tokens(sorted(prompt.stop_token_ids)))
    assert STOPS[family] <= stop_tokens
    assert prompt.max_new_tokens == 16 and prompt.stop == STOP


def test_pieces_are_tokenized_as_whole_texts_between_the_markers() -> None:
    tokenizer = tokenizer_for("starcoder")
    prompt = make(tokenizer, template=detect_template(tokenizer))
    ids = list(prompt.token_ids)
    suffix_at = ids.index(token_id(tokenizer, "<fim_suffix>"))
    assert ids[1:suffix_at] == encode(tokenizer, PREFIX)
    assert ids[suffix_at + 1 : -1] == encode(tokenizer, SUFFIX)


def test_plain_tokenizer_gets_a_prefix_only_prompt_without_the_suffix() -> None:
    tokenizer = tokenizer_for(None)
    assert detect_template(tokenizer) is None
    prompt = make(tokenizer)
    assert prompt.template == "prefix-only"
    assert list(prompt.token_ids) == encode(tokenizer, PREFIX)[:-1]
    assert decode(tokenizer, prompt.token_ids) + prompt.healing_text == PREFIX
    assert prompt.healing_text == "re"
    assert (prompt.prefix_chars, prompt.suffix_chars) == (len(PREFIX), 0)
    assert "print" not in decode(tokenizer, prompt.token_ids)
    assert prompt.stop_token_ids == frozenset({tokenizer.eos_token_id})


def test_qwen_and_codegemma_share_marker_names_but_are_told_apart_by_their_other_tokens() -> None:
    assert detect_template(tokenizer_for("qwen2.5-coder")) is TEMPLATES["qwen2.5-coder"]
    assert detect_template(tokenizer_for("codegemma")) is TEMPLATES["codegemma"]
    # only the three shared markers: the same format, named by the more common family
    bare = build_tiny_tokenizer(["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"])
    assert detect_template(bare) is TEMPLATES["qwen2.5-coder"]
    both = build_tiny_tokenizer([*FIM_FAMILIES["qwen2.5-coder"], "<|file_separator|>"])
    assert detect_template(both) is TEMPLATES["qwen2.5-coder"]


def test_detection_needs_all_markers_and_a_foreign_template_is_refused() -> None:
    assert detect_template(build_tiny_tokenizer(["<fim_prefix>", "<fim_suffix>"])) is None
    tokenizer = tokenizer_for("starcoder")
    with pytest.raises(ValueError, match="qwen2.5-coder"):
        make(tokenizer, template=TEMPLATES["qwen2.5-coder"])


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        # CodeLlama: " <PRE> {prefix} <SUF>{suffix} <MID>" — the prefix starts with exactly one "▁"
        ("codellama", "<s> <PRE> {P} <SUF>{S} <MID>"),
        # Mistral v3 (SentencePiece): "[SUFFIX]{suffix}[PREFIX] {prefix}" — the dummy space before the prefix only
        ("codestral", "<s>[SUFFIX]{S}[PREFIX] {P}"),
        ("starcoder", "<s><fim_prefix>{P}<fim_suffix>{S}<fim_middle>"),
    ],
)
def test_sentencepiece_style_tokenizers_get_bos_and_exact_spaces(family: str, expected: str) -> None:
    tokenizer = tokenizer_for(family, sentencepiece=True)
    template = detect_template(tokenizer)
    assert template is not None and template.name == family
    prefix, suffix = "def f(x):\n    return", " x\n"
    prompt = make(tokenizer, prefix, suffix, template, heal=False)
    assert prompt.token_ids[0] == tokenizer.bos_token_id  # this tokenizer adds BOS by default
    assert decode(tokenizer, prompt.token_ids) == expected.format(P=prefix, S=suffix)
    tokens = tokenizer.convert_ids_to_tokens(list(prompt.token_ids))
    after_prefix_marker = tokens[tokens.index(MARKERS[family][-1 if family == "codestral" else 0]) + 1]
    after_suffix_marker = tokens[tokens.index(MARKERS[family][0 if family == "codestral" else 1]) + 1]
    assert after_prefix_marker == ("def" if family == "starcoder" else "▁def")  # never "▁▁def"
    assert after_suffix_marker.startswith("▁")  # the suffix's own space, not a second dummy one
    assert tokenizer.convert_tokens_to_string([after_suffix_marker]).count(" ") <= 1


def test_byte_level_tokenizers_get_no_bos() -> None:
    tokenizer = tokenizer_for("deepseek-coder")
    prompt = make(tokenizer, template=detect_template(tokenizer))
    assert tokenizer.bos_token_id not in prompt.token_ids


def test_special_token_spellings_in_the_document_stay_text() -> None:
    tokenizer = tokenizer_for("qwen2.5-coder")
    template = detect_template(tokenizer)
    prefix = "MARK = '<|fim_suffix|>'  # <|endoftext|>\nx = '<|fim_middle|>"
    suffix = "'<|file_sep|>\n"
    prompt = make(tokenizer, prefix, suffix, template)
    marker_ids = [token_id(tokenizer, marker) for marker in MARKERS["qwen2.5-coder"]]
    specials = set(tokenizer.all_special_ids)
    assert [t for t in prompt.token_ids if t in specials] == marker_ids
    assert decode(tokenizer, prompt.token_ids) == f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    # prefix-only, where the spelling is also the last (healed) text
    plain = tokenizer_for(None)
    prompt = make(plain, "end = '<|endoftext|>")
    assert plain.eos_token_id not in prompt.token_ids and prompt.healing_text
    assert decode(plain, prompt.token_ids) + prompt.healing_text == "end = '<|endoftext|>"


# ------------------------------------------------------------------------------------------------ budgets

LINES = [f"value_{i} = compute({i}, {i * 7})\n" for i in range(60)]
LONG_PREFIX = "".join(LINES) + "result = value_3"


@pytest.mark.parametrize("budget", [9, 20, 57, 200])
def test_prefix_is_cut_at_a_line_start_and_nothing_more_would_fit(budget: int) -> None:
    tokenizer = tokenizer_for("starcoder")
    prompt = make(tokenizer, LONG_PREFIX, "", detect_template(tokenizer), prefix_budget=budget)
    kept = kept_prefix(LONG_PREFIX, prompt)
    start = len(LONG_PREFIX) - len(kept)
    assert 0 < start and LONG_PREFIX[start - 1] == "\n"  # starts at a line start
    kept_ids = encode(tokenizer, kept)
    assert len(kept_ids) <= budget
    assert list(prompt.token_ids) == [prompt.token_ids[0], *kept_ids, *prompt.token_ids[-2:]]
    previous_line_start = LONG_PREFIX.rfind("\n", 0, start - 1) + 1
    assert len(encode(tokenizer, LONG_PREFIX[previous_line_start:])) > budget  # one more whole line is too many


def test_prefix_only_budget_counts_the_healed_token() -> None:
    tokenizer = tokenizer_for(None)
    prompt = make(tokenizer, LONG_PREFIX, prefix_budget=30)
    kept = kept_prefix(LONG_PREFIX, prompt)
    assert kept.startswith("value_") and len(encode(tokenizer, kept)) <= 30
    assert decode(tokenizer, prompt.token_ids) + prompt.healing_text == kept
    assert prompt.healing_text == "3"


def test_a_single_line_over_budget_is_cut_inside_at_a_token_boundary() -> None:
    tokenizer = tokenizer_for("starcoder")
    line = "x = [" + ", ".join(str(i) for i in range(200))
    prefix = "import os\n" + line
    prompt = make(tokenizer, prefix, "", detect_template(tokenizer), prefix_budget=16)
    kept = kept_prefix(prefix, prompt)
    assert line.endswith(kept) and 0 < len(kept) < len(line)
    assert 14 <= len(encode(tokenizer, kept)) <= 16
    # the cut is at a boundary of the line's own tokenization: its tokens end exactly at kept's start
    line_ids = encode(tokenizer, line)
    assert any(decode(tokenizer, line_ids[i:]) == kept for i in range(len(line_ids)))


def test_a_huge_document_is_not_tokenized_whole() -> None:
    tokenizer = tokenizer_for(None)
    prefix = "".join(f"row_{i} = table[{i}]\n" for i in range(50_000)) + "total = row_"  # ~1 MB
    assert len(prefix) > 1_000_000
    make(tokenizer, prefix[-5000:], prefix_budget=100)  # warm up
    started = time.perf_counter()
    prompt = make(tokenizer, prefix, prefix_budget=100)
    elapsed = time.perf_counter() - started
    assert prompt == make(tokenizer, prefix[-100 * MAX_CHARS_PER_TOKEN :], prefix_budget=100)
    assert prompt.prefix_chars < 100 * MAX_CHARS_PER_TOKEN and kept_prefix(prefix, prompt).startswith("row_")
    assert elapsed < 0.05, elapsed  # tokenizing 1 MB takes far longer than this


def test_suffix_keeps_whole_lines_from_its_start_within_budget() -> None:
    tokenizer = tokenizer_for("qwen2.5-coder")
    suffix = ")\n" + "".join(f"print({i}, {i * 3})\n" for i in range(100))
    prompt = make(tokenizer, "call(", suffix, detect_template(tokenizer), suffix_budget=30)
    kept = suffix[: prompt.suffix_chars]
    assert kept.endswith("\n") and 0 < len(kept) < len(suffix)
    kept_ids = encode(tokenizer, kept)
    assert len(kept_ids) <= 30
    assert len(encode(tokenizer, suffix[: suffix.index("\n", len(kept)) + 1])) > 30  # the next line does not fit
    assert decode(tokenizer, prompt.token_ids) == f"<|fim_prefix|>call(<|fim_suffix|>{kept}<|fim_middle|>"


def test_a_first_suffix_line_over_budget_is_cut_inside_and_a_zero_budget_drops_the_suffix() -> None:
    tokenizer = tokenizer_for("starcoder")
    template = detect_template(tokenizer)
    suffix = ", ".join(str(i) for i in range(300)) + ")\nnext_line()\n"
    prompt = make(tokenizer, "f(", suffix, template, suffix_budget=12)
    kept = suffix[: prompt.suffix_chars]
    assert 0 < len(kept) < suffix.index("\n") and 10 <= len(encode(tokenizer, kept)) <= 12
    empty = make(tokenizer, "f(", suffix, template, suffix_budget=0)
    assert empty.suffix_chars == 0
    assert decode(tokenizer, empty.token_ids) == "<fim_prefix>f(<fim_suffix><fim_middle>"


def test_zero_prefix_budget_gives_an_empty_prefix() -> None:
    tokenizer = tokenizer_for(None)
    prompt = make(tokenizer, PREFIX, prefix_budget=0)
    assert prompt.token_ids == () and prompt.prefix_chars == 0 and prompt.healing_text == ""


# ------------------------------------------------------------------------------------------------ healing

HEALING_CASES = [
    "def f(x):\n    ret",
    "def f(x):\n",
    "def f(x):\n    ",
    "x",
    "# 漢字 かな 😀 é\nname = '😀",
    "label = '🦀🦀",  # not in the training text: byte tokens, several per character
    "s = '你好，世界",
]


@pytest.mark.parametrize("prefix", HEALING_CASES)
def test_healing_removes_the_last_token_and_the_prompt_reconstructs_the_prefix(prefix: str) -> None:
    tokenizer = tokenizer_for(None)
    prompt = make(tokenizer, prefix)
    ids = encode(tokenizer, prefix)
    head = decode(tokenizer, prompt.token_ids)
    assert "\ufffd" not in head
    assert head + prompt.healing_text == prefix
    assert prompt.healing_text and len(prompt.token_ids) < len(ids)
    if "\ufffd" not in decode(tokenizer, ids[-1:]):
        assert list(prompt.token_ids) == list(ids[:-1])  # exactly one whole token removed
        assert prompt.healing_text == decode(tokenizer, ids[-1:])


def test_healing_examples() -> None:
    tokenizer = tokenizer_for(None)
    ret = make(tokenizer, "def f(x):\n    ret")
    assert ret.healing_text in ("t", "et", "ret", " ret")  # the text of the last token (here "Ġre" + "t")
    assert make(tokenizer, "def f(x):\n").healing_text == "\n"
    crab = make(tokenizer, "label = '🦀🦀")
    assert crab.healing_text.endswith("🦀") and "\ufffd" not in decode(tokenizer, crab.token_ids)


def test_healing_only_when_the_prefix_ends_the_prompt() -> None:
    plain = tokenizer_for(None)
    assert make(plain, heal=False).healing_text == ""
    assert list(make(plain, heal=False).token_ids) == encode(plain, PREFIX)
    codestral = tokenizer_for("codestral")
    spm = make(codestral, template=detect_template(codestral))
    assert spm.healing_text == "re" and spm.token_ids[-1] != token_id(codestral, "[PREFIX]")
    no_heal = make(codestral, template=detect_template(codestral), heal=False)
    assert no_heal.healing_text == "" and len(no_heal.token_ids) == len(spm.token_ids) + 1
    # an SPM prompt with an empty prefix ends with the prefix marker: nothing to heal
    empty = make(codestral, "", SUFFIX, detect_template(codestral))
    assert empty.healing_text == "" and decode(codestral, empty.token_ids) == f"[SUFFIX]{SUFFIX}[PREFIX]"


# ------------------------------------------------------------------------------------------------ edge text


@pytest.mark.parametrize("family", list(FIM_FAMILIES))
@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [("", SUFFIX), (PREFIX, ""), ("", ""), ("# 漢字 😀 é\nname = '😀", "' + '🦀' # ünï\n"), ("\r\nx = 1\r\n", "\r\n")],
)
def test_empty_and_non_ascii_text_round_trips(family: str, prefix: str, suffix: str) -> None:
    tokenizer = tokenizer_for(family)
    template = detect_template(tokenizer)
    assert template is not None
    prompt = make(tokenizer, prefix, suffix, template)
    assert (prompt.prefix_chars, prompt.suffix_chars) == (len(prefix), len(suffix))
    lead = " " if template.prefix_space == "always" and prefix else ""
    expected = FORMATS[family].replace("<PRE> {P}", "<PRE>{P}").format(P=lead + prefix, S=suffix)
    assert decode(tokenizer, prompt.token_ids) + prompt.healing_text == expected
    assert bool(prompt.healing_text) == (template.prefix_ends_prompt and bool(prefix))


def test_build_prompt_is_pure() -> None:
    tokenizer = tokenizer_for("qwen2.5-coder")
    template = detect_template(tokenizer)
    first = make(tokenizer, LONG_PREFIX, SUFFIX, template, prefix_budget=40)
    make(tokenizer, "other text <|fim_pad|>", "more", template, prefix_budget=3)
    assert make(tokenizer, LONG_PREFIX, SUFFIX, template, prefix_budget=40) == first
    assert dataclasses.replace(first) == first
