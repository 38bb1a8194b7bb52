"""What a request puts in front of the model: the cursor context, the cross-file header (snippets of other
files rendered as comments), the text window around the cursor, and the tokenized Prompt (fim.build_prompt)
with its stop rule and budgets."""

from __future__ import annotations

from tabfill.completion.fim import MAX_CHARS_PER_TOKEN, FimTemplate, build_prompt
from tabfill.completion.repo_context import RepoContext, choose
from tabfill.completion.source import TokenizerLike
from tabfill.completion.types import CompletionRequest, Prompt, Settings, StopRule
from tabfill.syntax_cache.context import Mode, SyntaxContext, context_at
from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.languages import grammar_name
from tabfill.syntax_cache.workspace import Snippet

MULTI_LINE_MAX_LINES = 8
CONTEXT_WINDOW_CHARS = 32_000  # how far back the context rules may look for an enclosing block
# The prompt window: about this many characters per prefix token (code averages 3-4, so the window nearly
# always fits its token budget whole and `build_prompt` need not drop lines, which would move its start),
# and its start snapped to chunks of 1/8 of it (stable_prefix_start) so typing keeps the cached prefix.
WINDOW_CHARS_PER_TOKEN = 3
WINDOW_CHUNKS = 8
_COMMENT = {"python": "#", "javascript": "//", "typescript": "//", "tsx": "//", "go": "//", "rust": "//"}


def cursor_context(request: CompletionRequest) -> SyntaxContext:
    """The cursor context of a request (whether and how much to complete), from the lines around the cursor
    (a 1 MB file is not re-indexed per keystroke), refined by its syntax snapshot when that is of this text."""
    text, offset = request.text, request.offset
    start = text.rfind("\n", 0, max(0, offset - CONTEXT_WINDOW_CHARS)) + 1 if offset > CONTEXT_WINDOW_CHARS else 0
    end = text.find("\n", offset + 1024)
    window = Document(request.uri, request.language_id, request.version, text[start : len(text) if end < 0 else end])
    syntax = request.syntax
    if syntax is not None and syntax.text is not request.text and syntax.text != request.text:
        syntax = None  # a snapshot of another version: text rules only
    return context_at(window, offset - start, syntax, base=start)


def cross_file_header(request: CompletionRequest, settings: Settings) -> str:
    """The cross-file snippets as comments in the request's language ("" when off or none)."""
    if not settings.cross_file_context or not request.cross_file or settings.cross_file_tokens <= 0:
        return ""
    return render_context(request.cross_file, request.language_id, settings.cross_file_tokens * 4)


def window_chars(settings: Settings) -> int:
    """At most this many characters before the cursor reach the prompt."""
    return settings.max_prefix_tokens * WINDOW_CHARS_PER_TOKEN


