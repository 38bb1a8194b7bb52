"""Crash and restart in the real clients: the time from `kill -9` of the server (a request in flight) to the
next suggestion on screen, with no key pressed after the kill.

    python -m bench.restart [--model default] [--rounds 3] [--clients nvim,vscode]

Neovim: editors/nvim in headless Neovim (bench/follow_clients.NvimClient), insert mode at the end of a
sample file with the suggestion shown; each round dismisses it, asks again (so a request is in flight),
kills the server and waits for the ghost text to be drawn again (the plugin restarts the server, which
reloads the model; on its `$/progress` end the plugin asks at the cursor). VS Code: the built extension in
the stand-in `vscode` module (editors/vscode/test/support/drive-extension.js, mode `restart`), which waits
for the extension's own inline-suggest trigger after the restart. The restarts of one run are one outage:
the backoff (0.5 s, then 1 s, 2 s, ...) is part of the figures. Writes bench/RESTART.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXTENSION = ROOT / "editors" / "vscode"
SAMPLE = "import os\n\n\ndef read_lines(path):\n    with open(path) as handle:\n        return "
GHOST = "#vim.api.nvim_buf_get_extmarks(0, vim.api.nvim_create_namespace('tabfill'), 0, -1, {})"
WAIT_S = 600.0


def log(message: str) -> None:
    print(f"[restart] {message}", file=sys.stderr, flush=True)


def server_command(model: str) -> list[str]:
    return [sys.executable, "-m", "tabfill.cli", "serve", "--model", model]


def until(what: str, probe: Any, timeout_s: float = WAIT_S, every_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every_s)


def nvim_rounds(model: str, rounds: int, workdir: Path) -> list[float]:
    from bench.follow_clients import NvimClient  # NOTE: here, so the report's test does not load the bench systems

    with NvimClient.start(workdir / "nvim", server_command(model)) as client:
        sample = client.workdir / "sample.py"
        sample.write_text(SAMPLE + "\n", encoding="utf-8")
        client.nvim.command(f"edit {sample}")
        until("the model", lambda: client.lua("local s = require('tabfill').server_status(0, 2000); return s ~= nil and s.state == 'ready'"), every_s=0.2)
        client.lua("require('tabfill').config.auto_trigger = false")  # only the plugin's own asking again
        client.nvim.input("GA")
        client.lua("require('tabfill').trigger()")
        until("the first suggestion", lambda: client.lua(f"return ({GHOST}) > 0"))
        figures = []
        for round_ in range(rounds):
            [pid] = client.lua("return vim.api.nvim_get_proc_children(vim.fn.getpid())")
            client.lua("require('tabfill').dismiss(); require('tabfill').trigger()")
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            client.lua("require('tabfill').dismiss()")  # an answer that beat the kill is not the one we wait for
            until("the suggestion after the restart",
                  lambda: client.lua(f"return require('tabfill').info().restarted > {round_} and ({GHOST}) > 0"), every_s=0.005)
            figures.append((time.monotonic() - killed) * 1000)
            log(f"nvim round {round_ + 1}: {figures[-1]:.0f} ms")
        client.nvim.input("<Esc>")
        return figures


def vscode_rounds(model: str, rounds: int, workdir: Path) -> list[float]:
    if not (EXTENSION / "node_modules" / ".package-lock.json").is_file():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXTENSION, check=True, capture_output=True)
    subprocess.run(["npx", "tsc", "-p", "."], cwd=EXTENSION, check=True, capture_output=True)
    sample = workdir / "sample.py"
    sample.write_text(SAMPLE + "\n", encoding="utf-8")
    line, character = SAMPLE.count("\n"), len(SAMPLE.rsplit("\n", 1)[1])
    result = subprocess.run(
        ["node", "test/support/drive-extension.js", "out/src/extension.js", json.dumps(server_command(model)), str(sample),
         str(line), str(character), "restart", str(rounds)],
        cwd=EXTENSION, capture_output=True, text=True, timeout=WAIT_S * rounds,
    )
    if result.returncode != 0:
        raise RuntimeError(f"drive-extension.js failed:\n{result.stderr[-3000:]}")
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    figures = [float(recovery["ms"]) for recovery in seen["recoveries"]]
    for round_, ms in enumerate(figures):
        log(f"vscode round {round_ + 1}: {ms:.0f} ms")
    return figures


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Crash and restart in the real clients (issue 17)", "",
        f"- Command: `{results['command']}`; wall time {results['wall_s']:.0f} s",
        f"- Date: {results['date']}; commit `{results['commit']}`; model `{results['model']}`",
        f"- Machine load (1-minute load average, {os.cpu_count()} cores): {results['load']}", "",
        "Time from `kill -9` of the server (a completion request in flight) to the next suggestion on screen, no key"
        " pressed after the kill: the client notices the exit, waits its backoff (0.5 s for the first restart of an"
        " outage, then 1 s, 2 s, ...), starts a new server, which loads the model; the client sends the open"
        " documents and asks again at the cursor once the model is loaded. Rounds of one run are one outage.", "",
        "| client | rounds (ms) | median ms |", "|---|---|---|",
    ]
    for name, figures in results["clients"].items():
        rounds = ", ".join(f"{ms:.0f}" for ms in figures)
        lines.append(f"| {name} | {rounds} | {statistics.median(figures):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="nvim,vscode")
    parser.add_argument("--out", type=Path, default=HERE / "RESTART.md")
    args = parser.parse_args(argv)
    started, load_before = time.monotonic(), os.getloadavg()[0]
    clients: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tabfill-restart-") as tmp:
        for name in args.clients.split(","):
            runner = {"nvim": nvim_rounds, "vscode": vscode_rounds}[name]
            (Path(tmp) / name).mkdir()
            clients[{"nvim": "Neovim plugin", "vscode": "VS Code extension"}[name]] = runner(args.model, args.rounds, Path(tmp) / name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    results = {
        "command": "python -m bench.restart " + " ".join(argv if argv is not None else sys.argv[1:]),
        "wall_s": time.monotonic() - started, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
        "model": args.model, "load": f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end", "clients": clients,
    }
    text = report(results)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_name("restart.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
