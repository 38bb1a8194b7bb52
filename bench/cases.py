"""Benchmark cases, generated deterministically from public code this project did not write (bench/data:
Python, JavaScript, TypeScript, Go and Rust from several public packages, each with its licence; see
bench/data/README.md).

A line case whose expected line also occurs verbatim (whitespace-normalised) anywhere the server may read
(any workspace file, or its own file outside that line) is flagged `verbatim`: similar code can copy it."""

from __future__ import annotations

import ast
import dataclasses
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"
LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".go": "go", ".rs": "rust"}
_WORD = re.compile(r"\w")
_COMMENT = {"python": ("#", '"""', "'''")}  # every other language here comments with // and /* */


@dataclass(frozen=True)
class LineCase:
    """Complete the rest of a real line: `prefix` ends inside the line, `suffix` starts at the next line."""

    name: str
    language_id: str
    prefix: str
    suffix: str
    expected: str  # the removed rest of the line
    verbatim: bool = False  # the whole line occurs elsewhere the server may read (see `verbatim_lines`)


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
    return sorted(path for path in DATA.rglob("*") if path.suffix in LANGUAGES and not path.name.endswith(".d.ts"))


def normalise(text: str) -> str:
    """Whitespace-normalised: runs of whitespace become one space, none at the ends."""
    return " ".join(text.split())


def workspace_text(root: Path = DATA) -> str:
    """Every file under `root` the server may read (any language), line by line, whitespace-normalised and
    joined by newlines: a normalised line (no newline) occurs in it only within one line."""
    lines: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        lines.extend(normalise(line) for line in text.split("\n"))
    return "\n".join(lines)


def occurs_elsewhere(line: str, corpus: str) -> bool:
    """`line` occurs verbatim (normalised) in `corpus` other than as itself once: `corpus` holds the case's
    own file, so one occurrence is the line itself."""
    needle = normalise(line)
    return bool(needle) and corpus.count(needle) >= 2


def _is_candidate_line(stripped: str, language_id: str) -> bool:
    if len(stripped) < 16 or len(stripped) > 100:
        return False
    if stripped.startswith((*_COMMENT.get(language_id, ("//",)), "*", "/*", "@", "#[")):
        return False
    return sum(char.isalnum() for char in stripped) >= 8


def line_cases(count: int, seed: int = 7, verbatim: str = "flag") -> list[LineCase]:
    """`count` cases, alternating languages and spread over each language's files: the cursor after a
    non-word character 30–70 % into a line. `verbatim`: "flag" marks the cases whose line occurs verbatim
    elsewhere the server may read; "drop" leaves them out (still `count` cases, when there are enough)."""
    if verbatim not in ("flag", "drop"):
        raise ValueError(f"verbatim must be 'flag' or 'drop', not {verbatim!r}")
    rng = random.Random(seed)
    corpus = workspace_text()
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
                continue
            full_line = case.prefix[case.prefix.rfind("\n") + 1 :] + case.expected
            if occurs_elsewhere(full_line, corpus):
                if verbatim == "drop":
                    continue
                case = dataclasses.replace(case, verbatim=True)
            if len(chosen) < count:
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


_TYPE = r"(?:\s*:\s*[^{]+)?"  # a TypeScript return type
# Function and method headers that end with "{", per brace language.
_HEADERS = {
    "javascript": re.compile(r"^\s*(?:(?:async\s+)?function\s+\w+|(?:static\s+)?\w+\s*)\(.*\)\s*\{\s*$"),
    "typescript": re.compile(
        r"^\s*(?:export\s+)?(?:(?:async\s+)?function\s*\w*|(?:(?:public|private|protected|static|readonly|async|get|set)\s+)*\w+)"
        r"\s*(?:<.*>)?\(.*\)" + _TYPE + r"\s*\{\s*$"
    ),
    "go": re.compile(r"^func\b.*\)\s*[^{]*\{\s*$"),
    "rust": re.compile(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?(?:(?:const|unsafe|async|extern)\s+)*fn\s+\w+.*\{\s*$"),
}
_NOT_FUNCTIONS = ("if", "for", "while", "switch", "catch", "else", "return", "match", "loop")


def _brace_functions(text: str, language_id: str) -> list[tuple[int, int]]:
    """Functions and methods whose header line ends with "{", up to the line with the matching "}"."""
    lines = text.split("\n")
    header = _HEADERS[language_id]
    spans = []
    for start, line in enumerate(lines):
        first_word = re.match(r"\s*(\w*)", line).group(1)  # type: ignore[union-attr]
        if not header.match(line) or first_word in _NOT_FUNCTIONS:
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
        spans = _python_functions(text) if language_id == "python" else _brace_functions(text, language_id)
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
