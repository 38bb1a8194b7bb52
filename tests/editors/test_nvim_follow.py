"""Typing-follow in the Neovim plugin (editors/nvim/lua/tabfill/follow.lua and its use), against a scripted
server (tests/editors/fake_lsp.py) whose answer time the test sets: keep-on-match, the adaptive debounce,
at most one request in flight, and tabfill/warm before the first key."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.editors.test_nvim import Editor, launch

pytestmark = pytest.mark.nvim

FAKE = Path(__file__).with_name("fake_lsp.py")
TARGET = "result = compute_total(items, tax)"


def fake_editor(tmp_path: Path, delay_ms: float, options: str) -> Any:
    return launch(tmp_path, [sys.executable, str(FAKE), TARGET, str(delay_ms)], options)


def server(editor: Editor, method: str, params: Any = None) -> Any:
    return editor.lua(
        "local c = vim.lsp.get_clients({name = 'tabfill'})[1]; local r = c:request_sync(...); return r and r.result",
        method, params if params is not None else {}, 5000,
    )


def ghost_text(editor: Editor) -> str | None:
    ghost = editor.ghost()
    return None if ghost is None else ghost[2]


def open_line(editor: Editor) -> None:
    """A new empty line at the end, in insert mode, with the first answer (the whole target) on screen."""
    editor.type("Go")
    editor.wait("the first answer", lambda: ghost_text(editor) == TARGET or None)


@pytest.fixture
def lua(tmp_path: Path) -> Iterator[Editor]:
    with fake_editor(tmp_path, 10, "warm = false") as editor:
        yield editor


def test_follow_decisions(lua: Editor) -> None:
    """The pure rules: debounce bounds, what is left of a suggestion, whether a request in flight is kept."""
    check = lua.lua(
        """
        local f = require('tabfill.follow')
        local out = {}
        local pace = f.new_pace()
        out.unknown = f.debounce_ms(pace, 0, nil, 150)           -- nothing measured: ask at once
        out.fixed = f.debounce_ms(pace, 0, 40, 150)              -- a number fixes it
        for t = 0, 1000, 100 do f.key(pace, t) end               -- 10 keys/s
        f.answered(pace, 30)
        out.fast_server = f.debounce_ms(pace, 1000, nil, 150)    -- answers beat the keys: 0
        for _ = 1, 20 do f.answered(pace, 180) end
        out.slow_server = f.debounce_ms(pace, 1000, nil, 150)    -- 180 - 100
        for _ = 1, 20 do f.answered(pace, 900) end
        out.very_slow = f.debounce_ms(pace, 1000, nil, 150)      -- capped
        out.resting = f.debounce_ms(pace, 2500, nil, 150)        -- not typing: ask at once
        out.rest = {f.rest_after('return x', 'ret'), f.rest_after('return x', 'rex'), f.rest_after('ab', 'ab'),
                    f.rest_after('a\\nb', 'a\\n'), f.rest_after('ab', '')}
        local flight = {row = 3, col = 4, sent_ms = 1000, explicit = false}
        local slow = {latency_ms = 100}
        out.keep = {
          f.keep_in_flight(flight, 3, 5, 'x', 1010, true, slow, 1500),   -- agreed with the ghost: kept
          f.keep_in_flight(flight, 3, 5, 'x', 1010, false, slow, 1500),  -- just sent, key unknown: cancelled
          f.keep_in_flight(flight, 3, 5, 'x', 1060, false, slow, 1500),  -- about done: kept
          f.keep_in_flight(flight, 4, 0, '\\n', 1060, true, slow, 1500), -- another line
          f.keep_in_flight(flight, 3, 3, '', 1060, true, slow, 1500),    -- moved back
          f.keep_in_flight(flight, 3, 5, 'x', 3000, true, slow, 1500),   -- stale
          f.keep_in_flight({row = 3, col = 4, sent_ms = 1000, explicit = true}, 3, 5, 'x', 1060, true, slow, 1500),
        }
        return out
        """
    )
    assert check["unknown"] == 0 and check["fixed"] == 40
    assert check["fast_server"] == 0
    assert 70 <= check["slow_server"] <= 80
    assert check["very_slow"] == 150
    assert check["resting"] == 0
    assert check["rest"] == ["urn x", None, None, None, "ab"]
    assert check["keep"] == [True, False, True, False, False, False, False]


def test_keys_that_agree_keep_the_rest_at_once_and_still_ask(tmp_path: Path) -> None:
    with fake_editor(tmp_path, 250, "warm = false") as editor:
        open_line(editor)
        sent = editor.info()["requests_sent"]
        for k in range(1, 7):
            editor.type(TARGET[k - 1])
            assert ghost_text(editor) == TARGET[k:]  # at once: no round trip (the server takes 250 ms)
            time.sleep(0.08)
        # still asked (after the adaptive debounce, which a loaded machine may stretch), then answered
        editor.wait("a request for the typed keys", lambda: editor.info()["requests_sent"] > sent or None)
        editor.wait("the answers for where the cursor is", lambda: not editor.info()["pending"] or None)
        assert ghost_text(editor) == TARGET[6:]
        stats = server(editor, "fake/stats")
        assert stats["maxInFlight"] == 1 and stats["cancelled"] == 0, stats  # kept, never cancelled

        editor.type("Q")  # a key that leaves it: gone at once
        assert ghost_text(editor) is None


def test_at_most_one_request_in_flight_while_typing_fast(tmp_path: Path) -> None:
    """A slow server, no debounce (fixed at 0 ms), keys every 30 ms that never agree: without the one-in-flight
    rule every key sends a request and cancels the last, and the server works on several at once."""
    with fake_editor(tmp_path, 150, "warm = false, debounce_ms = 0") as editor:
        editor.type("Go")
        for char in "zyxwvutsrqponmlkjihg":
            editor.type(char)
            time.sleep(0.03)
        editor.wait("all answers", lambda: not editor.info()["pending"] or None)
        stats = server(editor, "fake/stats")
        info = editor.info()
        assert stats["maxInFlight"] == 1, stats["requests"]
        assert info["max_in_flight"] == 1
        assert len(stats["requests"]) <= 10, stats["requests"]  # 20 keys in 0.6 s, 150 ms answers: no storm


def test_the_debounce_adapts_to_the_server_and_the_typing(tmp_path: Path) -> None:
    with fake_editor(tmp_path, 10, "warm = false") as editor:
        open_line(editor)
        for char in TARGET[:6]:
            editor.type(char)
            time.sleep(0.1)
        assert editor.info()["debounce_ms"] == 0  # 10 ms answers, 100 ms keys: ask at once
        server(editor, "fake/configure", {"delayMs": 400})
        # NOTE: how many slow answers land while typing depends on timing (one kept request at a time); keep
        # typing (3 s at least, 9 s at most) until the moving average has seen enough of them.
        for i, char in enumerate("Qwerty uiop asdfg hjkl zxcvbnm " * 3):
            editor.type(char)
            time.sleep(0.1)
            if i >= 30 and editor.info()["server_latency_ms"] > 150:
                break
        info = editor.info()  # still typing
        assert info["server_latency_ms"] > 150 and info["key_interval_ms"] < 150, info
        assert 0 < info["debounce_ms"] <= 150, info  # the server lags behind the keys: wait, within bounds


def test_warm_before_the_first_key_on_insert_and_at_cursor_rest(tmp_path: Path) -> None:
    with fake_editor(tmp_path, 10, "warm_delay_ms = 100") as editor:
        editor.type("2G3|")  # normal mode: the cursor rests on line 2, column 3
        # NOTE: opening the buffer may warm (0, 0) first; wait for the warm-up where the cursor came to rest.
        def rested() -> bool | None:
            warm = server(editor, "fake/stats")["warm"]
            return (bool(warm) and (warm[-1]["line"], warm[-1]["character"]) == (1, 0)) or None  # line 2 is empty: column 0

        editor.wait("a warm-up where the cursor rests", rested)
        editor.type("4GA")  # insert mode at the end of line 4
        row, col = editor.cursor()
        editor.wait("the answer", lambda: server(editor, "fake/stats")["requests"] or None)
        stats = server(editor, "fake/stats")
        assert (stats["warm"][-1]["line"], stats["warm"][-1]["character"]) == (row, col)
        first_inline = stats["events"].index("inline")
        assert "warm" in stats["events"][:first_inline]  # told before the first request
        count = len(stats["warm"])
        editor.type("<Esc>")
        time.sleep(0.4)
        editor.type("<Esc>")  # resting at the same place again: no second warm-up for it
        time.sleep(0.4)
        assert len(server(editor, "fake/stats")["warm"]) <= count + 1
