"""A burst over real stdio to `tabfill serve` with the default model: the newest request is answered, no
request is left without an answer, and the document is the replay of the edits (timings: bench/soak.py)."""

from __future__ import annotations

import pytest

from bench.soak import burst, client_of, start

pytestmark = pytest.mark.model


async def test_a_burst_of_keystrokes_and_cancels_leaves_the_server_answering() -> None:
    system = await start("default")
    try:
        figures = await burst(system, 1200)
        assert figures["unanswered"] == 0
        assert figures["newest_answer_ms"] is not None  # answered (within the 120 s the bench waits)
        assert figures["superseded"] > 0 and figures["document_equals_replay"] is True
        assert figures["next_request_ms"] < 60_000
    finally:
        await client_of(system).close()
