"""Local acceptance and latency counts per language (nothing leaves the machine).

The server records every answered inline-completion request (its latency) and the client's signals
for the items it issued: shown, partially accepted (with the accepted length), accepted. Counts are
kept in memory and merged into one JSON file under the user cache dir (`stats.json`, or
`$TABFILL_STATS_FILE`) by `flush()`:
read-modify-write under an advisory lock, written to a temporary file and renamed, so several
servers (one per editor) and a concurrent `tabfill stats` never see a torn file. The file is
bounded: at most `MAX_LANGUAGES` languages and the last `MAX_LATENCIES` latencies per language.

This module imports no LSP library: `tabfill stats` reads the file with it too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from tabfill.syntax_cache.sizes import approx_bytes, keep
from tabfill.completion.atomic import remove_stale_temporaries, write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "stats.json"
FORMAT_VERSION = 1
MAX_LANGUAGES = 64  # further languages are counted under OTHER
MAX_LATENCIES = 500  # per language, the most recent ones
ITEMS_MAX_BYTES = 1 << 20  # items remembered for de-duplicating signals (least recently signalled out)
MAX_FILE_BYTES = 4 << 20  # a larger file is not ours to trust: start again
OTHER = "other"
COUNTERS = ("requests", "suggested", "shown", "accepted", "partial", "acceptedChars",
            "shownReported", "acceptedReported", "partialReported")
# *Reported*: items the client itself said it showed (didShowCompletion), and of those the accepted and the
# partly accepted ones. The rates are taken over these alone: a client that never reports a show (VS Code's
# inline-completion API has no such event) would otherwise show every accepted item as shown and a 100 % rate.
_LANGUAGE_ID = re.compile(r"^[A-Za-z0-9_.+#-]{1,40}$")


def stats_path(cache_dir: Path | None = None) -> Path:
    """`$TABFILL_STATS_FILE`, else `stats.json` in the cache dir (`tabfill.completion.models.cache_root()`)."""
    explicit = os.environ.get("TABFILL_STATS_FILE")
    if explicit:
        return Path(explicit)
    if cache_dir is None:
        from tabfill.completion.models import cache_root

        cache_dir = cache_root()
    return cache_dir / FILE_NAME


def clean_language(value: Any) -> str:
    """A language id as the client sent it, or "unknown" when it is not a plausible id."""
    return value if isinstance(value, str) and _LANGUAGE_ID.match(value) else "unknown"


@dataclass(slots=True)  # NOTE: a fixed size while its flags change (a __dict__ grows when written to)
class _Item:
    language: str
    chars: int | None = None  # the length of the item's text, when this process issued it
    shown: bool = False
    reported: bool = False  # the client said it showed this item
    accepted: bool = False
    partial: bool = False
    accepted_chars: int = 0  # the longest partial acceptance so far


@dataclass
class _Pending:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, language: str, counter: str, amount: int = 1) -> None:
        per_language = self.counts.setdefault(language, dict.fromkeys(COUNTERS, 0))
        per_language[counter] += amount

    def empty(self) -> bool:
        return not self.counts and not self.latencies_ms


class StatsStore:
    """Counts for one server process; `flush()` merges them into the shared file."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._pending = _Pending()
        self._items: LRUCache[str, _Item] = LRUCache(ITEMS_MAX_BYTES, getsizeof=approx_bytes)
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = stats_path()  # resolved late: the cache dir may come from the environment
        return self._path

    # ------------------------------------------------------------------ events
    def record_request(self, language: str, latency_ms: float, suggested: bool) -> None:
        with self._lock:
            self._pending.add(language, "requests")
            if suggested:
                self._pending.add(language, "suggested")
            samples = self._pending.latencies_ms.setdefault(language, [])
            samples.append(round(max(latency_ms, 0.0), 1))
            del samples[:-MAX_LATENCIES]

    def issue(self, item_id: str, language: str, chars: int) -> None:
        """Remember an item the server answered with, so its signals count once each."""
        with self._lock:
            keep(self._items, item_id, _Item(language, chars))

    def shown(self, item_id: str, language: str) -> None:
        with self._lock:
            item = self._item(item_id, language)
            self._mark_shown(item)
            if not item.reported:
                item.reported = True
                self._pending.add(item.language, "shownReported")

    def partially_accepted(self, item_id: str, language: str, accepted_chars: int) -> None:
        with self._lock:
            item = self._item(item_id, language)
            self._mark_shown(item)
            self._pending.add(item.language, "partial")
            if item.reported and not item.partial:
                self._pending.add(item.language, "partialReported")
            item.partial = True
            grown = max(accepted_chars - item.accepted_chars, 0)
            item.accepted_chars = max(item.accepted_chars, accepted_chars)
            self._pending.add(item.language, "acceptedChars", grown)

    def accepted(self, item_id: str, language: str) -> None:
        with self._lock:
            item = self._item(item_id, language)
            self._mark_shown(item)
            if item.accepted:
                return
            item.accepted = True
            self._pending.add(item.language, "accepted")
            if item.reported:
                self._pending.add(item.language, "acceptedReported")
            if item.chars is not None and item.chars > item.accepted_chars:
                self._pending.add(item.language, "acceptedChars", item.chars - item.accepted_chars)
                item.accepted_chars = item.chars

    def _item(self, item_id: str, language: str) -> _Item:
        item = self._items.get(item_id)
        if item is None:  # issued by an earlier server process, or forgotten: trust its arguments
            item = keep(self._items, item_id, _Item(language))
        return item

    def _mark_shown(self, item: _Item) -> None:
        # NOTE: an accepted item was shown even when the client never said so (not every client sends
        # didShowCompletion), so the acceptance rate never exceeds 1.
        if not item.shown:
            item.shown = True
            self._pending.add(item.language, "shown")

    # ------------------------------------------------------------------ persistence
    def flush(self) -> None:
        """Merge the pending counts into the file; errors are logged, counts kept for the next try."""
        with self._lock:
            if self._pending.empty():
                return
            pending, self._pending = self._pending, _Pending()
        try:
            with _locked(self.path):
                data = read_stats(self.path, set_aside=True)
                merge(data, pending)
                _write_atomic(self.path, data)
                remove_stale_temporaries(self.path)  # left by a process killed in the middle of a flush
        except OSError as exc:
            log.warning("could not write stats to %s: %s", self.path, exc)
            with self._lock:  # keep them for the next flush
                for language, counts in pending.counts.items():
                    for counter, amount in counts.items():
                        self._pending.add(language, counter, amount)
                for language, samples in pending.latencies_ms.items():
                    merged = samples + self._pending.latencies_ms.get(language, [])
                    self._pending.latencies_ms[language] = merged[-MAX_LATENCIES:]


