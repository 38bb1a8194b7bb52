"""`tabfill/completionReady`: whole (finished: true) or stopped (finished: false + reason), only while the
document is at the request's version."""

from __future__ import annotations

from typing import Any

import pytest
from lsprotocol import types

from tabfill.completion.types import CompletionRequest
from tabfill.lsp_server.server import READY_NOTIFICATION, TabfillServer

TEXT = "def area(r):\n    return "


def test_the_notification_says_whether_the_answer_is_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TabfillServer, "encoding", property(lambda self: "utf-16"))  # not initialized here
    server = TabfillServer()
    sent: list[tuple[str, Any]] = []
    server.protocol.notify = lambda method, params=None: sent.append((method, params))  # type: ignore[method-assign]
    try:
        server.documents.open(types.TextDocumentItem("file:///a.py", "python", 3, TEXT))
        request = CompletionRequest("file:///a.py", "python", 3, TEXT, len(TEXT), "1")
        server._completion_ready(request, "")
        server._completion_ready(request, "timeLimit")
        server._completion_ready(CompletionRequest("file:///a.py", "python", 2, TEXT, len(TEXT), "0"), "superseded")
        place = {"textDocument": {"uri": "file:///a.py", "version": 3}, "position": {"line": 1, "character": 11}}
        assert sent == [
            (READY_NOTIFICATION, {**place, "finished": True}),
            (READY_NOTIFICATION, {**place, "finished": False, "reason": "timeLimit"}),
        ]  # the one for version 2 is not sent: the document moved on
        assert server.service.on_stopped is not None and server.service.on_ready is not None
    finally:
        server.service.close()
