"""Cross-file context in the prompt: comments before the prefix, within budget, stable across keystrokes."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from tabfill.completion.fim import TEMPLATES, FimTemplate, build_prompt
from tabfill.completion.prompt import cross_file_header, cursor_context, render_context
from tabfill.completion.types import CompletionRequest, Prompt, Settings, StopRule
from tabfill.syntax_cache.workspace import Snippet
from tabfill.syntax_cache.tree import SyntaxTree
from tests.support import FIM_FAMILIES, build_tiny_tokenizer

HEADER = "# from geo.py:\n# def area(r):\n#     Area of a circle.\n# recently edited in b.py:\n# x = 1\n"
PREFIX = "from geo import area\n\ndef ring(r1, r2):\n    return area(r1) - ar"


def make(tokenizer: PreTrainedTokenizerBase, template: FimTemplate | None, prefix: str = PREFIX, context: str = HEADER,
         prefix_budget: int = 1000, context_budget: int = 200) -> Prompt:
    return build_prompt(prefix, "\n", template, tokenizer, max_prefix_tokens=prefix_budget, max_suffix_tokens=64,
                        max_new_tokens=8, stop=StopRule(), context=context, max_context_tokens=context_budget)


@pytest.mark.parametrize("family", [None, "qwen2.5-coder", "codellama", "codestral"])
def test_context_comes_right_before_the_prefix(family: str | None) -> None:
    tokenizer = build_tiny_tokenizer(FIM_FAMILIES[family] if family else (), sentencepiece=family in ("codellama", "codestral"))
    template = TEMPLATES[family] if family else None
    prompt = make(tokenizer, template)
    decoded = str(tokenizer.decode(list(prompt.token_ids)))
    assert prompt.context_chars == len(HEADER)
    assert HEADER + PREFIX[: len(PREFIX) - len(prompt.healing_text)] in decoded.replace("▁", " ").replace(" " + HEADER, HEADER)


def test_the_context_part_of_the_prompt_is_stable_while_typing() -> None:
    tokenizer = build_tiny_tokenizer(FIM_FAMILIES["qwen2.5-coder"])
    template = TEMPLATES["qwen2.5-coder"]
    first = make(tokenizer, template, PREFIX)
    second = make(tokenizer, template, PREFIX + "ea(r2)")
    header_ids = len(tokenizer(HEADER, add_special_tokens=False)["input_ids"])
    shared = 1 + header_ids  # the prefix marker and the header
    assert first.token_ids[:shared] == second.token_ids[:shared]


def test_context_is_cut_at_whole_lines_within_its_budget_and_takes_from_the_prefix_budget() -> None:
    tokenizer = build_tiny_tokenizer(())
    full = make(tokenizer, None, context_budget=1000, prefix_budget=1000)
    small = make(tokenizer, None, context_budget=12, prefix_budget=1000)
    assert 0 < small.context_chars < full.context_chars and HEADER[: small.context_chars].endswith("\n")
    tight = make(tokenizer, None, prefix_budget=40, context_budget=1000)
    assert len(tight.token_ids) <= 40 + 1  # + BOS, if the tokenizer adds one
    assert tight.context_chars <= len(HEADER) and tight.prefix_chars > 0  # the context gets at most half
    none = make(tokenizer, None, context="", context_budget=1000)
    assert none.context_chars == 0


def test_service_header_follows_the_settings() -> None:
    snippets = (Snippet("geo.py", "def area(r):", "definition"),)
    request = CompletionRequest("file:///a.py", "python", 1, "x", 1, cross_file=snippets)
    assert cross_file_header(request, Settings()) == "# from geo.py:\n# def area(r):\n"
    assert cross_file_header(request, Settings(cross_file_context=False)) == ""
    assert cross_file_header(request, Settings(cross_file_tokens=0)) == ""


def test_cursor_context_uses_the_snapshot_only_for_the_same_text() -> None:
    text = "def f(a):\n    return g(a, )\n"
    snapshot = SyntaxTree("python", text).snapshot(text)
    offset = text.index(")")
    with_tree = cursor_context(CompletionRequest("file:///a.py", "python", 1, text, offset, syntax=snapshot))
    assert with_tree.source == "tree" and with_tree.scope == "def f(a):"
    other = text.replace("g(", "h(")
    stale = cursor_context(CompletionRequest("file:///a.py", "python", 2, other, offset, syntax=snapshot))
    assert stale.source == "text"


def test_render_as_comments_definitions_first_within_budget() -> None:
    snippets = (
        Snippet("b.py", "x = 1\ny = 2", "recent"),
        Snippet("geo.py", "def area(r):\n    Area.", "definition"),
        Snippet("geo.py", "RADIUS = 3", "definition"),
    )
    assert render_context(snippets, "python", 1000) == (
        "# from geo.py:\n# def area(r):\n#     Area.\n# RADIUS = 3\n# recently edited in b.py:\n# x = 1\n# y = 2\n"
    )
    # two windows of similar code from one file are two places: each has its title; others keep their order
    similar = (Snippet("m.py", "a = f(1)", "similar"), Snippet("m.py", "\nb = f(2)", "similar"), snippets[0], snippets[2])
    assert render_context(similar, "python", 1000) == (
        "# from geo.py:\n# RADIUS = 3\n# compare this snippet from m.py:\n# a = f(1)\n# compare this snippet from m.py:\n#\n"
        "# b = f(2)\n# recently edited in b.py:\n# x = 1\n# y = 2\n"
    )
    # whole snippets only: the first definition does not fit in 40 characters, the second does
    assert render_context(snippets, "typescript", 40) == "// from geo.py:\n// RADIUS = 3\n"
    assert render_context(snippets, "plaintext", 1000) == ""


def test_similar_code_fills_the_budget_first_but_definitions_lead_the_prompt() -> None:
    snippets = (
        Snippet("geo.py", "def area(r):", "definition"),
        Snippet("old.py", "z = 0", "recent"),
        Snippet("ring.py", "ring = area(outer) - area(inner)", "similar"),
    )
    similar = "# compare this snippet from ring.py:\n# ring = area(outer) - area(inner)\n"
    assert render_context(snippets, "python", len(similar)) == similar  # room for one: the similar code
    assert render_context(snippets, "python", len(similar) + 40) == "# from geo.py:\n# def area(r):\n" + similar