def empty_stats() -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "languages": {}}


def read_stats(path: Path, set_aside: bool = False) -> dict[str, Any]:
    """The stored stats, or empty ones when the file is missing, too large or not ours. With `set_aside`
    (a flush, under the lock), such a file is renamed to `<name>.corrupt` and this is said once: the next
    write starts fresh and the old bytes are kept for whoever wants them."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return _unusable(path, f"larger than {MAX_FILE_BYTES} bytes", set_aside)
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty_stats()
    except ValueError as exc:  # not JSON, or not UTF-8: a torn or damaged file
        return _unusable(path, f"not JSON ({exc})", set_aside)
    except OSError as exc:
        log.warning("ignoring unreadable stats %s: %s", path, exc)
        return empty_stats()
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("languages"), dict):
        return _unusable(path, "not in the stats format", set_aside)
    languages: dict[str, Any] = {}
    for language, entry in data["languages"].items():
        if not isinstance(entry, dict):
            continue
        clean: dict[str, Any] = {name: int(entry.get(name, 0)) if _is_count(entry.get(name, 0)) else 0 for name in COUNTERS}
        samples = entry.get("latenciesMs", [])
        clean["latenciesMs"] = [float(x) for x in samples if _is_number(x)][-MAX_LATENCIES:] if isinstance(samples, list) else []
        languages[clean_language(language)] = clean
    return {"version": FORMAT_VERSION, "languages": languages}


def _unusable(path: Path, why: str, set_aside: bool) -> dict[str, Any]:
    if not set_aside:
        log.warning("ignoring stats %s: %s", path, why)
        return empty_stats()
    kept = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, kept)
    except OSError as exc:
        log.warning("stats %s is unusable (%s) and could not be set aside: %s; starting fresh", path, why, exc)
    else:
        log.warning("stats %s was unusable (%s): kept as %s, starting fresh", path, why, kept.name)
    return empty_stats()


def merge(data: dict[str, Any], pending: _Pending) -> None:
    languages: dict[str, Any] = data["languages"]

    def entry(language: str) -> dict[str, Any]:
        if language not in languages and language != OTHER and len(languages) >= MAX_LANGUAGES - 1:
            language = OTHER  # NOTE: one slot stays free for OTHER, so the file holds MAX_LANGUAGES at most
        counts: dict[str, Any] = languages.setdefault(language, {**dict.fromkeys(COUNTERS, 0), "latenciesMs": []})
        return counts

    for language, counts in pending.counts.items():
        target = entry(language)
        for counter, amount in counts.items():
            target[counter] = int(target.get(counter, 0)) + amount
    for language, samples in pending.latencies_ms.items():
        target = entry(language)
        target["latenciesMs"] = (list(target.get("latenciesMs", [])) + samples)[-MAX_LATENCIES:]


def percentile(samples: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per language (most requests first) and a last row "all"; rates are None (unknown) when the
    client reported no shown suggestion."""
    rows: list[dict[str, Any]] = []
    total: dict[str, Any] = {**dict.fromkeys(COUNTERS, 0), "latenciesMs": []}
    languages: dict[str, Any] = data.get("languages", {})
    for language, entry in sorted(languages.items(), key=lambda kv: (-int(kv[1].get("requests", 0)), kv[0])):
        rows.append(_row(language, entry))
        for counter in COUNTERS:
            total[counter] += int(entry.get(counter, 0))
        total["latenciesMs"] += list(entry.get("latenciesMs", []))
    rows.append(_row("all", total))
    return rows


