"""`tabfill serve` configured for a team engine by the editor's settings: it completes through the engine
and never loads torch or transformers (an in-process engine server with a fake model stands in)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from bench.lsp_client import LspClient
from tests.unit.engine_server.fakes import engine_server


async def test_a_front_end_configured_for_a_team_engine_completes_without_torch(tmp_path: Path) -> None:
    with engine_server(tmp_path) as running:
        client = await LspClient.spawn([sys.executable, "-m", "tabfill.cli", "serve"], env={"TABFILL_CACHE_DIR": str(tmp_path / "cache")})
        try:
            options = {"engine": f"tcp://127.0.0.1:{running.port}", "engineToken": running.tokens["alice"], "deadlineMs": 10_000}
            capabilities = {"general": {"positionEncodings": ["utf-16"]}, "textDocument": {"inlineCompletion": {}}}
            await client.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": capabilities,
                                                "initializationOptions": options})
            client.notify("initialized", {})
            deadline = time.monotonic() + 60
            while (status := await client.request("tabfill/status", None))["state"] != "ready" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert status["state"] == "ready", status
            assert status["engine"]["kind"] == "team engine" and status["engine"]["tenant"] == "alice"
            uri = "file:///work/a.txt"
            client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "plaintext", "version": 1, "text": "t5 t6 t7"}})
            result = await client.request("textDocument/inlineCompletion", {
                "textDocument": {"uri": uri}, "position": {"line": 0, "character": 8}, "context": {"triggerKind": 2}})
            items = result["items"] if isinstance(result, dict) else result
            assert items and items[0]["insertText"], result  # the fake model's "8,9,..." came back through the engine
            # the engine's per-token confidence came along: the answer is split where the fake was unsure
            pieces = items[0]["command"]["arguments"][0]["pieces"]
            assert len(pieces) >= 2 and "".join(pieces) == items[0]["insertText"]
            assert all(piece.endswith(",") for piece in pieces[:-1]), pieces  # cut at token starts
            assert running.engine.started  # and the engine generated it
            maps = Path(f"/proc/{client.process.pid}/maps").read_text()
            assert "libtorch" not in maps and "transformers" not in maps
        finally:
            await client.close()
