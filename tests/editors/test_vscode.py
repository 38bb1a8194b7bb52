"""The VS Code extension: `npm ci`, `tsc`, node's tests of its own logic, a `.vsix` from `vsce package`,
and the built extension driving the real server inside a stand-in for the `vscode` module.

VS Code itself cannot run here; the protocol the extension speaks is covered by tests/lsp too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.editors.conftest import SOURCE

pytestmark = pytest.mark.vscode

EXTENSION = Path(__file__).resolve().parents[2] / "editors" / "vscode"


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    npm = shutil.which(command[0])
    if npm is None:
        pytest.fail(f"{command[0]} is not on PATH (node >= 20 and npm are needed for the VS Code extension)")
    result = subprocess.run([npm, *command[1:]], cwd=EXTENSION, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed() -> None:
    if not (EXTENSION / "node_modules" / ".package-lock.json").is_file():
        run("npm", "ci", "--no-audit", "--no-fund")


def test_compiles_and_its_unit_tests_pass(installed: None) -> None:
    run("npx", "tsc", "-p", ".")
    result = run("node", "--test", "out/test/")
    summary = dict(line[2:].split(" ", 1) for line in result.stdout.splitlines() if line.startswith("# ") and " " in line[2:])
    assert int(summary["fail"]) == 0 and int(summary["pass"]) >= 12, result.stdout[-2000:]


def test_packages_a_vsix_with_the_compiled_extension_and_its_runtime_dependencies(installed: None, tmp_path: Path) -> None:
    run("npx", "tsc", "-p", ".")
    vsix = tmp_path / "tabfill.vsix"
    run("npx", "vsce", "package", "--skip-license", "--allow-missing-repository", "-o", str(vsix))
    with zipfile.ZipFile(vsix) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("extension/package.json"))
    assert "extension/out/src/extension.js" in names
    assert "extension/node_modules/vscode-languageclient/lib/node/main.js" in names
    assert not any(name.startswith("extension/out/test/") or name.endswith(".ts") for name in names)
    assert manifest["engines"]["vscode"] == "^1.91.0"
    assert manifest["main"] == "./out/src/extension.js"
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(vsix) as archive:
        archive.extractall(unpacked)
    loaded = run("node", str(EXTENSION / "test" / "support" / "load-with-stub-vscode.js"), str(unpacked / "extension" / "out" / "src" / "extension.js"))
    assert loaded.stdout.split() == ["function", "function"]  # activate, deactivate: the packaged code loads
    commands = {command["command"] for command in manifest["contributes"]["commands"]}
    assert {"tabfill.toggle", "tabfill.showLog"} <= commands
    settings = manifest["contributes"]["configuration"]["properties"]
    assert {"tabfill.server.path", "tabfill.server.args", "tabfill.model", "tabfill.deadlineMs"} <= set(settings)


def drive_real_server(tiny_model: Path, tmp_path: Path, *mode: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Build the extension and run test/support/drive-extension.js against the real server at the end of
    SOURCE; returns what the stand-in editor saw and the environment (its cache dir)."""
    run("npx", "tsc", "-p", ".")
    sample = tmp_path / "sample.py"
    sample.write_text(SOURCE + "\n", encoding="utf-8")
    server = [sys.executable, "-m", "tabfill.cli", "serve", "--model", str(tiny_model)]
    line, character = SOURCE.count("\n"), len(SOURCE.rsplit("\n", 1)[1])
    env = {**os.environ, "TABFILL_CACHE_DIR": str(tmp_path / "cache")}
    result = run(
        "node", "test/support/drive-extension.js", "out/src/extension.js", json.dumps(server), str(sample), str(line), str(character),
        *mode, env=env,
    )
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return seen, env


def test_the_extension_drives_the_real_server(installed: None, tiny_model: Path, reference_text: str, tmp_path: Path) -> None:
    """Status bar through loading to ready with a latency, the server's suggestion, accept, the
    show/partial-accept hooks, toggle; then the server's local counts."""
    seen, env = drive_real_server(tiny_model, tmp_path)
    warning = "tabfill: setting 'maxNewTokens' must be an integer in [1, 512], got 0; keeping 48"
    assert seen["messages"] == [["warning", warning]]  # only the refused setting changed on purpose
    assert any(re.fullmatch(r"\$\(loading~spin\) tabfill \d+%", text) for text in seen["seen"]), seen["seen"]
    assert seen["readyText"].startswith("$(check) tabfill") and "tiny-model" in seen["readyTooltip"]
    assert re.fullmatch(r"\$\(check\) tabfill \d+ ms", seen["afterText"]), seen["afterText"]
    assert [item["insertText"] for item in seen["items"]] == [reference_text]
    assert seen["items"][0]["command"] == "tabfill.accept" and seen["items"][0]["arguments"][0]["language"] == "python"
    assert seen["disabledText"] == "$(circle-slash) tabfill" and seen["disabled"] is None

    stats = subprocess.run(
        [sys.executable, "-m", "tabfill.cli", "stats", "--json"], capture_output=True, text=True, env=env, check=True
    )
    python = {row["language"]: row for row in json.loads(stats.stdout)["languages"]}["python"]
    assert (python["requests"], python["shown"], python["partial"], python["accepted"]) == (1, 1, 1, 1)
    assert python["acceptedChars"] == len(reference_text)


