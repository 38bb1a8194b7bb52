"""Benchmark cases, generated deterministically from public code this project did not write (bench/data:
Python 3.11 standard-library modules and the `json` package, and the npm package semver 7.6.3 in its
own layout, each with its licence)."""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"
LANGUAGES = {".py": "python", ".js": "javascript"}
_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class LineCase:
    """Complete the rest of a real line: `prefix` ends inside the line, `suffix` starts at the next line."""

    name: str
    language_id: str
    prefix: str
    suffix: str
    expected: str  # the removed rest of the line


@dataclass(frozen=True)
class Keystroke:
    at_s: float  # when the user presses it, from the start of the replay
    text: str  # what it inserts at the cursor (a newline brings the next line's indentation, like an editor)


@dataclass(frozen=True)
class TypingCase:
    """Type `body` (a real function) at the place it was removed from, key by key."""

    name: str
    language_id: str
    prefix: str
    suffix: str
    body: str
    keys: tuple[Keystroke, ...]


def source_files() -> list[Path]:
    return sorted(path for path in DATA.rglob("*") if path.suffix in LANGUAGES)


def _is_candidate_line(stripped: str, language_id: str) -> bool:
    if len(stripped) < 16 or len(stripped) > 100:
        return False
    comment = "#" if language_id == "python" else "//"
    if stripped.startswith((comment, '"""', "'''", "*", "/*", "@")):
        return False
    return sum(char.isalnum() for char in stripped) >= 8


def line_cases(count: int, seed: int = 7) -> list[LineCase]:
    """`count` cases, alternating languages and spread over each language's files: the cursor after a
    non-word character 30–70 % into a line."""
    rng = random.Random(seed)
    per_file: dict[str, list[list[LineCase]]] = {}
    for path in source_files():
        language_id = LANGUAGES[path.suffix]
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        cases = []
        for number, line in enumerate(lines):
            stripped = line.strip()
            if not _is_candidate_line(stripped, language_id):
                continue
            indent = len(line) - len(line.lstrip())
            cuts = [
                indent + i + 1
                for i, char in enumerate(stripped[:-3])
                if not _WORD.match(char) and 0.3 * len(stripped) <= i + 1 <= 0.7 * len(stripped)
            ]
            if not cuts:
                continue
            cut = rng.choice(cuts)
            before = "\n".join(lines[:number])
            prefix = (before + "\n" if number else "") + line[:cut]
            suffix = "\n" + "\n".join(lines[number + 1 :])
            cases.append(LineCase(f"{path.relative_to(DATA)}:{number + 1}", language_id, prefix, suffix, line[cut:].rstrip()))
        rng.shuffle(cases)
        per_file.setdefault(language_id, []).append(cases)
    queues = {language: _round_robin(files) for language, files in sorted(per_file.items())}
    chosen: list[LineCase] = []
    while len(chosen) < count and queues:
        for language in list(queues):
            case = next(queues[language], None)
            if case is None:
                del queues[language]
            elif len(chosen) < count:
                chosen.append(case)
    return chosen


def _round_robin(files: list[list[LineCase]]) -> Iterator[LineCase]:
    """One case from each file in turn, so every file contributes."""
    while any(files):
        for cases in files:
            if cases:
                yield cases.pop()


def _python_functions(text: str) -> list[tuple[int, int]]:
    """(start, end) line numbers (0-based, end exclusive) of functions and methods."""
    spans = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.decorator_list and node.end_lineno:
            spans.append((node.lineno - 1, node.end_lineno))
    return spans


def _javascript_functions(text: str) -> list[tuple[int, int]]:
    """Functions and methods whose header line ends with "{", up to the line with the matching "}"."""
    lines = text.split("\n")
    header = re.compile(r"^\s*(?:(?:async\s+)?function\s+\w+|(?:static\s+)?\w+\s*)\(.*\)\s*\{\s*$")
    spans = []
    for start, line in enumerate(lines):
        first_word = re.match(r"\s*(\w*)", line).group(1)  # type: ignore[union-attr]
        if not header.match(line) or first_word in ("if", "for", "while", "switch", "catch", "else", "return"):
            continue
        depth = 0
        for end in range(start, len(lines)):
            depth += lines[end].count("{") - lines[end].count("}")
            if depth <= 0:
                spans.append((start, end + 1))
                break
    return spans


def _keystrokes(body: str, rng: random.Random, pace: float) -> tuple[Keystroke, ...]:
    """8–12 characters per second with jitter; a pause after each line and now and then to think."""
    keys: list[Keystroke] = []
    clock = 0.0
    cps = rng.uniform(8, 12)
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\n":  # Enter: the editor inserts the next line's indentation with it
            end = index + 1
            while end < len(body) and body[end] in " \t":
                end += 1
            text, index = body[index:end], end
            gap = rng.uniform(0.35, 0.9)
        else:
            text, index = char, index + 1
            gap = rng.uniform(0.6, 1.4) / cps
            if rng.random() < 0.03:
                gap += rng.uniform(0.8, 1.6)
        clock += gap / pace
        keys.append(Keystroke(round(clock, 4), text))
    return tuple(keys)


def typing_cases(count: int, seed: int = 11, pace: float = 1.0, max_chars: int = 260) -> list[TypingCase]:
    """`count` real functions of 3–12 lines and at most `max_chars` characters, alternating languages."""
    rng = random.Random(seed)
    by_language: dict[str, list[TypingCase]] = {}
    for path in source_files():
        language_id = LANGUAGES[path.suffix]
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        spans = _python_functions(text) if language_id == "python" else _javascript_functions(text)
        for start, end in spans:
            body = "\n".join(lines[start:end])
            if not 3 <= end - start <= 12 or len(body) > max_chars:
                continue
            indent = len(lines[start]) - len(lines[start].lstrip())
            prefix = "\n".join(lines[:start]) + "\n" + lines[start][:indent]
            suffix = "\n" + "\n".join(lines[end:])
            name = f"{path.relative_to(DATA)}:{start + 1}"
            by_language.setdefault(language_id, []).append(
                TypingCase(name, language_id, prefix, suffix, body[indent:], ())
            )
    pools = [by_language[language] for language in sorted(by_language)]
    for pool in pools:
        rng.shuffle(pool)
    chosen: list[TypingCase] = []
    while len(chosen) < count and any(pools):
        for pool in pools:
            if pool and len(chosen) < count:
                case = pool.pop()
                chosen.append(TypingCase(case.name, case.language_id, case.prefix, case.suffix, case.body, _keystrokes(case.body, rng, pace)))
    return chosen
