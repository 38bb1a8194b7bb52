"""`tabfill engine --backend openai+http://HOST:PORT/v1`: the team engine's tokens, tenants, per-tenant
limits and scheduling in front of an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server).

The scheduler drives `OpenAIBackend` as it drives the batched engine (add / cancel / step): each request is
one streamed `POST /v1/completions` through the front-end's own OpenAI source (completion/openai_source.py:
server detection, token-id prompts where the server takes them, stop rules, SGLang aborts), with the
tenant's prefix-cache salt as vLLM's/SGLang's `cache_salt`, so tenants never share a hit in the server's
cache either. llama.cpp's servers take no salt: their prompt cache is shared (said at start-up). `step`
waits briefly for any stream to move and reports what arrived; cancelling closes the stream, which is how
the server aborts. Front-ends get the served model's tokenizer (`--backend-model`, found on this machine),
so they send token ids as to any team engine. Imports neither torch nor transformers.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

from tabfill.completion import openai_wire
from tabfill.completion.batch_types import BackendUnavailable, BatchEvent, BatchRequest
from tabfill.completion.openai_source import OpenAISource, open_openai_source
from tabfill.completion.openai_stream import Stream
from tabfill.completion.tokenizer_file import FileTokenizer
from tabfill.engine_server.server import ModelCard

log = logging.getLogger(__name__)

API_KEY_ENV = "TABFILL_ENGINE_API_KEY"
STEP_WAIT_S = 0.05  # a step with nothing new waits at most this long (new work wakes it at once)
BACKGROUND_AFTER_S = 600.0  # a request whose priority (deadline) is this far away is a warm-up: server priority 1


def tenant_salt(salt: bytes) -> str:
    """The server's `cache_salt` for a tenant's salt: 256 bits, url-safe base64, not the salt itself."""
    digest = hashlib.sha256(b"tabfill engine cache salt\0" + salt).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(eq=False)
class _Row:
    request: BatchRequest
    stream: Stream
    sent_text: str = ""
    sent_confidence: int = 0  # entries of stream.confidence already sent


class OpenAIBackend:
    """The scheduler's StepEngine over an OpenAI-compatible server. Driven by the scheduler thread only."""

    def __init__(self, source: OpenAISource, *, slots: int, step_wait_s: float = STEP_WAIT_S) -> None:
        self.source = source
        self.step_wait_s = step_wait_s
        source.max_open_streams = slots + 1
        self._rows: dict[str, _Row] = {}
        self._events: list[BatchEvent] = []
        self._changed = threading.Event()

    @property
    def idle(self) -> bool:
        return not self._rows and not self._events

    def wake(self) -> None:
        """New work or a cancel (any thread): the waiting step returns."""
        self._changed.set()

    def add(self, request: BatchRequest) -> None:
        if self.source.health.in_backoff():
            outage = self.source.health.outage
            raise BackendUnavailable(f"{self.source.base_url} is unreachable ({outage.reason if outage else 'backing off'})")
        background = request.priority - time.monotonic() > BACKGROUND_AFTER_S
        stream = self.source.start_stream(
            request.prompt, request.prompt.max_new_tokens, 1 if background else 0, salt=tenant_salt(request.salt), listener=self.wake,
        )
        stream.task.add_done_callback(lambda _future: self.wake())  # NOTE: the usage event comes after the finish
        self._rows[request.id] = _Row(request, stream)

    def cancel(self, request_id: str) -> None:
        row = self._rows.pop(request_id, None)
        if row is not None:
            self.source.abort(row.stream)
            self._events.append(self._event(row, "", "cancelled"))

    def step(self) -> list[BatchEvent]:
        events, self._events = self._events, []
        if not events:
            self._changed.wait(self.step_wait_s)
        self._changed.clear()
        for request_id, row in list(self._rows.items()):
            stream = row.stream
            with stream.cond:
                text, finish, confidence = stream.text, stream.finish, stream.confidence[row.sent_confidence :]
            ended = finish is not None and (stream.task is None or stream.task.done())
            settled = text if ended else _settled(text, row.request.prompt.stop.single_line)
            if not settled.startswith(row.sent_text):  # NOTE: the stop rule cut behind what was sent
                log.warning("request %s: the text changed before what was already sent", request_id)
                settled = row.sent_text
            delta, row.sent_text = settled[len(row.sent_text) :], settled
            # NOTE: the probabilities of the tokens that start inside what is sent, so a front-end draws the
            # answer up to where the model was unsure (as from the batched engine's deltas)
            sure = [entry for entry in confidence if entry[0] < len(settled)]
            row.sent_confidence += len(sure)
            if ended:
                del self._rows[request_id]
                outage = self.source.health.outage if finish == "error" else None
                unavailable = f"{self.source.base_url} failed ({outage.reason})" if outage is not None else ""
                events.append(self._event(row, delta, str(finish), unavailable, sure))
            elif delta:
                events.append(self._event(row, delta, None, confidence=sure))
        return events

    def _event(self, row: _Row, delta: str, finish: str | None, unavailable: str = "",
               confidence: Sequence[tuple[int, float]] = ()) -> BatchEvent:
        stream = row.stream
        ids = tuple(self.source.tokenizer.encode(delta)) if delta else ()  # NOTE: for drafts and counts only
        return BatchEvent(row.request.id, ids, delta, finish, stream.cached_tokens, stream.prompt_tokens, unavailable, tuple(confidence))

    def status(self) -> dict[str, object]:
        """The server's kind, extras, request and outage counts (any thread: the status frame)."""
        return self.source.describe()

    def close(self) -> None:
        self.source.close()


def _settled(text: str, single_line: bool) -> str:
    """The part of a running stream's text that no stop rule can take back: a multi-line answer's last,
    unfinished line waits (the block rule may still drop it with its newline), as the batched engine's do."""
    if single_line:
        return text
    newline = text.rfind("\n")
    return text[:newline] if newline >= 0 else ""


def open_openai_backend(url: str, model: str, api_key: str, *, slots: int, kv_tokens: int) -> tuple[ModelCard, OpenAIBackend]:
    """Connect to the server (an unreachable one is an outage: requests fail until it answers) and find
    the served model's tokenizer here; SystemExit with a reason when there is none."""

    def progress(stage: str, fraction: float | None) -> None:
        print(f"tabfill engine: {stage}", file=sys.stderr, flush=True)

    settings = SimpleNamespace(engine=url, engine_model=model, engine_api_key=api_key or os.environ.get(API_KEY_ENV, ""))
    try:
        source = open_openai_source(settings, progress)
    except ValueError as exc:
        raise SystemExit(f"tabfill: {exc}") from None
    tokenizer = source.tokenizer
    if not isinstance(tokenizer, FileTokenizer):
        source.close()
        raise SystemExit(
            "tabfill: the engine sends front-ends the served model's tokenizer, and none was found here: give "
            "--backend-model a model directory, a tokenizer.json, a .gguf that `tabfill model pull` converted, or a "
            "Hugging Face id already in the local cache"
        )
    profile = source.profile
    if profile.kind not in (openai_wire.VLLM, openai_wire.SGLANG):
        log.warning("%s (%s) takes no cache_salt: tenants share its prompt cache (a timing side channel)", source.base_url, profile.kind)
    name = f"{profile.model or model or 'server default'} @ {source.base_url}"
    card = ModelCard(name, len(tokenizer), tokenizer.to_json(), tokenizer.special(), kv_tokens)
    return card, OpenAIBackend(source, slots=slots)


__all__ = ["OpenAIBackend", "open_openai_backend", "tenant_salt"]
