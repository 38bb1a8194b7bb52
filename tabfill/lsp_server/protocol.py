"""pygls protocol with answers for malformed messages.

pygls by itself logs a request whose params fail to structure (e.g. a negative `character`, which
lsprotocol types as uinteger) and never answers it; an editor then waits forever. Here such a request
gets a JSON-RPC InvalidParams error, and a body that is not JSON gets a ParseError with a null id. A
message that is JSON but not JSON-RPC (not an object, a wrong "jsonrpc", an id that is neither number nor
string, a method that is not a string), and any request after `shutdown`, get an InvalidRequest error;
pygls would drop them unanswered.

pygls also keeps its own copy of every open document (`workspace`), which tabfill never reads: that costs a
rebuild of the whole text per didChange, and its position codec clamps a range end past the end of a line to
the line's last character *in place*, so tabfill's handler saw another edit than the client sent (a fuzzed
didChange deleting to "past the line end" left the last character). The text-document notifications here
go straight to tabfill's handlers.

pygls 2.1.1 files the future of every handler it runs under its message id, to find it for a
$/cancelRequest, and removes it only when it answers a request: a notification's future (under a fresh
uuid, its handler a generator here) and the futures of a generator's inner steps stayed forever — some 2 KB
per didChange (+1.6 MB per 1,000 keystrokes in bench.soak). Here every future filed under an id the
client never sent is dropped when it is done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any

from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest, JsonRpcParseError
from lsprotocol import types
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

log = logging.getLogger(__name__)


class _Answered:
    """Stands in for a message that was already answered with an error; it is then ignored."""

    jsonrpc = "answered"


ANSWERED = _Answered()


def position_problem(params: Any) -> str | None:
    """cattrs quietly turns 1.5 into 1 and "3" into 3; LSP positions are integers, so say so."""
    if not isinstance(params, dict):
        return None
    candidates = [params.get("position")]
    if isinstance(params.get("range"), dict):
        candidates += [params["range"].get("start"), params["range"].get("end")]
    for position in candidates:
        if not isinstance(position, dict):
            continue
        for key in ("line", "character"):
            value = position.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                return f"{key} must be a non-negative integer, got {value!r}"
    return None


class TabfillProtocol(LanguageServerProtocol):
    # Sees each valid message (as plain JSON) before it is dispatched (the server notes completion requests).
    before_dispatch: Callable[[dict[str, Any]], None] | None = None

    def structure_message(self, data: dict[str, Any]) -> Any:
        if "jsonrpc" in data and data.get("id") is not None and "method" in data:
            problem = position_problem(data.get("params"))
            if problem is not None:
                return self._answer_invalid(data, problem)
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            msg_id = data.get("id")
            if msg_id is None or "method" not in data:
                raise
            return self._answer_invalid(data, _short(exc.__cause__ or exc))

    def _execute_handler(self, msg_id: Any, handler: Any, callback: Any, args: Any = None, kwargs: Any = None) -> None:
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        answers_request = isinstance(callback, partial) and callback.func == self._send_handler_result
        if answers_request:
            return  # pygls drops it when it sends the answer (and a $/cancelRequest may still need it)
        future = self._request_futures.get(msg_id)
        if future is not None:
            future.add_done_callback(partial(self._forget_future, msg_id))

    def _forget_future(self, msg_id: Any, future: Future[Any]) -> None:
        if self._request_futures.get(msg_id) is future:
            del self._request_futures[msg_id]

    def _answer_invalid(self, data: dict[str, Any], problem: str) -> _Answered:
        message = f"invalid params for {data.get('method')}: {problem}"
        log.warning("%s", message)
        self._send_response(data["id"], error=JsonRpcInvalidParams(message).to_response_error())
        return ANSWERED

    def _user_handler(self, method: str, params: Any) -> Iterator[tuple[Any, tuple[Any, ...], None]]:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Iterator[tuple[Any, tuple[Any, ...], None]]:
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Iterator[tuple[Any, tuple[Any, ...], None]]:
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Iterator[tuple[Any, tuple[Any, ...], None]]:
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_CLOSE, params)

    def handle_message(self, message: Any) -> None:
        if message is ANSWERED:
            return
        super().handle_message(message)

    def receive(self, body: bytes) -> None:
        """One message body as read from the transport: parse, check, structure and dispatch it; whatever it
        holds, a request in it is answered."""
        try:
            data = json.loads(body)
        except ValueError as exc:  # not JSON, or not UTF-8
            log.warning("a message that is not JSON: %s", exc)
            self.answer_parse_error(exc)
            return
        problem = request_problem(data)
        if problem is not None:
            msg_id = data.get("id") if isinstance(data, dict) else None
            self.answer_invalid_request(msg_id if _valid_id(msg_id) else None, problem)
            return
        if data.get("jsonrpc") != "2.0" or not isinstance(data.get("method", ""), str):
            log.warning("ignored a notification or response that is not JSON-RPC 2.0: %.200r", body)  # nothing to answer
            return
        if self._shutdown and "id" in data and data.get("method", "exit") != "exit":
            self.answer_invalid_request(data["id"], f"the server is shutting down: {data['method']} refused")
            return
        if self.before_dispatch is not None:
            self.before_dispatch(data)
        message = self.structure_message(data)
        self.handle_message(message)

    def answer_invalid_request(self, msg_id: Any, problem: str) -> None:
        log.warning("invalid request: %s", problem)
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": JsonRpcInvalidRequest.CODE, "message": problem}})

    def answer_parse_error(self, error: Exception) -> None:
        # JSON-RPC 2.0 answers a parse error with "id": null; pygls' serializer would drop a None id.
        self._send_data(
            {"jsonrpc": "2.0", "id": None, "error": {"code": JsonRpcParseError.CODE, "message": f"could not parse message: {error}"}}
        )


def request_problem(data: Any) -> str | None:
    """Why a parsed message is not a valid JSON-RPC request, when it looks like one (None: it is fine, or it
    is a notification or a response)."""
    if not isinstance(data, dict):
        return f"a message must be a JSON object, got {type(data).__name__}"
    if "method" not in data:
        return None
    if "id" in data and not _valid_id(data["id"]):
        return f"a request id must be a number or a string, got {data['id']!r:.80}"
    if "id" in data and data.get("jsonrpc") != "2.0":
        return f"jsonrpc must be \"2.0\", got {data.get('jsonrpc')!r:.80}"
    if "id" in data and not isinstance(data["method"], str):
        return f"method must be a string, got {data['method']!r:.80}"
    return None


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    exceptions = getattr(error, "exceptions", None)
    if exceptions:  # cattrs ClassValidationError groups the field errors
        parts = []
        for inner in exceptions:
            notes = getattr(inner, "__notes__", [])
            parts.append(f"{'; '.join(notes)}: {inner}" if notes else str(inner))
        return "; ".join(parts)[:400]
    return (text[0] if text else type(error).__name__)[:400]
