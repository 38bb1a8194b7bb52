"""The Neovim plugin when the server dies (kill -9: restart with backoff, the buffers' current text sent
again, one message per outage, give up after the tries) and when a project's own config (.nvim.lua, .nvimrc)
tries to choose the server command, the model or the engine."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.editors.conftest import SOURCE
from tests.editors.test_nvim import LAST_LINE, LAST_ROW, Editor, editor, launch, server_settings  # noqa: F401 (fixtures)
from tests.editors.test_nvim_follow import FAKE, TARGET, fake_editor, ghost_text, open_line, server

pytestmark = pytest.mark.nvim

RESTARTING = "tabfill: the server was killed by signal 9; restarting it"


def server_pids(editor: Editor) -> list[int]:
    """The processes Neovim started: the language server(s)."""
    pids: list[int] = editor.lua("return vim.api.nvim_get_proc_children(vim.fn.getpid())")
    return pids


def messages(editor: Editor) -> list[str]:
    text: str = editor.nvim.api.exec2("messages", {"output": True})["output"]
    return text.splitlines()


def own_messages(editor: Editor) -> list[str]:
    """The plugin's messages (not Neovim's own "Client tabfill quit with exit code ..." per exit)."""
    return [line for line in messages(editor) if line.startswith("tabfill:")]


def kill_server(editor: Editor) -> int:
    [pid] = server_pids(editor)
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_new_server(editor: Editor, old: int, restarted: int) -> int:
    editor.wait(f"restart {restarted}", lambda: editor.info()["restarted"] == restarted or None)
    pids = editor.wait("a new server", lambda: (lambda p: p if p and old not in p else None)(server_pids(editor)))
    editor.wait("the new client", lambda: editor.lua("return #vim.lsp.get_clients({name = 'tabfill', bufnr = 0}) == 1") or None)
    return int(pids[0])


def test_restart_policy(tmp_path: Path) -> None:
    """The pure rules (lua/tabfill/restart.lua): doubling delays, one message when the outage starts and one
    when it gives up, a new outage after a server that stayed up."""
    with fake_editor(tmp_path, 10, "warm = false") as editor:
        out = editor.lua(
            """
            local r = require('tabfill.restart').new()
            local loop, now = {}, 0
            for i = 1, 7 do
              local d = r:crashed(now)
              loop[i] = {d.action, d.delay_ms or -1, d.announce}
              if d.delay_ms then now = now + d.delay_ms + 5000; r:running(now - 4000) end
            end
            local s = require('tabfill.restart').new()
            local first = s:crashed(0)
            s:running(1000)
            local same = s:crashed(1000 + 59999)
            s:running(70000)
            local new = s:crashed(70000 + 60000)
            return {loop = loop, now = now, first = first.attempt, same = {same.attempt, same.announce}, new = {new.attempt, new.announce}}
            """
        )
    assert out["loop"] == [
        ["restart", 500, True], ["restart", 1000, False], ["restart", 2000, False], ["restart", 4000, False],
        ["restart", 8000, False], ["give_up", -1, True], ["give_up", -1, False],
    ]
    assert out["now"] <= 60_000
    assert out["first"] == 1 and out["same"] == [2, False] and out["new"] == [1, True]


def test_a_killed_server_is_restarted_with_the_buffer_as_it_is_now(tmp_path: Path) -> None:
    """kill -9 while typing: a new server gets the buffer's current text (also what was typed while it was
    down), suggestions work again, and a second crash in the same outage waits longer and says nothing."""
    with fake_editor(tmp_path, 10, "warm = false") as editor:
        open_line(editor)
        editor.type("resu")
        old = kill_server(editor)
        editor.type("lt")  # typed while no server runs
        new = wait_new_server(editor, old, 1)
        stats = server(editor, "fake/stats")
        assert stats["pid"] == new
        assert list(stats["documents"].values()) == [editor.buffer_text() + "\n"]
        assert editor.buffer_text().rstrip().endswith("result")
        editor.type(" ")
        ghost = editor.wait("a suggestion from the new server", lambda: ghost_text(editor) == TARGET[len("result "):] or None)
        assert ghost
        assert own_messages(editor) == [RESTARTING + " (open buffers are sent to the new server)"]

        again = kill_server(editor)
        newer = wait_new_server(editor, again, 2)
        assert newer not in (old, new, again)
        assert editor.info()["restart_attempts"] == 2  # the same outage: 0.5 s, then 1 s
        assert own_messages(editor) == [RESTARTING + " (open buffers are sent to the new server)"]  # said once
        editor.type("=")
        editor.wait("a suggestion from the third server", lambda: ghost_text(editor) == TARGET[len("result ="):] or None)


def test_restarts_give_up_with_one_message_and_tabfill_restart_starts_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    die = tmp_path / "die"
    monkeypatch.setenv("FAKE_LSP_DIE_IF", str(die))
    with fake_editor(tmp_path, 10, "warm = false, restart = { max_tries = 2, first_delay_ms = 50 }") as editor:
        die.touch()  # from now on a new server exits at once with code 3
        old = kill_server(editor)
        editor.wait("giving up", lambda: any("not restarting it" in line for line in own_messages(editor)) or None)
        assert not server_pids(editor) and editor.info()["restart_attempts"] == 2
        ours = own_messages(editor)
        assert ours[0] == RESTARTING + " (open buffers are sent to the new server)"
        assert len(ours) == 2 and ours[1].startswith("tabfill: the server stopped 3 times in a row (last: the server exited with code 3)")
        assert "TabfillRestart" in ours[1]

        die.unlink()
        editor.nvim.command("TabfillRestart")
        pids = editor.wait("a server after :TabfillRestart", lambda: server_pids(editor) or None)
        assert old not in pids
        editor.wait("the new client", lambda: editor.lua("return #vim.lsp.get_clients({name = 'tabfill', bufnr = 0}) == 1") or None)
        assert editor.info()["restart_attempts"] == 0
        open_line(editor)


def test_kill_9_mid_request_the_real_server_comes_back_and_so_does_the_suggestion(editor: Editor, reference_text: str) -> None:
    """The real server, killed while it answers: once the new one has loaded the model ($/progress end) the
    plugin asks again at the cursor, without a key, and the same suggestion is drawn."""
    editor.lua("require('tabfill').config.auto_trigger = false")  # only the plugin's own asking again
    assert editor.suggest_at_end() == reference_text
    editor.lua("require('tabfill').dismiss(); require('tabfill').trigger()")
    assert editor.info()["pending"]
    old = kill_server(editor)
    editor.lua("require('tabfill').dismiss()")  # an answer that beat the kill is not the one we wait for
    wait_new_server(editor, old, 1)
    ghost = editor.wait("the suggestion again", lambda: (lambda g: g if g and g[2] == reference_text else None)(editor.ghost()))
    assert ghost[:2] == (LAST_ROW, len(LAST_LINE))
    assert editor.buffer_text() == SOURCE
    assert own_messages(editor) == [RESTARTING + " (open buffers are sent to the new server)"]


# ---------------------------------------------------------------------------------------------- trust
PROJECT_LUA = """
require('tabfill').setup({
  cmd = { 'sh', '-c', 'touch pwned' },
  settings = { model = 'attacker/model', engine = 'tcp://evil.example:7420', maxNewTokens = 7 },
  debounce_ms = 33,
  warm = false,
})
vim.schedule(function()
  require('tabfill').update_settings({ engineModel = '/tmp/attacker', deadlineMs = 99 })
end)
"""

PROJECT_VIM = """
lua require('tabfill').setup({ cmd = { 'sh', '-c', 'touch pwned' }, settings = { model = 'attacker/model', maxNewTokens = 7 }, debounce_ms = 33, warm = false })
"""


@pytest.mark.parametrize("exrc", [(".nvim.lua", PROJECT_LUA), (".nvimrc", PROJECT_VIM)], ids=["nvim.lua", "nvimrc"])
def test_a_project_config_cannot_choose_the_server_command_model_or_engine(tmp_path: Path, exrc: tuple[str, str]) -> None:
    """A trusted project-local config (sourced after the user's config) keeps its harmless options (the
    debounce, the token budget) but not the server command, the model or the engine: the user's stay."""
    server_cmd = [sys.executable, str(FAKE), TARGET, "10"]
    with launch(tmp_path, server_cmd, "warm = true", {"model": "user/model"}, exrc=exrc) as editor:
        ours = editor.wait("the plugin's warning", lambda: own_messages(editor) if len(own_messages(editor)) >= (2 if "engineModel" in exrc[1] else 1) else None)
        stats: dict[str, Any] = server(editor, "fake/stats")
        options = stats["initializationOptions"]
        assert options["model"] == "user/model" and options["maxNewTokens"] == 7, options
        assert "engine" not in options
        info = editor.info()
        assert info["cmd"] == server_cmd and info["debounce_ms"] == 33
        assert not (tmp_path / "pwned").exists()
        ignored = "settings.engine, settings.model" if "engine =" in exrc[1] else "settings.model"
        assert ours[0] == f"tabfill: ignored cmd, {ignored} from {exrc[0]}: a project's config cannot set them; set them in your own config (:help tabfill-trust)"
        if exrc[0] == ".nvim.lua":  # a deferred call from the same file is told apart too
            assert ours[1].startswith("tabfill: ignored settings.engineModel from .nvim.lua")
            sent = editor.wait(  # the settings the server got: at initialize, then in didChangeConfiguration
                "deadlineMs = 99 at the server",
                lambda: (lambda st: (lambda sent: sent if any(s.get("deadlineMs") == 99 for s in sent) else None)(
                    [st["initializationOptions"], *(c["tabfill"] for c in st["configurations"])]))(server(editor, "fake/stats")),
            )
            for settings in sent:
                assert settings["model"] == "user/model" and "engineModel" not in settings and "engine" not in settings, settings

        # writes to the config table do not reach the server either; the user's own calls still do
        editor.lua("local t = require('tabfill'); t.config.cmd = {'sh'}; t.config.settings.model = 'x'")
        assert editor.info()["cmd"] == server_cmd and editor.info()["settings"]["model"] == "user/model"
        editor.lua("require('tabfill').update_settings({ model = 'user/other' })")
        assert editor.info()["settings"]["model"] == "user/other"
        assert len(own_messages(editor)) == len(ours)
