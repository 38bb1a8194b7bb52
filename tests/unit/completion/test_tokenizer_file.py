"""The front-end's tokenizer without transformers: the same prompts as the transformers tokenizer it mirrors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabfill.completion.fim import build_prompt, detect_template
from tabfill.completion.tokenizer_file import CharTokenizer, FileTokenizer, load_tokenizer, tokenizer_directory
from tabfill.completion.types import StopRule
from tests.support import FIM_FAMILIES, build_tiny_tokenizer

SOURCE = (Path(__file__).resolve().parents[3] / "tabfill" / "completion" / "fim.py").read_text()


def _saved(tmp_path: Path, family: str | None, sentencepiece: bool = False) -> tuple[object, FileTokenizer]:
    reference = build_tiny_tokenizer(FIM_FAMILIES[family] if family else (), sentencepiece=sentencepiece)
    reference.save_pretrained(tmp_path)
    return reference, FileTokenizer.from_directory(tmp_path)


@pytest.mark.parametrize(("family", "sentencepiece"), [("qwen2.5-coder", False), ("codellama", True), ("starcoder", False), (None, False)])
def test_prompts_equal_the_transformers_tokenizer(tmp_path: Path, family: str | None, sentencepiece: bool) -> None:
    reference, ours = _saved(tmp_path, family, sentencepiece)
    template = detect_template(reference)
    assert (template and template.name) == (detect_template(ours) and detect_template(ours).name)  # type: ignore[union-attr]
    context = "# from other.py:\n# def helper(x): <|endoftext|> é\n"
    for offset in (40, 1500, 6000, len(SOURCE) - 10):
        expected = build_prompt(SOURCE[:offset], SOURCE[offset:], template, reference, max_prefix_tokens=200,
                                max_suffix_tokens=60, max_new_tokens=24, stop=StopRule(), context=context, max_context_tokens=40)
        actual = build_prompt(SOURCE[:offset], SOURCE[offset:], template, ours, max_prefix_tokens=200,
                              max_suffix_tokens=60, max_new_tokens=24, stop=StopRule(), context=context, max_context_tokens=40)
        assert actual == expected
        assert ours.decode(actual.token_ids) == reference.decode(list(expected.token_ids), skip_special_tokens=False)


def test_char_tokenizer_counts_code_points_and_round_trips() -> None:
    tokenizer = CharTokenizer()
    text = "def f(x):\n    return 'é😀'\n"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert len(encoded["input_ids"]) == len(text)
    assert tokenizer.decode(encoded["input_ids"]) == text
    assert detect_template(tokenizer) is None  # prefix-only: no FIM markers without the real tokenizer
    prompt = build_prompt("x = 1\n" * 200 + "y =", "", None, tokenizer, max_prefix_tokens=60, max_suffix_tokens=0,
                          max_new_tokens=8, stop=StopRule(), heal=False)
    assert tokenizer.decode(prompt.token_ids) == "x = 1\n" * 9 + "y ="  # whole lines within 60 characters


def test_tokenizer_directory_finds_what_is_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").write_text("{}")
    assert tokenizer_directory(str(model)) == model
    assert tokenizer_directory(str(model / "tokenizer.json")) == model
    gguf = model / "weights.gguf"
    gguf.write_bytes(b"GGUF")
    assert tokenizer_directory(str(gguf)) == model  # the tokenizer.json beside a GGUF
    hub = tmp_path / "hub"
    snapshot = hub / "models--Org--Coder-1B" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert tokenizer_directory("Org/Coder-1B") == snapshot
    assert tokenizer_directory("Org/Missing") is None
    assert tokenizer_directory("") is None
    assert isinstance(load_tokenizer("Org/Missing"), CharTokenizer)


def test_a_broken_tokenizer_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("not json")
    with pytest.raises(ValueError, match="cannot read the tokenizer"):
        FileTokenizer.from_directory(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    build_tiny_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(ValueError, match="not a JSON object"):
        FileTokenizer.from_directory(tmp_path)
