"""The VS Code extension: `npm ci`, `tsc`, node's tests of its own logic, and a `.vsix` from `vsce package`.

VS Code itself cannot run here; the protocol the extension speaks is covered by tests/lsp.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.vscode

EXTENSION = Path(__file__).resolve().parents[2] / "editors" / "vscode"


def run(*command: str) -> subprocess.CompletedProcess[str]:
    npm = shutil.which(command[0])
    if npm is None:
        pytest.fail(f"{command[0]} is not on PATH (node >= 20 and npm are needed for the VS Code extension)")
    result = subprocess.run([npm, *command[1:]], cwd=EXTENSION, capture_output=True, text=True, timeout=600)
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
