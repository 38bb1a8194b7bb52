"""Turn a raw continuation into what the editor shows (pure functions)."""

from __future__ import annotations

from tabfill.syntax_cache.context import Mode, SyntaxContext


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def postprocess(text: str, context: SyntaxContext, suffix: str, finish_reason: str) -> tuple[str, int]:
    """Returns (text to insert, code points after the cursor it replaces)."""
    if finish_reason == "deadline":
        text = _cut_partial_word(text) if context.mode is not Mode.MULTI or "\n" not in text else text[: text.rfind("\n")]
    if context.mode is Mode.SINGLE or context.mode is Mode.NONE:
        newline = text.find("\n")
        if newline >= 0:
            text = text[:newline]
        text = text.rstrip()
    else:
        lines = [line.rstrip() for line in text.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        text = "\n".join(lines)
    if not text.strip():
        return "", 0
    following = suffix.lstrip()
    if following and following.startswith(text.strip()):
        return "", 0  # only repeats what already follows the cursor
    # The model closed what the line already closes: replace the rest of the line instead of duplicating.
    rest_of_line = context.line_suffix.strip()
    if rest_of_line and "\n" not in text and text.rstrip().endswith(rest_of_line):
        return text, len(context.line_suffix)
    return text, 0


def _cut_partial_word(text: str) -> str:
    """Drop a trailing identifier fragment that may be unfinished."""
    end = len(text)
    while end > 0 and _is_word(text[end - 1]):
        end -= 1
    if end == 0:
        return text  # the whole thing is one word: keep it rather than nothing
    return text[:end].rstrip(" \t")
