"""What the server keeps per message: nothing once the message is handled (bench.soak's RSS growth)."""

from __future__ import annotations

from tests.pipe_server import PipeServer
from tests.unit.completion.test_continuations import TEXT, SlowSource
from tests.unit.lsp_server.test_bursts import URI, change


def test_handled_notifications_leave_no_futures_behind() -> None:
    """pygls 2.1.1 filed a future per notification (under a fresh uuid) and never dropped it."""
    pipe = PipeServer(SlowSource())
    try:
        pipe.start()
        pipe.send({"method": "textDocument/didOpen", "params": {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": TEXT}}})
        text = TEXT
        for version in range(2, 202):
            pipe.send(change(version, text, "x"))
            text += "x"
        status = pipe.request("tabfill/status", {"textDocument": {"uri": URI}})["result"]  # after every change above
        assert status["document"]["version"] == 201
        kept = dict(pipe.server.protocol._request_futures)
        assert len(kept) <= 2, f"{len(kept)} futures kept after 200 didChange: {list(kept)[:5]}"
    finally:
        pipe.close()
