"""The team engine as a TokenSource ("tcp://HOST:PORT", "tcps://HOST:PORT"): prompts go out as token ids,
text comes back as it is decoded.

`generate` returns at the deadline with finish "deadline" and the still-open request as its continuation
(a `RemoteStream`); `resume` keeps reading that request's deltas, so the deadline cut and the background
continuation work as in-process. A continuation stays open on the engine when a `resume` is cancelled (a
preempted background slice only stops reading): the engine ends it when a newer request of its document
supersedes it, and the front-end cancels it when the service drops it. `warm` sends the prompt expected
soon in a warm frame, which the engine prefills when it has nothing more urgent to do.

Requests carry their document as an opaque key (HMAC-SHA-256 of the URI under a key of this process):
the engine scopes supersession by it and never sees the URI. Imports neither torch nor transformers: the
tokenizer comes from the engine (tokenizers library). Without a connection every call answers at once
with finish "error".
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabfill.completion import wire
from tabfill.completion.engine_client import EngineClient, EngineUnavailable
from tabfill.completion.tokenizer_file import FileTokenizer
from tabfill.completion.fim import detect_template
from tabfill.completion.types import CancelToken, Deadline, EngineInfo, FinishReason, Generation, Prompt, Settings, Timings

TOKEN_ENV = "TABFILL_ENGINE_TOKEN"
# The engine's done.finish -> the Generation's (superseded: a newer request of the document took over).
_FINISHES: dict[str, FinishReason] = {"stop": "stop", "length": "length", "eos": "eos", "cancelled": "cancelled", "superseded": "cancelled"}
_sequence = itertools.count(1)


@dataclass(eq=False)
class RemoteStream:
    """An open generate request: its frames, and what has arrived so far (the Resumable of this source)."""

    id: str
    prompt: Prompt
    frames: queue.Queue[dict[str, Any]]
    started: float = field(default_factory=time.perf_counter)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    confidence: list[tuple[int, float]] = field(default_factory=list)  # as Generation.confidence
    finish: FinishReason | None = None
    done: dict[str, Any] = field(default_factory=dict)
    handed_off: bool = False  # returned as a continuation: the generate call's cancel token no longer owns it


class RemoteSource:
    def __init__(self, url: str, token: str = "", *, cache_dir: Path | None = None, client: str = "tabfill serve",
                 on_state: Callable[[str, str], None] | None = None, connect_timeout_s: float = 10.0) -> None:
        started = time.perf_counter()
        token = token or os.environ.get(TOKEN_ENV, "")
        if not token:
            raise EngineUnavailable(f"no token for the engine at {url}: set engineToken or {TOKEN_ENV}")
        # The service sets this: a message once when the engine becomes unreachable, None when it is back.
        self.on_outage: Callable[[str | None], None] | None = None
        self._on_state = on_state
        self.client = EngineClient(url, token, client, cache_dir, self._state)
        welcome = self.client.connect(connect_timeout_s)
        self.tokenizer = FileTokenizer.from_json(welcome.tokenizer_json, welcome.special)
        template = detect_template(self.tokenizer)
        load_ms = (time.perf_counter() - started) * 1000
        self.info = EngineInfo(f"{welcome.model} @ {url}", "remote", "remote", load_ms, template.name if template else "prefix-only")
        self.last_done: dict[str, Any] = {}
        self.warms = 0
        self.backend_down = ""  # why the engine's own model server is unreachable (a gateway), while it is
        self._backend_lock = threading.Lock()
        self._document_secret = os.urandom(32)

    def document_key(self, document: str) -> str:
        """What the engine gets for a document (a URI): opaque, stable while this process runs."""
        if not document:
            return ""
        return hmac.new(self._document_secret, document.encode(), hashlib.sha256).hexdigest()[:32]

    def _state(self, state: str, why: str) -> None:
        if self._on_state is not None:
            self._on_state(state, why)
        notify = self.on_outage
        if notify is not None:
            notify(f"the team engine at {self.client.url} is unreachable ({why}); completions are empty until it is back"
                   if state == "down" else None)

    def describe(self) -> dict[str, object]:
        welcome = self.client.welcome
        return {
            "kind": "team engine", "url": self.client.url, "connected": self.client.connected,
            "model": welcome.model if welcome else "", "tenant": welcome.tenant if welcome else "",
            "limits": dict(welcome.limits) if welcome else {}, "reconnects": self.client.reconnects,
            "warms": self.warms, "backend_down": self.backend_down,
        }

    def status(self) -> dict[str, Any]:
        return self.client.request({"type": "status"})

    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline, corpus: Sequence[int] = (), *,
                 document: str = "", priority: int = 0) -> Generation:
        request_id = f"r{next(_sequence)}"
        deadline_ms = 0 if deadline.at is None else max(1, int((deadline.at - time.monotonic()) * 1000))
        frame = {
            "type": "generate", "id": request_id, "prompt": list(prompt.token_ids), "max_new_tokens": prompt.max_new_tokens,
            "stop": {"single_line": prompt.stop.single_line, "block_indent": prompt.stop.block_indent,
                     "max_lines": prompt.stop.max_lines, "token_ids": sorted(prompt.stop_token_ids)},
            "healing_text": prompt.healing_text, "deadline_ms": deadline_ms, "priority": priority,
            "document": self.document_key(document), "corpus": list(corpus)[-2048:],
        }
        stream = RemoteStream(request_id, prompt, self.client.open_stream(frame))
        cancel.on_cancel(lambda _reason: self._cancel_unless_handed_off(stream))
        generation = self._wait(stream, cancel, deadline)
        if generation.continuation is not None and not stream.handed_off:
            stream.handed_off = True
            weakref.finalize(stream, self.client.cancel, stream.id)  # NOTE: dropped by the service: stop it there
        return generation

    def _cancel_unless_handed_off(self, stream: RemoteStream) -> None:
        """The generate call's token: cancelled before it returned a continuation, the answer is unwanted."""
        if not stream.handed_off and not stream.finish:
            self.client.cancel(stream.id)

    def resume(self, state: object, cancel: CancelToken, deadline: Deadline) -> Generation:
        """Read on. A cancelled `cancel` only stops the reading; the request stays open on the engine."""
        if not isinstance(state, RemoteStream):
            raise TypeError(f"not a continuation of this source: {type(state).__name__}")
        return self._wait(state, cancel, deadline)

    def _wait(self, stream: RemoteStream, cancel: CancelToken, deadline: Deadline) -> Generation:
        started = time.perf_counter()
        finish: FinishReason | None = None
        while not stream.finish:
            if cancel.cancelled:
                finish = "cancelled"
                break
            wait = None if deadline.at is None else deadline.at - time.monotonic()
            if wait is not None and wait <= 0:
                break
            try:
                frame = stream.frames.get(timeout=min(wait, 0.05) if wait is not None else 0.05)
            except queue.Empty:
                continue
            self._apply(stream, frame)
        timings = Timings().add("engine", (time.perf_counter() - started) * 1000)
        done = stream.done
        return Generation(
            tuple(stream.token_ids), stream.text, stream.finish or finish or "deadline", len(stream.prompt.token_ids), timings,
            cached_tokens=int(done.get("cached_tokens", 0)), confidence=tuple(stream.confidence),
            continuation=None if stream.finish or finish else stream,
        )

    def _apply(self, stream: RemoteStream, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "delta":
            stream.token_ids.extend(int(i) for i in frame.get("token_ids", ()))
            stream.text += str(frame.get("text", ""))
            stream.confidence.extend(_confidence(frame.get("confidence")))
        elif kind == "done":
            stream.finish = _FINISHES.get(str(frame.get("finish")), "error")
            stream.done = frame
            self.last_done = frame
            if stream.finish != "error":
                self._backend("")
        elif kind == "error":
            stream.finish = "error"
            stream.done = frame
            self.last_done = frame
            if frame.get("code") == wire.UNAVAILABLE:
                self._backend(str(frame.get("message", "")) or "no reason given")

    def _backend(self, why: str) -> None:
        """The engine is up but its model server is not (or is back): said once per outage, like the engine's own."""
        with self._backend_lock:
            if bool(why) == bool(self.backend_down):
                return
            self.backend_down = why
        notify = self.on_outage
        if notify is not None:
            notify(f"the team engine at {self.client.url} cannot reach its model server: {why}; completions are empty until it is back"
                   if why else None)

    def warm(self, token_ids: list[int], cancel: CancelToken, *, document: str = "") -> int:
        """Ask the engine to prefill this prompt when it is idle (a warm frame; no answer). Returns 0: the
        engine does the work, and a newer request of the document takes its place."""
        welcome = self.client.welcome
        if len(token_ids) < 2 or cancel.cancelled or welcome is None or "warm" not in welcome.features:
            return 0
        limit = welcome.limits.get("max_prompt_tokens", 0)
        if limit and len(token_ids) > limit:
            token_ids = token_ids[:limit]  # NOTE: the head is what the prompt of the next keystroke shares
        if self.client.send({"type": "warm", "prompt": list(token_ids), "document": self.document_key(document)}):
            self.warms += 1
        return 0

    def close(self) -> None:
        self.client.close()


def open_team(settings: Settings, progress: Callable[[str, float | None], None]) -> RemoteSource:
    """The sources.py opener for "tcp://" and "tcps://" engines: `settings.engine` is the address, the token
    is `settings.engine_token` or $TABFILL_ENGINE_TOKEN; the tokenizer cache lives in the tabfill cache."""
    from tabfill.completion.models import ModelError, cache_root

    progress(f"connecting to the team engine at {settings.engine}", None)
    try:
        source = RemoteSource(settings.engine, settings.engine_token, cache_dir=cache_root())
    except (EngineUnavailable, ValueError) as exc:
        raise ModelError(str(exc)) from None
    progress(f"team engine {source.describe()['model']} ready", 1.0)
    return source


__all__ = ["EngineUnavailable", "RemoteSource", "RemoteStream", "open_team"]


def _confidence(value: Any) -> list[tuple[int, float]]:
    """A delta's `confidence` ([[offset, probability], ...]); anything malformed counts as not said."""
    if not isinstance(value, list):
        return []
    pairs = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int) and isinstance(pair[1], (int, float))):
            return []
        pairs.append((pair[0], float(pair[1])))
    return pairs