def test_the_provider_shows_the_first_piece_of_a_split_answer(installed: None, tiny_model: Path, reference_text: str, tmp_path: Path) -> None:
    """At the default confidencePercent the tiny random model is unsure of every token after the first: the
    provider offers the first piece only, with no range to replace and no accept command (that belongs to
    the whole suggestion)."""
    seen, _ = drive_real_server(tiny_model, tmp_path, "pieces")
    first = seen["items"][0]
    assert 0 < len(first["insertText"]) < len(reference_text) and reference_text.startswith(first["insertText"])
    assert first.get("command") is None


def test_a_deadline_cut_answer_triggers_the_inline_suggestion_again(installed: None, tiny_model: Path, reference_text: str, tmp_path: Path) -> None:
    """With tabfill.deadlineMs = 1 the first answer is cut; on tabfill/completionReady the extension runs
    editor.action.inlineSuggest.trigger (the cursor has not moved), and asking again gets the whole answer."""
    seen, _ = drive_real_server(tiny_model, tmp_path, "ready")
    assert seen["messages"] == []  # no warning from the server about the settings
    assert [item["insertText"] for item in seen["first"]] != [reference_text]  # cut by the deadline
    assert all(item["arguments"][0]["partial"] for item in seen["first"])
    assert seen["executed"].count("editor.action.inlineSuggest.trigger") == 1, seen["executed"]
    assert len(seen["retriggered"]) == 1
    again = seen["retriggered"][0]
    assert [item["insertText"] for item in again] == [reference_text]
    assert again[0]["arguments"][0]["source"] == "continuation" and again[0]["arguments"][0]["partial"] is False


def test_a_server_that_cannot_start_shows_an_error_with_the_reason(installed: None, tmp_path: Path) -> None:
    run("npx", "tsc", "-p", ".")
    sample = tmp_path / "sample.py"
    sample.write_text(SOURCE + "\n", encoding="utf-8")
    missing = str(tmp_path / "no-such-tabfill")
    result = run("node", "test/support/drive-extension.js", "out/src/extension.js", json.dumps([missing, "serve"]), str(sample), "0", "0")
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["readyText"] == "$(error) tabfill"
    assert "could not start" in seen["readyTooltip"] and missing in seen["readyTooltip"]
    assert seen["statusCommand"] == "tabfill.showLog"


def test_a_killed_server_is_restarted_and_the_suggestion_comes_back(installed: None, tiny_model: Path, reference_text: str, tmp_path: Path) -> None:
    """kill -9 of the server with a request in flight, twice: the extension starts a new server (the library's
    own restart is off), sends it the open document, asks again once the model is loaded (no keystroke) and
    shows the same suggestion; one message for the outage, not one per crash. The workspace's own
    tabfill.server.path and tabfill.model (set by the stand-in's .vscode/settings.json) are ignored."""
    seen, _ = drive_real_server(tiny_model, tmp_path, "restart", "2")
    assert [item["insertText"] for item in seen["first"]] == [reference_text]
    first, second = seen["recoveries"]
    for recovery in (first, second):
        assert recovery["newPid"] != recovery["pid"], recovery
        assert [item["insertText"] for item in recovery["again"]] == [reference_text]
        assert recovery["statusText"].startswith("$(check) tabfill"), recovery
    assert first["newPid"] == second["pid"]
    warnings = [message for kind, message in seen["messages"] if kind == "warning"]
    assert len(warnings) == 1 and "restarting it" in warnings[0], seen["messages"]
    assert not [message for kind, message in seen["messages"] if kind == "error"], seen["messages"]
    assert any("restart 1 of 5 in 500 ms" in entry for entry in seen["log"]), seen["log"]
    assert any("restart 2 of 5 in 1000 ms" in entry for entry in seen["log"]), seen["log"]  # backoff
    assert any(text.startswith("$(loading~spin)") for text in seen["seen"])