def _row(language: str, entry: dict[str, Any]) -> dict[str, Any]:
    reported = int(entry.get("shownReported", 0))
    samples = list(entry.get("latenciesMs", []))
    return {
        "language": language,
        **{counter: int(entry.get(counter, 0)) for counter in COUNTERS},
        "acceptanceRate": int(entry.get("acceptedReported", 0)) / reported if reported else None,
        "partialRate": int(entry.get("partialReported", 0)) / reported if reported else None,
        "latencySamples": len(samples),
        "p50Ms": percentile(samples, 0.50),
        "p90Ms": percentile(samples, 0.90),
        "p99Ms": percentile(samples, 0.99),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    headers = ("language", "requests", "shown", "accepted", "rate", "partial", "chars", "p50 ms", "p90 ms", "p99 ms")

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    lines = [headers]
    for row in rows:
        rate = ("unknown" if row["accepted"] or row["suggested"] else "-") if row["acceptanceRate"] is None else f"{row['acceptanceRate']:.0%}"
        lines.append((
            row["language"], str(row["requests"]), str(row["shown"]), str(row["accepted"]), rate, str(row["partial"]),
            str(row["acceptedChars"]), number(row["p50Ms"]), number(row["p90Ms"]), number(row["p99Ms"]),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line)) for line in lines
    )


def reset(path: Path) -> None:
    with _locked(path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: the atomic rename still keeps the file whole
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, separators=(",", ":")).encode("utf-8"))


def item_reference(item: Any) -> tuple[str, str] | None:
    """(item id, language) from an inline completion item the server issued (its `tabfill.accept`
    command's first argument), as a client sends it back; None when the item is not ours."""
    command = item.get("command") if isinstance(item, dict) else None
    return accept_arguments(command.get("arguments") if isinstance(command, dict) else None)


def accept_arguments(arguments: Any) -> tuple[str, str] | None:
    """(item id, language) from the arguments of `tabfill.accept`, or None when they are not ours."""
    if not isinstance(arguments, (list, tuple)) or not arguments or not isinstance(arguments[0], dict):
        return None
    item_id = arguments[0].get("id")
    if not isinstance(item_id, str) or not 0 < len(item_id) <= 64:
        return None
    return item_id, clean_language(arguments[0].get("language"))
