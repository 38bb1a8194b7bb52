"""Turn a raw continuation into what the editor shows (pure functions).

With `syntax` (the default) the candidate is also: cut where the parse of prefix + candidate closes the
block opened at the cursor, stripped of a last line the token limit left broken, stripped of lines that
only repeat what follows the cursor, and reconciled with the closers (`)]}` and quotes) already on the
cursor line, so the result never duplicates them. Without it: the plain newline/indentation rules.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tabfill.completion.types import StopRule
from tabfill.syntax_cache.context import Mode, SyntaxContext, indent_width, is_word
from tabfill.syntax_cache.probe import block_end, ends_incomplete

_PAIRS = {")": "(", "]": "[", "}": "{"}
_TRIPLE = ('"""', "'''")


def stop_index(text: str, stop: StopRule) -> int | None:
    """Index at which `text` (the continuation so far) must be cut, or None to keep generating.

    Single-line: at the first newline. Multi-line: before the first complete non-empty line indented
    less than `stop.block_indent`, before a second consecutive blank line, or after `stop.max_lines`.
    """
    if stop.single_line:
        newline = text.find("\n")
        return None if newline < 0 else newline
    line_start = 0
    blank_run = 0
    line_number = 0
    while True:
        newline = text.find("\n", line_start)
        if newline < 0:
            return None  # the last line is still being written
        line = text[line_start:newline]
        if line_number > 0:  # the first line continues the cursor line: its indent is not ours to judge
            if line.strip():
                blank_run = 0
                if indent_width(line) < stop.block_indent:
                    return max(line_start - 1, 0)
            else:
                blank_run += 1
                if blank_run >= 2:
                    return max(line_start - 1, 0)
        line_number += 1
        if line_number >= stop.max_lines:
            return newline
        line_start = newline + 1


