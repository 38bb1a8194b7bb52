"""The local stats store: counts once per item, merges across processes, stays bounded, survives bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tabfill.lsp_server import stats
from tabfill.lsp_server.stats import StatsStore, accept_arguments, format_table, item_reference, percentile, read_stats, summary


def rows(path: Path) -> dict[str, dict]:
    return {row["language"]: row for row in summary(read_stats(path))}


def test_signals_count_once_per_item_and_accept_implies_shown(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    store = StatsStore(path)
    store.record_request("python", 120.0, suggested=True)
    store.record_request("python", 80.0, suggested=False)
    store.issue("a", "python", chars=10)
    store.shown("a", "python")
    store.shown("a", "python")
    store.partially_accepted("a", "python", 4)
    store.partially_accepted("a", "python", 2)  # a shorter report does not count characters twice
    store.accepted("a", "python")
    store.accepted("a", "python")
    store.issue("b", "python", chars=5)
    store.accepted("b", "python")  # never said shown: still counted as shown once
    store.flush()
    python = rows(path)["python"]
    assert (python["requests"], python["suggested"], python["shown"], python["accepted"]) == (2, 1, 2, 2)
    assert python["partial"] == 2 and python["acceptedChars"] == 10 + 5
    assert python["acceptanceRate"] == 1.0
    assert (python["p50Ms"], python["p99Ms"]) == (80.0, 120.0)


def test_two_processes_add_up_and_flush_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    first, second = StatsStore(path), StatsStore(path)
    first.record_request("go", 10.0, suggested=True)
    first.shown("x", "go")
    second.record_request("go", 30.0, suggested=True)
    second.shown("y", "go")
    second.accepted("y", "go")
    first.flush()
    second.flush()
    first.flush()  # nothing new: no change
    go = rows(path)["go"]
    assert (go["requests"], go["shown"], go["accepted"], go["latencySamples"]) == (2, 2, 1, 2)
    assert go["acceptanceRate"] == 0.5
    assert rows(path)["all"]["requests"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bounded_languages_and_latencies(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    store = StatsStore(path)
    for index in range(stats.MAX_LATENCIES + 100):
        store.record_request("python", float(index), suggested=False)
    store.flush()
    for index in range(stats.MAX_LANGUAGES + 5):
        store.record_request(f"lang{index}", 1.0, suggested=False)
    store.flush()
    data = read_stats(path)
    assert len(data["languages"]) == stats.MAX_LANGUAGES
    assert data["languages"]["other"]["requests"] == 5 + 2  # python and lang0..lang61 have their own rows
    python = data["languages"]["python"]
    assert python["requests"] == stats.MAX_LATENCIES + 100
    assert len(python["latenciesMs"]) == stats.MAX_LATENCIES and python["latenciesMs"][-1] == stats.MAX_LATENCIES + 99
    assert path.stat().st_size < 200_000


def test_unreadable_or_foreign_files_start_again(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    for content in ("not json", "[]", json.dumps({"version": 99, "languages": {}}), json.dumps({"version": 1, "languages": {"py": 5}})):
        path.write_text(content, encoding="utf-8")
        store = StatsStore(path)
        store.record_request("python", 5.0, suggested=True)
        store.flush()
        assert rows(path)["python"]["requests"] == 1
    bad_values = {"version": 1, "languages": {"rust": {"requests": -3, "shown": "x", "latenciesMs": [1, "a", None, float("nan"), 2]}}}
    path.write_text(json.dumps(bad_values), encoding="utf-8")
    rust = read_stats(path)["languages"]["rust"]
    assert rust["requests"] == 0 and rust["shown"] == 0 and rust["latenciesMs"] == [1.0, 2.0]


def test_a_torn_stats_file_is_set_aside_once_and_counting_starts_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "stats.json"
    store = StatsStore(path)
    store.record_request("python", 5.0, suggested=True)
    store.flush()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # what a write cut short without the rename would leave
    for _ in range(3):
        store.record_request("python", 7.0, suggested=False)
        store.flush()
    assert rows(path)["python"]["requests"] == 3  # fresh after the torn file, then every flush counted
    assert (tmp_path / "stats.json.corrupt").read_bytes() == whole[: len(whole) // 2]
    said = [record.getMessage() for record in caplog.records if "stats.json.corrupt" in record.getMessage()]
    assert len(said) == 1 and "not JSON" in said[0]


def test_a_flush_killed_before_its_rename_leaves_the_last_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stats.json"
    store = StatsStore(path)
    store.record_request("python", 5.0, suggested=True)
    store.flush()
    before = path.read_bytes()

    def killed(*_args: object) -> None:
        raise KeyboardInterrupt  # the process dies between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", killed)
    store.record_request("python", 6.0, suggested=True)
    with pytest.raises(KeyboardInterrupt):
        store.flush()
    monkeypatch.undo()
    assert path.read_bytes() == before and rows(path)["python"]["requests"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json", "stats.json.lock"]  # no temporary file left
    killed_hard = tmp_path / ".stats.json.abc123.tmp"  # what a kill -9 between write and rename leaves
    killed_hard.write_text('{"version": 1, "lang')
    os.utime(killed_hard, (0, 0))
    store.record_request("python", 7.0, suggested=True)
    store.flush()  # the next flush removes the leftover
    assert rows(path)["python"]["requests"] == 2 and not killed_hard.exists()


def test_a_failed_write_keeps_the_counts_for_the_next_flush(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("", encoding="utf-8")
    store = StatsStore(blocked / "stats.json")  # its folder is a file: the write fails
    store.record_request("python", 5.0, suggested=True)
    store.flush()
    good = tmp_path / "good" / "stats.json"
    store._path = good
    store.flush()
    assert rows(good)["python"]["requests"] == 1
    assert not os.path.exists(blocked / "stats.json")


def test_item_references_only_from_our_command() -> None:
    ours = {"command": {"command": "tabfill.accept", "arguments": [{"id": "abc", "language": "python"}]}}
    assert item_reference(ours) == ("abc", "python")
    assert item_reference({"command": {"arguments": [{"id": "abc", "language": "x y\n"}]}}) == ("abc", "unknown")
    for bad in (None, 5, {}, {"command": None}, {"command": {"arguments": "abc"}}, {"command": {"arguments": [{"id": 3}]}}):
        assert item_reference(bad) is None
    assert accept_arguments([{"id": "x" * 65}]) is None
    assert accept_arguments([]) is None


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.9) == 90.0
    assert percentile([5.0], 0.99) == 5.0


def test_cli_prints_rate_and_percentiles_per_language(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tabfill.cli import main

    monkeypatch.setenv("TABFILL_STATS_FILE", str(tmp_path / "stats.json"))
    assert main(["stats"]) == 0
    assert "no completions recorded yet" in capsys.readouterr().out
    store = StatsStore(tmp_path / "stats.json")
    for latency in (100.0, 200.0, 300.0, 400.0):
        store.record_request("python", latency, suggested=True)
    store.shown("a", "python")
    store.shown("b", "python")
    store.accepted("a", "python")
    store.flush()
    assert main(["stats"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["language", "requests", "shown", "accepted", "rate", "partial", "chars", "p50", "ms", "p90", "ms", "p99", "ms"]
    assert table[1].split() == ["python", "4", "2", "1", "50%", "0", "0", "200", "400", "400"]
    assert table[2].split()[0] == "all"
    assert main(["stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["languages"][0]["p50Ms"] == 200.0
    assert main(["stats", "--reset"]) == 0
    assert not (tmp_path / "stats.json").exists()


def test_the_stats_file_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABFILL_STATS_FILE", str(tmp_path / "mine.json"))
    assert stats.stats_path() == tmp_path / "mine.json"
    monkeypatch.delenv("TABFILL_STATS_FILE")
    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "cache"))
    assert stats.stats_path() == tmp_path / "cache" / "stats.json"


def test_a_client_that_never_reports_shows_has_an_unknown_rate(tmp_path: Path) -> None:
    """VS Code's inline-completion API reports no shown suggestion, only acceptances: counting each accepted
    item as shown made its rate 100 %. The rate is taken over the shows the client reported, so it is
    unknown there, and a client that does report them keeps its real rate."""
    path = tmp_path / "stats.json"
    vscode = StatsStore(path)
    for item in ("a", "b", "c"):
        vscode.record_request("typescript", 50.0, suggested=True)
        vscode.issue(item, "typescript", chars=6)
    vscode.accepted("a", "typescript")
    vscode.partially_accepted("b", "typescript", 2)
    nvim = StatsStore(path)
    for item in ("x", "y", "z", "w"):
        nvim.shown(item, "lua")
    nvim.accepted("x", "lua")
    nvim.partially_accepted("y", "lua", 3)
    vscode.flush()
    nvim.flush()
    table = rows(path)
    assert table["typescript"]["accepted"] == 1 and table["typescript"]["shown"] == 2  # implied by accept and partial
    assert table["typescript"]["acceptanceRate"] is None and table["typescript"]["partialRate"] is None
    assert table["lua"]["acceptanceRate"] == 0.25 and table["lua"]["partialRate"] == 0.25
    assert table["all"]["acceptanceRate"] == 0.25  # the accept nobody saw shown stays out of the rate
    typescript_line = next(line for line in format_table(summary(read_stats(path))).splitlines() if line.startswith("typescript"))
    assert typescript_line.split()[4] == "unknown"


def test_remembered_items_are_bounded_by_bytes_and_recent_ones_still_count_once(tmp_path: Path) -> None:
    from tabfill.syntax_cache.sizes import approx_bytes

    store = StatsStore(tmp_path / "stats.json")
    for number in range(50_000):  # far more items than the bound holds
        store.issue(f"item-{number:08d}", "python", chars=10)
        store.shown(f"item-{number:08d}", "python")
    assert store._items.currsize <= stats.ITEMS_MAX_BYTES
    assert sum(map(approx_bytes, store._items.values())) <= stats.ITEMS_MAX_BYTES
    assert 1000 < len(store._items) < 50_000
    store.accepted("item-00049999", "python")
    store.accepted("item-00049999", "python")
    store.shown("item-00049999", "python")
    store.flush()
    python = rows(tmp_path / "stats.json")["python"]
    assert (python["shown"], python["accepted"], python["acceptedChars"]) == (50_000, 1, 10)  # the recent item: once