def stable_prefix_start(text: str, offset: int, max_chars: int, chunk_chars: int) -> int:
    """Where the prompt's prefix starts for a cursor at character `offset`: at most `max_chars` before it, at
    a line start (or 0), and the same for every offset within a chunk of `chunk_chars` characters.

    NOTE: a start at `offset - max_chars` (then a line start) slides by a character per keystroke, and every
    slide changes the prompt's first tokens, so the prefix KV cache is lost on each keystroke. Snapping that
    bound UP to a multiple of `chunk_chars` (then forward to the next line start) moves the start only when
    the cursor crosses a chunk boundary; the window is then between `max_chars - chunk_chars` (less the rest
    of a line) and `max_chars` long, so choose `chunk_chars` well below `max_chars`. When no line starts
    between the snapped bound and the cursor, the last line start before the bound is taken if it is within
    `max_chars`; only a cursor line longer than `max_chars` gives a start inside a line (the snapped bound)."""
    if max_chars < 0 or chunk_chars <= 0:
        raise ValueError(f"max_chars must be >= 0 and chunk_chars > 0, got {max_chars} and {chunk_chars}")
    if offset <= max_chars:
        return 0
    lowest = offset - max_chars
    snapped = min(offset, -(-lowest // chunk_chars) * chunk_chars)
    newline = text.find("\n", snapped - 1, offset)
    if newline < 0:  # no line starts after the snapped bound: the last one before it, if within max_chars
        newline = text.rfind("\n", lowest - 1, snapped - 1)
    return snapped if newline < 0 else newline + 1


def prompt_window(request: CompletionRequest, settings: Settings, header: str) -> tuple[str, str]:
    """The prefix and suffix text the prompt may use; the prefix starts at a stable line start.

    NOTE: the cross-file `header` takes its tokens out of the prefix budget. A window longer than what is
    left is cut again by build_prompt, from its start, a line at a time as the user types: the prompt's
    first code tokens then change with every new line and the cached prefix after the header is lost. So
    the window leaves the header's room (about as many characters as the header has; at most half)."""
    most = window_chars(settings)
    max_chars = most - min(len(header), most // 2)
    start = stable_prefix_start(request.text, request.offset, max_chars, max(1, max_chars // WINDOW_CHUNKS))
    suffix = request.text[request.offset : request.offset + settings.max_suffix_tokens * MAX_CHARS_PER_TOKEN]
    return request.text[start : request.offset], suffix


def make_prompt(
    settings: Settings, tokenizer: TokenizerLike, template: FimTemplate | None, context: SyntaxContext, header: str, prefix: str, suffix: str,
    repo: RepoContext | None = None,
) -> Prompt:
    """The tokenized prompt: one line, or a block when the context wants one (and the settings allow it). The
    cross-file snippets go in as `repo` for a model with repository tokens, else as the comment `header`."""
    multi = context.mode is Mode.MULTI and settings.multi_line
    stop = StopRule(single_line=not multi, block_indent=context.block_indent, max_lines=MULTI_LINE_MAX_LINES if multi else 1)
    return build_prompt(
        prefix, suffix, template, tokenizer,
        max_prefix_tokens=settings.max_prefix_tokens,
        max_suffix_tokens=settings.max_suffix_tokens,
        max_new_tokens=settings.max_new_tokens if multi else settings.single_line_max_new_tokens,
        stop=stop,
        context=header,
        max_context_tokens=settings.cross_file_tokens,
        repo=repo,
    )


def comment_prefix(language_id: str) -> str:
    return _COMMENT.get(grammar_name(language_id), "")


_TITLES = {"definition": "from", "similar": "compare this snippet from", "recent": "recently edited in"}


def render_context(snippets: list[Snippet] | tuple[Snippet, ...], language_id: str, max_chars: int) -> str:
    """The snippets as comments in the file's language, within `max_chars`, whole snippets only: chosen similar
    code first, then definitions, then recent edits, each kind in its given order; written definitions first
    (stable across keystrokes), then similar code, then recent edits. "" when there is nothing or no comment
    syntax."""
    marker = comment_prefix(language_id)
    if not marker or not snippets or max_chars <= 0:
        return ""

    def title(snippet: Snippet) -> str:
        return f"{marker} {_TITLES.get(snippet.kind, 'from')} {snippet.path}:"

    def lines(snippet: Snippet) -> list[str]:
        return [f"{marker} {line}".rstrip() for line in snippet.text.splitlines()]

    def cost(snippet: Snippet) -> int:
        return len("\n".join([title(snippet), *lines(snippet)])) + 1  # its title counted even when shared

    blocks: list[str] = []
    last_header = ""
    for index in choose(snippets, cost, max_chars):
        snippet = snippets[index]
        header = title(snippet)
        # NOTE: definitions of one file share a title; two similar windows of one file are two places, two titles
        repeat = header == last_header and snippet.kind != "similar"
        blocks.append("\n".join(([] if repeat else [header]) + lines(snippet)) + "\n")
        last_header = header
    return "".join(blocks)