def postprocess(
    text: str,
    context: SyntaxContext,
    suffix: str,
    finish_reason: str,
    *,
    prefix: str = "",
    syntax: bool = True,
) -> tuple[str, int]:
    """Returns (text to insert, code points after the cursor it replaces).

    `prefix`: the document text before the cursor (its last `context.probe_chars` are parsed with the
    candidate); `suffix`: the text after the cursor; `syntax`: False gives the rules from before the syntax
    layer (cut at the newline or trailing blank lines, a candidate the suffix starts with dropped, the rest of
    the line replaced when the candidate ends with it): the baseline of an A/B comparison."""
    if finish_reason == "deadline":
        text = _cut_partial_word(text) if context.mode is not Mode.MULTI or "\n" not in text else text[: text.rfind("\n")]
    if context.mode is Mode.SINGLE or context.mode is Mode.NONE:
        newline = text.find("\n")
        if newline >= 0:
            text = text[:newline]
        text = text.rstrip()
    else:
        use_probe = syntax and context.language and 0 < context.probe_chars <= len(prefix)
        probe = prefix[len(prefix) - context.probe_chars :] if use_probe else ""
        if probe and not context.open_quote and not context.in_comment:
            cut = block_end(context.language, probe, text, suffix.lstrip()[:1])
            if cut is not None:
                text = text[:cut]
            elif finish_reason in ("length", "deadline") and ends_incomplete(context.language, probe, text):
                text = text.rstrip("\n").rsplit("\n", 1)[0]
        lines = [line.rstrip() for line in text.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        text = "\n".join(lines)
    if not text.strip():
        return "", 0
    if not syntax:
        return _plain_closers(text, context, suffix)
    rest_of_line = context.line_suffix.strip()
    if rest_of_line and rest_of_line.startswith(text.strip()):
        return "", 0  # only repeats what already follows the cursor on its line
    text = _drop_repeated_lines(text, suffix, context.line_prefix)
    if not text.strip():
        return "", 0
    return _reconcile_closers(text, context)


def _plain_closers(text: str, context: SyntaxContext, suffix: str) -> tuple[str, int]:
    """The rules before syntax-aware post-processing (the A/B baseline)."""
    following = suffix.lstrip()
    if following and following.startswith(text.strip()):
        return "", 0
    rest_of_line = context.line_suffix.strip()
    if rest_of_line and "\n" not in text and text.rstrip().endswith(rest_of_line):
        return text, len(context.line_suffix)
    return text, 0


def _drop_repeated_lines(text: str, suffix: str, line_prefix: str) -> str:
    """Drop the candidate's last lines when they repeat the lines that follow the cursor line, in order
    (the model wrote new code and then went on with the code that is already there). All of it repeated:
    "". The first line is compared as the whole cursor line it completes."""
    newline = suffix.find("\n")
    if newline < 0:
        return text
    following = [line.strip() for line in suffix[newline + 1 :].split("\n")[:64] if line.strip()]
    if not following:
        return text
    lines = text.split("\n")
    whole = [(line_prefix + lines[0]).strip(), *(line.strip() for line in lines[1:])]
    nonblank = [i for i, line in enumerate(whole) if line]
    for start in range(len(nonblank)):  # the longest repeating tail first
        tail = [whole[i] for i in nonblank[start:]]
        if tail == following[: len(tail)]:
            return "\n".join(lines[: nonblank[start]]).rstrip() if start else ""
    return text


def _outer_closers(text: str, open_quote: str, language: str) -> list[tuple[int, str]]:
    """Closers in `text` that close something opened before it: brackets with no opener in `text`, and the
    quote of the string the cursor is in. (position, closer) in order; scanning stops at a comment."""
    out: list[tuple[int, str]] = []
    stack: list[str] = []
    quote, outer_quote = open_quote, bool(open_quote)
    comment = "#" if language == "python" else "//" if language else ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                if outer_quote:
                    out.append((i, quote))
                i += len(quote)
                quote, outer_quote = "", False
                continue
            if char == "\n" and len(quote) == 1 and quote != "`":
                quote, outer_quote = "", False  # an unterminated one-line string: stop treating it as one
            i += 1
            continue
        if comment and text.startswith(comment, i):
            break
        if language == "python" and text.startswith(_TRIPLE, i):
            quote = text[i : i + 3]
            i += 3
            continue
        if char in "\"`" or (char == "'" and language != "rust"):
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in _PAIRS:
            if stack and stack[-1] == _PAIRS[char]:
                stack.pop()
            else:
                out.append((i, char))
        i += 1
    return out


def _closers_after_cursor(line_suffix: str, open_quote: str) -> list[tuple[int, str]]:
    """The closers the cursor line already has right after the cursor: (end index in the suffix, closer)."""
    out: list[tuple[int, str]] = []
    i = 0
    quote = open_quote
    while i < len(line_suffix):
        char = line_suffix[i]
        if char in " \t":
            i += 1
        elif quote and line_suffix.startswith(quote, i):
            out.append((i + len(quote), quote))
            i += len(quote)
            quote = ""
        elif not quote and char in _PAIRS:
            out.append((i + 1, char))
            i += 1
        else:
            break
    return out


def _reconcile_closers(text: str, context: SyntaxContext) -> tuple[str, int]:
    """Never duplicate closers the line already has: trim them from the candidate's end, or, when the
    candidate goes on after them, let the item replace them (replace_chars)."""
    line_suffix = context.line_suffix
    present = _closers_after_cursor(line_suffix, context.open_quote)
    outer = _outer_closers(text, context.open_quote, context.language)
    if outer and present:
        matched = 0
        while matched < min(len(outer), len(present)) and outer[matched][1] == present[matched][1]:
            matched += 1
        if matched == 0:
            # the candidate closes something the line closes differently: keep what comes before its closer
            text = text[: outer[0][0]].rstrip()
            return (text, 0) if text.strip() else ("", 0)
        first = outer[0][0]
        tail = text[first:]
        closers_only = "".join(closer for _, closer in outer[:matched])
        if "".join(tail.split()) == closers_only:
            text = text[:first].rstrip(" \t")
            return (text, 0) if text.strip() else ("", 0)
        replace = present[matched - 1][0]
        rest = line_suffix[replace:].strip()
        if rest and "\n" not in text and text.rstrip().endswith(rest):
            replace = len(line_suffix)
        return text, replace
    rest_of_line = line_suffix.strip()
    if rest_of_line and "\n" not in text and text.rstrip().endswith(rest_of_line):
        return text, len(line_suffix)  # the candidate ends with the rest of the line: replace it
    return text, 0


def _cut_partial_word(text: str) -> str:
    """Drop a trailing identifier fragment that may be unfinished."""
    end = len(text)
    while end > 0 and is_word(text[end - 1]):
        end -= 1
    if end == 0:
        return text  # the whole thing is one word: keep it rather than nothing
    return text[:end].rstrip(" \t")


def uncertain_cuts(generated: str, confidence: Sequence[tuple[int, float]], text: str, below: float) -> tuple[int, ...]:
    """Where the model was unsure in `text`, the post-processed `generated`: the start offsets of tokens
    chosen with probability < `below` (`confidence`: (offset in `generated`, probability) per token), inside
    the part `text` shares with `generated` (what post-processing changed has no token to judge) and after its
    first character (something is always shown)."""
    if below <= 0 or not text:
        return ()
    common = len(os.path.commonprefix([generated, text]))
    return tuple(sorted({start for start, probability in confidence if probability < below and 0 < start < min(common, len(text))}))
