"""Drive a system through the cases and score what it answered. Reports; asserts nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.cases import DATA, LineCase, TypingCase
from bench.systems import Pending, System

LINE_TIMEOUT_S = 60.0
LAST_KEY_WAIT_S = 10.0


def case_uri(name: str) -> str:
    """The document is the real file (opened with the case's text), inside the workspace folder bench/data,
    so cross-file context sees the file's real neighbours."""
    return (DATA / name.rsplit(":", 1)[0]).resolve().as_uri()


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / length of the longer string (1.0 for two empty strings)."""
    if a == b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))


def common_prefix_length(a: str, b: str) -> int:
    length = 0
    for char_a, char_b in zip(a, b):
        if char_a != char_b:
            break
        length += 1
    return length


def score_line(predicted: str, expected: str) -> dict[str, Any]:
    first_line = predicted.split("\n", 1)[0].rstrip()
    return {
        "predicted": first_line,
        "expected": expected,
        "exact": first_line == expected.rstrip(),
        "edit_similarity": round(edit_similarity(first_line, expected.rstrip()), 4),
        "empty": not first_line.strip(),
    }


async def run_line_cases(system: System, cases: list[LineCase]) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        uri = case_uri(case.name)
        text = case.prefix + case.suffix
        await system.open(uri, case.language_id, text)
        handle = system.request(uri, case.language_id, text, len(case.prefix))
        try:
            await asyncio.wait_for(asyncio.shield(handle.task), LINE_TIMEOUT_S)
        except asyncio.TimeoutError:
            await system.cancel(handle)
        except Exception:  # recorded on the handle
            pass
        # An answer cut by its deadline: the whole one, when the server announces it (as the editor plugins
        # ask again). The first answer's latency is kept; the whole answer is what gets scored.
        settled = await system.settle(uri, case.language_id, text, len(case.prefix), handle, LINE_TIMEOUT_S)
        final = settled if settled is not None and settled.text is not None else handle
        await system.close_document(uri)
        row = {"case": case.name, "language": case.language_id, "verbatim": case.verbatim, **score_line(final.text or "", case.expected)}
        row["latency_ms"] = _latency_ms(handle)
        row["first_answer"] = handle.text
        row["settled_ms"] = None if settled is None or settled.received_s is None else round((settled.received_s - handle.sent_s) * 1000, 1)
        row["source"] = handle.source
        row["error"] = handle.error
        rows.append(row)
    return rows


def _latency_ms(handle: Pending) -> float | None:
    if handle.received_s is None:
        return None
    return round((handle.received_s - handle.sent_s) * 1000, 2)


async def run_typing_case(system: System, case: TypingCase) -> list[dict[str, Any]]:
    """Type the case key by key at its recorded times; a request per keystroke, the previous one cancelled.

    A request is *served* when its answer arrived before the next keystroke (the editor could show it)."""
    uri = case_uri(case.name)
    text = case.prefix + case.suffix
    cursor = len(case.prefix)
    await system.open(uri, case.language_id, text)
    loop = asyncio.get_running_loop()
    started = loop.time()
    handles: list[tuple[Pending, int, float]] = []  # (request, characters typed so far, when the next key came)
    typed = 0
    for key in case.keys:
        # NOTE: always yield, even when the replay is behind its clock (a loaded machine): else no request
        # task would run between two keys and every request would be cancelled before it was sent.
        await asyncio.sleep(max(0.0, started + key.at_s - loop.time()))
        now = loop.time()
        if handles:
            previous, chars, _ = handles[-1]
            handles[-1] = (previous, chars, now)
            await system.cancel(previous)
        await system.insert(uri, text, cursor, key.text)
        text = text[:cursor] + key.text + text[cursor:]
        cursor += len(key.text)
        typed += len(key.text)
        handles.append((system.request(uri, case.language_id, text, cursor), typed, float("inf")))
    last = handles[-1][0]
    try:
        await asyncio.wait_for(asyncio.shield(last.task), LAST_KEY_WAIT_S)
    except (asyncio.TimeoutError, Exception):
        pass
    for handle, _, _ in handles:  # let cancelled requests report back before the document goes
        if not handle.task.done():
            try:
                await asyncio.wait_for(asyncio.shield(handle.task), 5)
            except (asyncio.TimeoutError, Exception):
                pass
    await system.close_document(uri)

    rows = []
    typed_after = [chars for _, chars, _ in handles[1:]] + [None]
    for (handle, chars, next_key_s), chars_after_next_key in zip(handles, typed_after):
        upcoming = case.body[chars:]
        # the key typed while this answer was on screen (None after the last key)
        next_key = case.body[chars:chars_after_next_key] if chars_after_next_key is not None else ""
        served = handle.text is not None and handle.received_s is not None and handle.received_s <= next_key_s
        shown = handle.text if served and handle.text else ""
        if shown and "pieces" in handle.extra:  # NOTE: drawn as the editor plugins draw it: the first piece
            shown = handle.extra["pieces"][0]
        first_line = shown.split("\n", 1)[0]
        rows.append({
            "case": case.name,
            "language": case.language_id,
            "typed": chars,
            "latency_ms": _latency_ms(handle),
            "served": served,
            "cancelled": handle.cancelled,
            "source": handle.source,  # None when no answer came (cancelled, error)
            "error": handle.error,
            "late": handle.text is not None and not served,
            "partial": handle.extra.get("partial"),  # True: cut by the server's deadline (None: not said)
            "shown": shown,
            "agreed": bool(first_line.strip()) and upcoming.startswith(first_line),
            # NOTE: each typed character counts once: the one typed next, when the ghost text on screen
            # showed it (summing the agreeing prefix of every answer counted a suggestion once per keystroke)
            "accepted_chars": len(next_key) if next_key and shown.startswith(next_key) else 0,
        })
    return rows
