"""Cross-file context in a model's own repository format, for models trained with one.

Qwen2.5-Coder was pretrained on whole repositories written as

    <|repo_name|>{name}
    <|file_sep|>{path}
    {content}
    <|file_sep|>{path of the file being edited}
    <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>

(its technical report, §3.2.2, and the repository-level FIM example in its README). For such a model the other
files' snippets (imported definitions, similar code, recent edits) go there, each under its own path, instead of
being commented out inside the prefix. The header depends only on the snippets, the repository name and the
current path, so it is byte-stable across keystrokes and stays in the part of the prompt the prefix cache keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol, TypeVar
from urllib.parse import unquote, urlparse

from tabfill.completion.types import CompletionRequest, Settings

# Which snippets win a tight budget, and in which order the chosen ones are written, in either format.
# NOTE: what fills the budget first is not what comes first: similar code earns the most exact match (see
# bench/RESULTS.md, the ablation), definitions change least and so lead the prompt, where the prefix cache keeps them.
BUDGET_PRIORITY = {"similar": 0, "definition": 1, "recent": 2}
PROMPT_ORDER = {"definition": 0, "similar": 1, "recent": 2}


class SnippetLike(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class RepoFile:
    path: str
    text: str  # ends with "\n"


@dataclass(frozen=True)
class RepoContext:
    """Other files of the repository (prompt order) and the path of the file being completed."""

    name: str
    files: tuple[RepoFile, ...]
    current_path: str


S = TypeVar("S", bound=SnippetLike)


def choose(snippets: Sequence[S], cost: Callable[[S], int], max_chars: int) -> list[int]:
    """Indexes of the snippets that fit `max_chars` (whole snippets; by BUDGET_PRIORITY, then their given order),
    in prompt order (PROMPT_ORDER, then their given order)."""
    chosen: list[tuple[int, int]] = []
    used = 0
    ranked = sorted(enumerate(snippets), key=lambda item: (BUDGET_PRIORITY.get(item[1].kind, 3), item[0]))
    for index, snippet in ranked:
        size = cost(snippet)
        if used + size <= max_chars:
            chosen.append((PROMPT_ORDER.get(snippet.kind, 3), index))
            used += size
    return [index for _, index in sorted(chosen)]


def repo_context(snippets: Sequence[SnippetLike], name: str, current_path: str, max_chars: int) -> RepoContext | None:
    """The snippets as files of the repository, within `max_chars` of file text (paths included); snippets of
    one file are joined in one entry at its first place. None when no snippet fits."""
    if max_chars <= 0:
        return None
    picked = choose(snippets, lambda s: len(s.path) + len(s.text) + 2, max_chars)
    if not picked:
        return None
    texts: dict[str, list[str]] = {}
    for index in picked:
        snippet = snippets[index]
        texts.setdefault(snippet.path, []).append(snippet.text.rstrip("\n") + "\n")
    files = tuple(RepoFile(path, "".join(parts)) for path, parts in texts.items())
    return RepoContext(name, files, current_path)


def repo_for(request: CompletionRequest, settings: Settings) -> RepoContext | None:
    """The request's cross-file snippets as a RepoContext, under the same switch and budget as the comment
    header (None when off or nothing fits). build_prompt uses it only for a model with repository tokens."""
    if not settings.cross_file_context or not request.cross_file or settings.cross_file_tokens <= 0:
        return None
    path = request.repo_path or PurePosixPath(unquote(urlparse(request.uri).path)).name
    return repo_context(request.cross_file, request.repo_name or "workspace", path, settings.cross_file_tokens * 4)


class _Encoder(Protocol):
    def encode(self, text: str, *, after_marker: bool) -> tuple[list[int], list[tuple[int, int]]]: ...


def encode_repo_header(
    codec: _Encoder, repo: RepoContext, markers: tuple[int | None, ...], budget: int
) -> tuple[list[int], int]:
    """Token ids of the header up to and including the current file's `<|file_sep|>{path}\n` line, within
    `budget` tokens: files are dropped from the end until it fits; no header at all when even the name and the
    current path do not, or when the tokenizer lacks a marker (`markers`: the repo and file token ids).
    Returns (ids, characters of file text kept)."""
    repo_marker, file_marker = markers
    if repo_marker is None or file_marker is None:
        return [], 0

    def text_ids(text: str) -> list[int]:
        return codec.encode(text, after_marker=True)[0]

    head = [repo_marker, *text_ids(repo.name + "\n")]
    tail = [file_marker, *text_ids(repo.current_path + "\n")]
    entries = [[file_marker, *text_ids(f"{f.path}\n{f.text}")] for f in repo.files]
    while entries and len(head) + sum(map(len, entries)) + len(tail) > budget:
        entries.pop()
    if not entries or len(head) + len(tail) > budget:
        return [], 0
    kept = sum(len(f.text) for f in repo.files[: len(entries)])
    return head + [token for entry in entries for token in entry] + tail, kept
