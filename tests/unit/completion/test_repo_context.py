"""Cross-file snippets in Qwen2.5-Coder's repository-level format (comments for models without it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from tabfill.completion.fim import TEMPLATES, build_prompt, detect_template
from tabfill.completion.repo_context import RepoContext, RepoFile, repo_context
from tabfill.completion.types import Prompt, StopRule
from tests.support import FIM_FAMILIES, build_tiny_tokenizer


@dataclass(frozen=True)
class Snip:
    path: str
    text: str
    kind: str = "definition"


SNIPPETS = [
    Snip("pkg/util.py", "def slug(text: str) -> str:\n    return text.lower()"),
    Snip("pkg/other.py", "total = sum(values)\nprint(total)", "similar"),
    Snip("pkg/util.py", "class Cache:\n    def get(self, key): ..."),
    Snip("pkg/notes.py", "x = 1", "recent"),
]
PREFIX = "from pkg.util import slug\n\ndef title(text):\n    return "
SUFFIX = "\n\nprint(title('A'))\n"


def prompt_for(tokenizer: PreTrainedTokenizerBase, repo: RepoContext | None, context: str = "", budget: int = 256) -> Prompt:
    return build_prompt(
        PREFIX, SUFFIX, detect_template(tokenizer), tokenizer, max_prefix_tokens=1000, max_suffix_tokens=1000,
        max_new_tokens=16, stop=StopRule(), context=context, max_context_tokens=budget, repo=repo,
    )


def decode(tokenizer: PreTrainedTokenizerBase, ids: tuple[int, ...]) -> str:
    return str(tokenizer.decode(list(ids), skip_special_tokens=False))


def test_snippets_become_files_in_prompt_order_with_one_entry_per_file() -> None:
    repo = repo_context(SNIPPETS, "shop", "pkg/views.py", max_chars=10_000)
    assert repo is not None
    assert [f.path for f in repo.files] == ["pkg/util.py", "pkg/other.py", "pkg/notes.py"]  # definitions lead
    assert repo.files[0].text == "def slug(text: str) -> str:\n    return text.lower()\nclass Cache:\n    def get(self, key): ...\n"
    assert repo.current_path == "pkg/views.py" and repo.name == "shop"


def test_a_tight_budget_keeps_similar_code_first_and_nothing_fits_gives_none() -> None:
    repo = repo_context(SNIPPETS, "shop", "a.py", max_chars=len("pkg/other.py") + 40)
    assert repo is not None and [f.path for f in repo.files] == ["pkg/other.py"]
    assert repo_context(SNIPPETS, "shop", "a.py", max_chars=5) is None
    assert repo_context([], "shop", "a.py", max_chars=1000) is None


def test_qwen_prompt_is_the_documented_repo_level_fim_format() -> None:
    tokenizer = build_tiny_tokenizer(FIM_FAMILIES["qwen2.5-coder"])
    repo = RepoContext("shop", (RepoFile("pkg/util.py", "def slug(t):\n    return t\n"),), "pkg/views.py")
    prompt = prompt_for(tokenizer, repo, context="# from pkg/util.py:\n# def slug(t):\n")
    expected = (
        "<|repo_name|>shop\n<|file_sep|>pkg/util.py\ndef slug(t):\n    return t\n<|file_sep|>pkg/views.py\n"
        f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    )
    assert decode(tokenizer, prompt.token_ids) == expected  # the comment header is not used as well
    assert prompt.context_chars == len("def slug(t):\n    return t\n")
    specials = {tokenizer.convert_tokens_to_ids(t) for t in ("<|repo_name|>", "<|file_sep|>")}
    assert sum(t in specials for t in prompt.token_ids) == 3  # real special tokens, not their spelling as text


def test_the_header_is_byte_stable_while_the_user_types() -> None:
    tokenizer = build_tiny_tokenizer(FIM_FAMILIES["qwen2.5-coder"])
    repo = repo_context(SNIPPETS, "shop", "pkg/views.py", max_chars=10_000)
    first = prompt_for(tokenizer, repo)
    later = build_prompt(
        PREFIX + "slug(text", SUFFIX, TEMPLATES["qwen2.5-coder"], tokenizer, max_prefix_tokens=1000, max_suffix_tokens=1000,
        max_new_tokens=16, stop=StopRule(), max_context_tokens=256,
        repo=repo_context(SNIPPETS, "shop", "pkg/views.py", max_chars=10_000),
    )
    start = first.token_ids.index(tokenizer.convert_tokens_to_ids("<|fim_prefix|>"))
    assert later.token_ids[: start + 1] == first.token_ids[: start + 1]
    assert start > 10


def test_over_budget_files_are_dropped_from_the_end_and_the_prefix_keeps_the_rest() -> None:
    tokenizer = build_tiny_tokenizer(FIM_FAMILIES["qwen2.5-coder"])
    files = (RepoFile("a.py", "x = 1\n"), RepoFile("b.py", "y = 2\n" * 200))
    prompt = prompt_for(tokenizer, RepoContext("r", files, "c.py"), budget=60)
    text = decode(tokenizer, prompt.token_ids)
    assert "<|file_sep|>a.py\nx = 1\n<|file_sep|>c.py\n<|fim_prefix|>" in text
    assert "b.py" not in text
    assert prompt.prefix_chars == len(PREFIX)
    assert len(prompt.token_ids) < 60 + len(tokenizer(PREFIX + SUFFIX)["input_ids"]) + 8


def test_models_without_repo_tokens_keep_the_comment_header() -> None:
    tokenizer = build_tiny_tokenizer(["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"])  # qwen markers only
    repo = RepoContext("shop", (RepoFile("pkg/util.py", "def slug(t): ...\n"),), "pkg/views.py")
    prompt = prompt_for(tokenizer, repo, context="# from pkg/util.py:\n# def slug(t): ...\n")
    assert decode(tokenizer, prompt.token_ids).startswith("<|fim_prefix|># from pkg/util.py:\n# def slug(t): ...\n" + PREFIX)
    plain = build_tiny_tokenizer(())
    assert detect_template(plain) is None
    prefix_only = prompt_for(plain, repo, context="# from pkg/util.py:\n")
    assert decode(plain, prefix_only.token_ids).endswith("# from pkg/util.py:\n" + PREFIX[:-1])


def test_a_request_gives_its_folder_name_and_path_and_the_switch_turns_it_off() -> None:
    from tabfill.completion.repo_context import repo_for
    from tabfill.completion.types import CompletionRequest, Settings
    from tabfill.syntax_cache.crossfile import Snippet

    snippets = (Snippet("pkg/util.py", "def slug(t): ..."),)
    request = CompletionRequest("file:///w/shop/pkg/views.py", "python", 1, "x", 1, cross_file=snippets, repo_name="shop", repo_path="pkg/views.py")
    repo = repo_for(request, Settings())
    assert repo == RepoContext("shop", (RepoFile("pkg/util.py", "def slug(t): ...\n"),), "pkg/views.py")
    outside = CompletionRequest("file:///tmp/a%20b.py", "python", 1, "x", 1, cross_file=snippets)
    assert repo_for(outside, Settings()) == RepoContext("workspace", repo.files, "a b.py")
    assert repo_for(request, Settings(cross_file_context=False)) is None
    assert repo_for(CompletionRequest("file:///a.py", "python", 1, "x", 1), Settings()) is None


def test_the_service_sends_a_qwen_model_its_repo_format_and_a_plain_model_comments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    from tabfill.completion import service as service_module
    from tabfill.completion.service import CompletionService
    from tabfill.completion.types import CompletionRequest, Settings
    from tabfill.syntax_cache.workspace import Snippet
    from tests.support import make_tiny_model_dir

    prompts: list[Prompt] = []
    real = service_module.make_prompt

    def recording(*args: Any, **kwargs: Any) -> Prompt:
        prompts.append(real(*args, **kwargs))
        return prompts[-1]

    monkeypatch.setattr(service_module, "make_prompt", recording)
    snippet = Snippet("pkg/util.py", "def slug(text):\n    return text.lower()", "definition")
    text = "from pkg.util import slug\n\ndef title(t):\n    return "
    request = CompletionRequest(
        "file:///w/shop/pkg/views.py", "python", 1, text, len(text), "r", cross_file=(snippet,), repo_name="shop", repo_path="pkg/views.py"
    )
    for family, expected in (
        ("qwen2.5-coder", "<|repo_name|>shop\n<|file_sep|>pkg/util.py\ndef slug(text):\n    return text.lower()\n<|file_sep|>pkg/views.py\n<|fim_prefix|>from pkg.util"),
        (None, "# from pkg/util.py:\n# def slug(text):\n#     return text.lower()\nfrom pkg.util"),
    ):
        model_dir = make_tiny_model_dir(tmp_path / str(family), fim_family=family)
        service = CompletionService(Settings(model=str(model_dir), deadline_ms=60_000))
        try:
            service.load().result()
            service.complete(request)
        finally:
            service.close()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        assert decode(tokenizer, prompts[-1].token_ids).startswith(expected)
