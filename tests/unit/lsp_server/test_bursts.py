"""Bursts over the stdio path: cancelled and superseded requests never reach the model, every request is
answered, and the document is the replay of the edits (the server in this process, a fake model)."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.pipe_server import PipeServer
from tests.unit.completion.test_continuations import TEXT, SlowSource

URI = "file:///burst.py"


def change(version: int, text: str, inserted: str) -> dict[str, Any]:
    line, column = text.count("\n"), len(text) - text.rfind("\n") - 1
    place = {"line": line, "character": column}
    return {"method": "textDocument/didChange", "params": {
        "textDocument": {"uri": URI, "version": version}, "contentChanges": [{"range": {"start": place, "end": place}, "text": inserted}],
    }}


def inline(msg_id: int, text: str) -> dict[str, Any]:
    place = {"line": text.count("\n"), "character": len(text) - text.rfind("\n") - 1}
    return {"id": msg_id, "method": "textDocument/inlineCompletion", "params": {
        "textDocument": {"uri": URI}, "position": place, "context": {"triggerKind": 2},
    }}


def test_a_burst_reaches_the_model_once_and_every_request_is_answered() -> None:
    source = SlowSource()
    pipe = PipeServer(source)
    try:
        pipe.start()
        pipe.send({"method": "textDocument/didOpen", "params": {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": TEXT}}})
        text, burst, ids, cancelled = TEXT, [], [], set()
        for index in range(100):  # 300 messages in one write (under a pipe's 64 KB): the server reads them at once
            burst.append(change(index + 2, text, "ab"[index % 2]))
            text += "ab"[index % 2]
            msg_id = pipe.next_id()
            ids.append(msg_id)
            burst.append(inline(msg_id, text))
            if index % 3:  # two thirds are cancelled; the newest (index 99) is not
                burst.append({"method": "$/cancelRequest", "params": {"id": msg_id}})
                cancelled.add(msg_id)
        pipe.send(*burst)
        answers = pipe.wait(ids)
        assert all(answers[i].get("error", {}).get("code") == -32800 for i in cancelled)
        answered = [i for i in ids if i not in cancelled]
        assert all("result" in answers[i] for i in answered)
        assert all(answers[i]["result"]["items"] == [] for i in answered[:-1])  # superseded: empty, at once
        assert source.generates == 1  # only the newest request reached the model
        status = pipe.request("tabfill/status", {"textDocument": {"uri": URI}})["result"]
        assert status["supersededRequests"] == len(answered) - 1
        assert status["document"] == {
            "uri": URI, "version": 101, "length": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
    finally:
        pipe.close()
