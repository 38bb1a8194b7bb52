"""Hostile LSP traffic (hypothesis strategies) and what the server must end up with (a replay of the edits).

A session is a list of steps drawn by hypothesis; `Traffic.frames` turns each step into bytes against the
documents as the client has them (edits land on real positions, or on positions past the end on purpose),
and `Replay` applies the same edits by the LSP rules (UTF-16 positions; a character past the end of a line
is its end, a line past the end is the document's end, a position inside a surrogate pair is the start of
its character). The server must answer every request that reached it in a readable frame, with a result
or a JSON-RPC error, and end with each open document equal to the replay.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

_BREAK = re.compile(r"\r\n|\r|\n")
LANGUAGES = ("python", "typescript", "plaintext", "cobol")
# Requests a fuzzer may send at random; never shutdown or exit (they end the session by design).
METHODS = (
    "textDocument/inlineCompletion", "textDocument/completion", "tabfill/status", "workspace/executeCommand",
    "textDocument/hover", "no/such/method", "$/unknown", "tabfill/warm", "textDocument/didShowCompletion", "initialize",
)
NOTIFICATIONS = (
    "textDocument/didOpen", "textDocument/didChange", "textDocument/didClose", "tabfill/warm", "$/cancelRequest",
    "textDocument/didShowCompletion", "textDocument/didPartiallyAcceptCompletion", "workspace/didChangeConfiguration",
    "no/such/notification", "$/setTrace",
)


# ---------------------------------------------------------------------------------------------- replay
def lines(text: str) -> list[tuple[int, int]]:
    """(start, end of content) of each line; breaks are \\r\\n, \\r and \\n."""
    spans, start = [], 0
    for match in _BREAK.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return spans


def offset_of(text: str, line: int, character: int) -> int:
    """The code-point offset of an LSP position (UTF-16 character), clamped by the LSP rules."""
    spans = lines(text)
    if line >= len(spans):
        return len(text)
    start, end = spans[line]
    units = 0
    for index in range(start, end):
        units += 2 if text[index] > "\uffff" else 1
        if units > character:
            return index
    return end


def position_of(text: str, offset: int) -> dict[str, int]:
    """The LSP position (UTF-16) of a code-point offset that is not inside a line break."""
    before = text[:offset]
    line = len(_BREAK.findall(before))
    start = max((m.end() for m in _BREAK.finditer(before)), default=0)
    return {"line": line, "character": len(before[start:].encode("utf-16-le", "surrogatepass")) // 2}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Replay:
    """The open documents as the server must have them."""

    texts: dict[str, str] = field(default_factory=dict)

    def open(self, uri: str, text: str) -> None:
        self.texts[uri] = text

    def close(self, uri: str) -> None:
        self.texts.pop(uri, None)

    def change(self, uri: str, changes: list[dict[str, Any]]) -> None:
        text = self.texts.get(uri)
        if text is None:
            return  # not open: the server ignores it
        for change in changes:
            if "range" not in change:
                text = change["text"]
                continue
            start, end = change["range"]["start"], change["range"]["end"]
            a, b = offset_of(text, start["line"], start["character"]), offset_of(text, end["line"], end["character"])
            a, b = min(a, b), max(a, b)
            text = text[:a] + change["text"] + text[b:]
        self.texts[uri] = text


# ---------------------------------------------------------------------------------------------- strategies
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Code-ish text with line breaks of each kind, emoji (two UTF-16 units), CJK and lone surrogates.
code_text = st.lists(
    st.sampled_from(list("abc xyz_():=.,'\"\t") + ["\n", "\r\n", "\r", "😀", "漢", "é", "\ud800", "    ", "def ", "return "]),
    max_size=30,
).map("".join)
fraction = st.floats(0, 1)
any_int = st.integers(-5, 2**31 + 5) | st.sampled_from([0, 1, -1, 2**31 - 1, 2**53])
bad_position = st.one_of(
    st.fixed_dictionaries({"line": st.sampled_from([-1, "1", 1.5, None, True]), "character": st.integers(0, 3)}),
    st.fixed_dictionaries({"line": st.integers(0, 3)}),
    st.sampled_from([None, "here", [], 5]),
)

step = st.one_of(
    st.tuples(st.just("open"), st.integers(0, 3), st.sampled_from(LANGUAGES), code_text),
    st.tuples(
        st.just("change"), st.integers(0, 4), any_int,
        st.lists(st.tuples(fraction, fraction, code_text, st.sampled_from(["ok", "ok", "ok", "past line end", "past doc end", "reversed"])), max_size=3),
    ),
    st.tuples(st.just("full"), st.integers(0, 4), any_int, code_text),
    st.tuples(st.just("close"), st.integers(0, 4)),
    st.tuples(st.sampled_from(["inline", "completion"]), st.integers(0, 4), fraction, st.booleans(), any_int, any_int),
    st.tuples(st.just("request"), st.sampled_from(METHODS), json_values),
    st.tuples(st.just("notify"), st.sampled_from(NOTIFICATIONS), json_values),
    st.tuples(st.sampled_from(["inline", "completion"]).map(lambda kind: "bad " + kind), st.integers(0, 4), bad_position),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("status"), st.integers(0, 4)),
    st.tuples(st.just("frame"), st.sampled_from(["bad header", "not json", "bad utf-8", "jsonrpc 1.0", "bad id", "too long", "too short", "garbage", "array", "number"])),
    st.tuples(st.just("huge"), st.sampled_from(["open", "request", "change"]), st.integers(100_000, 3_000_000)),
)
sessions = st.lists(step, min_size=1, max_size=40)


# ---------------------------------------------------------------------------------------------- traffic
def frame(message: dict[str, Any] | bytes, length_delta: int = 0) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps({"jsonrpc": "2.0", **message}).encode()
    return b"Content-Length: %d\r\n\r\n" % (len(body) + length_delta) + body


@dataclass
class Traffic:
    """Turns steps into frames for documents `prefix` + 0..4 (4 is never opened), keeping the replay and the
    ids of the requests that must be answered."""

    prefix: str
    replay: Replay = field(default_factory=Replay)
    next_id: int = 1_000_000
    expected: list[int] = field(default_factory=list)  # request ids in readable frames: each must get an answer
    sent: int = 0  # messages (frames) sent
    versions: dict[str, int] = field(default_factory=dict)

    def uri(self, index: int) -> str:
        return f"{self.prefix}{index}.{'py' if index % 2 == 0 else 'ts'}"

    def _id(self, expect: bool = True) -> int:
        self.next_id += 1
        if expect:
            self.expected.append(self.next_id)
        return self.next_id

    def request(self, method: str, params: Any) -> bytes:
        return frame({"id": self._id(), "method": method, "params": params})

    def frames(self, item: tuple[Any, ...]) -> list[bytes]:
        out = self._frames(item)
        self.sent += len(out)
        return out

    def _frames(self, item: tuple[Any, ...]) -> list[bytes]:
        kind = item[0]
        if kind == "open":
            _, index, language, text = item
            uri = self.uri(min(index, 3))
            self.replay.open(uri, text)
            return [frame({"method": "textDocument/didOpen", "params": {"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}})]
        if kind == "change":
            _, index, version, edits = item
            uri = self.uri(index)
            text = self.replay.texts.get(uri, "")
            changes = []
            for a, b, inserted, how in edits:
                start, end = sorted((int(a * len(text)), int(b * len(text))))
                start_position, end_position = _position_between(text, start), _position_between(text, end)
                if how == "past line end":
                    end_position = {"line": end_position["line"], "character": end_position["character"] + 1000}
                elif how == "past doc end":
                    end_position = {"line": end_position["line"] + 1000, "character": 3}
                elif how == "reversed":
                    start_position, end_position = end_position, start_position
                change = {"range": {"start": start_position, "end": end_position}, "text": inserted}
                changes.append(change)
                if _integer(version):  # each change applies to the text the previous left
                    self.replay.change(uri, [change])
                    text = self.replay.texts.get(uri, text)
            return [frame({"method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": version}, "contentChanges": changes}})]
        if kind == "full":
            _, index, version, text = item
            uri = self.uri(index)
            if _integer(version):
                self.replay.change(uri, [{"text": text}])
            return [frame({"method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}})]
        if kind == "close":
            uri = self.uri(item[1])
            self.replay.close(uri)
            return [frame({"method": "textDocument/didClose", "params": {"textDocument": {"uri": uri}}})]
        if kind in ("inline", "completion"):
            _, index, where, exact, line, character = item
            uri = self.uri(index)
            text = self.replay.texts.get(uri, "")
            position = _position_between(text, int(where * len(text))) if exact else {"line": abs(line), "character": abs(character)}
            method = "textDocument/inlineCompletion" if kind == "inline" else "textDocument/completion"
            params: dict[str, Any] = {"textDocument": {"uri": uri}, "position": position}
            if kind == "inline":
                params["context"] = {"triggerKind": 2}
            return [self.request(method, params)]
        if kind.startswith("bad "):
            _, index, position = item
            method = "textDocument/inlineCompletion" if kind == "bad inline" else "textDocument/completion"
            return [self.request(method, {"textDocument": {"uri": self.uri(index)}, "position": position, "context": {"triggerKind": 2}})]
        if kind == "request":
            return [self.request(item[1], item[2])]
        if kind == "notify":
            method, params = item[1], item[2]
            if method in ("textDocument/didOpen", "textDocument/didChange", "textDocument/didClose") and isinstance(params, dict) and "textDocument" in params:
                params = {**params, "textDocument": "not an identifier"}  # random params must not edit a document we track
            return [frame({"method": method, "params": params})]
        if kind == "cancel":
            return [frame({"method": "$/cancelRequest", "params": {"id": self.next_id - item[1]}})]
        if kind == "status":
            return [self.request("tabfill/status", {"textDocument": {"uri": self.uri(item[1])}})]
        if kind == "frame":
            return [_malformed(item[1], self)]
        if kind == "huge":
            _, what, size = item
            big = ("x = 1\n" * (size // 6 + 1))[:size]
            if what == "open":
                uri = self.uri(3)
                self.replay.open(uri, big)
                return [frame({"method": "textDocument/didOpen", "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": big}}})]
            if what == "change":
                uri = self.uri(2)
                self.replay.change(uri, [{"text": big}])
                return [frame({"method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": 7}, "contentChanges": [{"text": big}]}})]
            return [self.request("tabfill/status", {"textDocument": {"uri": big}})]
        raise ValueError(f"unknown step {kind!r}")

    def checks(self) -> list[tuple[int, str, str]]:
        """Status requests for every tracked document: (request id, uri, expected SHA-256 or "" when closed)."""
        out = []
        for index in range(5):
            uri = self.uri(index)
            text = self.replay.texts.get(uri)
            out.append((self._id(), uri, "" if text is None else digest(text)))
        return out


def _integer(value: int) -> bool:
    """An LSP `integer` (32 bits): a didChange whose version is not one is invalid, and the server drops it."""
    return -(2**31) <= value < 2**31


def _position_between(text: str, offset: int) -> dict[str, int]:
    """The position of `offset`, moved off the middle of a \\r\\n break (which no LSP position names)."""
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        offset -= 1
    return position_of(text, offset)


def _malformed(kind: str, traffic: Traffic) -> bytes:
    """A frame that is wrong in one way; a request in it is answered only when its frame can be read."""
    if kind == "bad header":
        return b"Content-Length: twelve\r\n\r\n{}"
    if kind == "not json":
        return frame(b'{"jsonrpc": "2.0", "id": 5, "method": ')
    if kind == "bad utf-8":
        return frame(b'{"jsonrpc": "2.0", "method": "\xff\xfe"}')
    if kind == "jsonrpc 1.0":
        return frame({"jsonrpc": "1.0", "id": traffic._id(), "method": "tabfill/status"})
    if kind == "bad id":
        return frame({"id": {"nested": True}, "method": "tabfill/status"})
    if kind == "too long":  # takes in the first bytes of the next frame; both must still be answered
        return frame({"id": traffic._id(), "method": "tabfill/status", "params": None}, length_delta=7)
    if kind == "too short":  # cut: not JSON (a parse error); its request cannot be answered by id
        return frame({"id": traffic._id(expect=False), "method": "tabfill/status", "params": None}, length_delta=-3)
    if kind == "garbage":
        return b"\x00garbage\r\n\r\nmore garbage"
    if kind == "array":
        return frame(b"[1, 2, 3]")
    return frame(b"42")


def answered(response: dict[str, Any]) -> bool:
    """A result, or a JSON-RPC error with an integer code and a message."""
    if "result" in response:
        return True
    error = response.get("error")
    return isinstance(error, dict) and isinstance(error.get("code"), int) and isinstance(error.get("message"), str)
