"""Typing-follow on the server: tabfill/warm prefills the prompt at the cursor before the first key."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.lsp.conftest import field, inline, lsp_session, open_document, status

WARM = "tabfill/warm"


def big_document(name: str) -> str:
    """Larger than the prompt window (so opening it warms nothing), different from the first line on."""
    lines = [f"def {name}_{i}(value):\n    return value * {i} + len('{name}')\n" for i in range(80)]
    return f"# module {name}\n" + "\n".join(lines) + f"\ndef {name}_last(value):\n    return "


async def cached_tokens_of_a_request_at_the_end(lsp: object, uri: str, text: str) -> tuple[int, int]:
    line, character = text.count("\n"), len(text.rsplit("\n", 1)[1])
    await inline(lsp, uri, line, character)  # type: ignore[arg-type]
    generation = field(field(await status(lsp), "engine"), "lastGeneration")  # type: ignore[arg-type]
    return field(generation, "cachedTokens"), field(generation, "promptTokens")


async def settled_warm_up(lsp: object, timeout_s: float = 60.0) -> int:
    """Wait until the engine's live slot holds a long prompt and stopped growing; returns its length."""
    seen: list[int] = []
    for _ in range(int(timeout_s / 0.25)):
        seen.append(int(field(field(await status(lsp), "engine"), "liveTokens")))  # type: ignore[arg-type]
        if len(seen) >= 3 and seen[-1] > 200 and seen[-1] == seen[-3]:
            return seen[-1]
        await asyncio.sleep(0.25)
    raise AssertionError(f"the warm-up never settled: {seen}")


async def test_warm_at_the_cursor_prefills_a_document_larger_than_the_window(tiny_model: Path) -> None:
    args = ["--model", str(tiny_model), "--deadline-ms", "60000"]
    async with lsp_session(args) as lsp:
        warmed, cold = "file:///work/warmed.py", "file:///work/cold.py"
        warmed_text, cold_text = big_document("alpha"), big_document("omega")
        assert len(warmed_text) > 384 * 3 * 2  # twice the default window: didOpen alone warms nothing
        open_document(lsp, warmed, warmed_text)
        open_document(lsp, cold, cold_text)
        line, character = warmed_text.count("\n"), len(warmed_text.rsplit("\n", 1)[1])
        lsp.protocol.notify(WARM, {"textDocument": {"uri": warmed}, "position": {"line": line, "character": character}})
        await settled_warm_up(lsp)  # it runs in the background; a request would preempt it
        cached, prompt = await cached_tokens_of_a_request_at_the_end(lsp, warmed, warmed_text)
        assert prompt > 200 and cached >= prompt - 2, (cached, prompt)  # all but the last token(s) were ready
        cold_cached, cold_prompt = await cached_tokens_of_a_request_at_the_end(lsp, cold, cold_text)
        assert cold_prompt > 200 and cold_cached < cold_prompt // 2, (cold_cached, cold_prompt)


async def test_a_bad_warm_notification_is_ignored_and_the_server_keeps_serving(tiny_model: Path) -> None:
    async with lsp_session(["--model", str(tiny_model), "--deadline-ms", "60000"]) as lsp:
        uri = "file:///work/small.py"
        open_document(lsp, uri, "def f():\n    return ")
        for params in (None, {"textDocument": {"uri": uri}}, {"textDocument": {"uri": uri}, "position": {"line": -1, "character": 0}},
                       {"textDocument": {"uri": uri}, "position": {"line": 99, "character": 0}},
                       {"textDocument": {"uri": "file:///work/not-open.py"}, "position": {"line": 0, "character": 0}}):
            lsp.protocol.notify(WARM, params)
        result = await asyncio.wait_for(inline(lsp, uri, 1, 11), 30)
        assert result is not None and field(await status(lsp), "state") == "ready"
        assert not lsp.messages  # nothing for the user to see
