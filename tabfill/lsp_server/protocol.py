"""pygls protocol with answers for malformed messages.

pygls by itself logs a request whose params fail to structure (e.g. a negative `character`, which
lsprotocol types as uinteger) and never answers it; an editor then waits forever. Here such a request
gets a JSON-RPC InvalidParams error, and a body that is not JSON gets a ParseError with a null id.
"""

from __future__ import annotations

import logging
from typing import Any

from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcParseError
from pygls.protocol import LanguageServerProtocol

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

    def _answer_invalid(self, data: dict[str, Any], problem: str) -> _Answered:
        message = f"invalid params for {data.get('method')}: {problem}"
        log.warning("%s", message)
        self._send_response(data["id"], error=JsonRpcInvalidParams(message).to_response_error())
        return ANSWERED

    def handle_message(self, message: Any) -> None:
        if message is ANSWERED:
            return
        super().handle_message(message)

    def answer_parse_error(self, error: Exception) -> None:
        # JSON-RPC 2.0 answers a parse error with "id": null; pygls' serializer would drop a None id.
        self._send_data(
            {"jsonrpc": "2.0", "id": None, "error": {"code": JsonRpcParseError.CODE, "message": f"could not parse message: {error}"}}
        )


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
