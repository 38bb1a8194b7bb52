"""The real default model (SmolLM2-135M): CLI, LSP, cancellation. Marked `model`; run in .ci/run."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from tabfill.completion.models import default_model_dir, pull_default
from tests.lsp.conftest import inline, lsp_session, open_document

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def pulled() -> Path:
    return pull_default()


def looks_like_python_body(header: str, body: str) -> bool:
    try:
        ast.parse(header + body)
    except SyntaxError:
        # a truncated body may end mid-statement: accept when all but the last line parse
        lines = body.rstrip().split("\n")
        try:
            ast.parse(header + "\n".join(lines[:-1]) if len(lines) > 1 else header + "    pass\n")
        except SyntaxError:
            return False
    return True


def test_pull_is_idempotent_and_loads_fast() -> None:
    from tabfill.completion.models import load_model

    started = time.monotonic()
    assert pull_default() == default_model_dir()
    assert time.monotonic() - started < 5
    loaded = load_model("default")
    assert loaded.tokenizer("def")["input_ids"]
    print(f"default model load: {loaded.load_ms:.0f} ms")


def test_cli_complete_prints_a_code_like_suggestion(tmp_path: Path) -> None:
    source = tmp_path / "fib.py"
    source.write_text("def fibonacci(n):\n")
    result = subprocess.run(
        [sys.executable, "-m", "tabfill.cli", "complete", str(source), "--line", "1", "--col", "0"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    suggestion = result.stdout.rstrip("\n")
    assert suggestion.strip(), result.stderr
    assert suggestion.startswith("    "), suggestion  # an indented body
    assert "return" in suggestion or "if" in suggestion, suggestion
    assert looks_like_python_body("def fibonacci(n):\n", suggestion + "\n"), suggestion
    assert "prefill=" in result.stderr and "decode=" in result.stderr and "load=" in result.stderr


async def test_lsp_inline_completion_with_the_default_model() -> None:
    async with lsp_session(["--deadline-ms", "60000"]) as lsp:
        uri = "file:///work/fib.py"
        open_document(lsp, uri, "def fibonacci(n):\n")
        result = await inline(lsp, uri, 1, 0)
        assert result is not None and len(result.items) == 1
        text = result.items[0].insert_text
        assert isinstance(text, str) and text.startswith("    ") and text.strip()
        assert looks_like_python_body("def fibonacci(n):\n", text + "\n"), text


async def test_cancel_request_stops_a_long_generation_and_the_next_is_served_promptly() -> None:
    options = {"singleLineMaxNewTokens": 256, "deadlineMs": 600000}
    async with lsp_session([], init_options=options) as lsp:
        uri = "file:///work/long.py"
        text = "values = [" + ", ".join(str(i) for i in range(40)) + ", "
        open_document(lsp, uri, text)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(0, len(text)),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        started = time.monotonic()
        long_request = asyncio.ensure_future(
            lsp.protocol.send_request_async("textDocument/inlineCompletion", params, msg_id="long-1")
        )
        await asyncio.sleep(1.0)  # the generation is running (256 tokens would take many seconds here)
        lsp.protocol.notify("$/cancelRequest", types.CancelParams(id="long-1"))
        with pytest.raises(JsonRpcException) as error:
            await asyncio.wait_for(long_request, 10)
        assert error.value.code == -32800  # RequestCancelled
        other = "file:///work/short.py"
        open_document(lsp, other, "def add(a, b):\n    return a")
        served = time.monotonic()
        result = await asyncio.wait_for(inline(lsp, other, 1, 12), 10)
        assert result is not None
        # promptly: well under the time the cancelled 256-token generation would have taken (> 10 s here)
        assert time.monotonic() - served < 5, time.monotonic() - served
        assert time.monotonic() - started < 10


def test_a_user_gguf_file_is_converted_once_and_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tabfill.completion.models import fetch_default_gguf, resolve_model

    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "cache"))
    gguf = fetch_default_gguf(tmp_path / "download")
    stages: list[str] = []
    converted = Path(resolve_model(str(gguf), lambda stage, _f: stages.append(stage)))
    assert converted.parent == tmp_path / "cache" / "models"
    assert (converted / "model.safetensors").is_file() and any("converting" in s for s in stages)
    stages.clear()
    assert Path(resolve_model(str(gguf), lambda stage, _f: stages.append(stage))) == converted
    assert stages == []  # the second time nothing is converted
