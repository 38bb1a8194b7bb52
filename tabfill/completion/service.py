"""The request path: a straight line of timed stages (docs/DESIGN.md, "One keystroke, end to end").

    type_through -> context (+ cross-file header) -> cache (window, result cache)      caller's thread
    -> prompt -> generate (prefill, decode) -> postprocess                              engine worker

The fast stages answer at once when they can; the model stages run on the engine worker, through the
TokenSource (completion.source) the settings name. Per-document state lives in completion.flights.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

from cachetools import TTLCache

from tabfill.completion import gc_pauses
from tabfill.completion.fim import TEMPLATES, FimTemplate
from tabfill.completion.flights import Continuation, Flights, Key, StopReason
from tabfill.completion.models import ModelError, ProgressFn
from tabfill.completion.postprocess import postprocess, uncertain_cuts
from tabfill.completion.prompt import WINDOW_CHARS_PER_TOKEN, cross_file_header, cursor_context, make_prompt, prompt_window, window_chars
from tabfill.completion.repo_context import repo_for
from tabfill.completion.settings import deadline_ms, kv_slot_tokens, language_enabled
from tabfill.completion.source import TokenSource
from tabfill.completion.sources import Opener, open_source
from tabfill.completion.types import CancelToken, Completion, CompletionRequest, Deadline, EngineInfo, Generation, Settings, Source, Timings
from tabfill.completion.worker import Cancelled, EngineWorker
from tabfill.syntax_cache.context import Mode, SyntaxContext
from tabfill.syntax_cache.sizes import approx_bytes, keep

log = logging.getLogger(__name__)

State = Literal["idle", "loading", "ready", "failed"]
RESULTS_CACHE_BYTES = 16 << 20  # whole answers by prompt: their text and the prompt text they are keyed by
RESULTS_TTL_S = 600.0


def _done(value: Completion) -> Future[Completion]:
    future: Future[Completion] = Future()
    future.set_result(value)
    return future


@dataclass(frozen=True)
class _Result:
    """A whole answer in the result cache. `source`: "cache", or "continuation" when a continuation made it."""

    text: str
    replace_chars: int
    finish_reason: str
    source: Source
    prompt: Key  # its key, kept so that the entry's size counts the prompt text (the key's bulk)
    cuts: tuple[int, ...] = ()


def _result_bytes(result: _Result) -> int:
    """The answer and its prompt's text; the settings (the key's first item) are shared by every entry."""
    return approx_bytes((result.text, result.prompt[1:]))


@dataclass(frozen=True)
class _Planned:
    """What the fast stages decided for a request that needs the model."""

    request: CompletionRequest
    context: SyntaxContext
    header: str
    prefix: str
    suffix: str
    key: Key
    deadline: Deadline
    timings: Timings


class CompletionService:
    """Owns the engine worker, the token source and the result cache; per-document state is in `flights`."""

    def __init__(self, settings: Settings | None = None, opener: Opener | None = None) -> None:
        self.settings = settings or Settings()
        self._open = opener or open_source
        self._worker = EngineWorker()
        self._lock = threading.Lock()
        self._source: TokenSource | None = None
        self._loaded: Settings | None = None  # the settings the source was opened with
        self._template: FimTemplate | None = None
        self.state: State = "idle"
        self.error = ""
        self.flights = Flights(self._worker, late=self._late)
        self._results: TTLCache[Key, _Result] = TTLCache(maxsize=RESULTS_CACHE_BYTES, ttl=RESULTS_TTL_S, getsizeof=_result_bytes)
        self.last_timings = Timings()
        self.last_generation: Generation | None = None
        # Called (from the engine thread) when a deadline-cut answer has been generated to its end: the
        # caller may tell the editor to ask again at that place (the result cache then has it whole).
        self.on_ready: Callable[[CompletionRequest, Completion], None] | None = None
        # Called (from a remote source's I/O thread) once when its engine becomes unreachable (a message for
        # the user) and once when it is back (None): one report per outage, however many keystrokes meet it.
        self.on_outage: Callable[[str | None], None] | None = None
        # Called (any thread) when a deadline-cut answer's continuation stopped before it was whole (time
        # cap, preempted, superseded, error): no whole answer is coming unless the editor asks there again.
        self.on_stopped: Callable[[CompletionRequest, StopReason], None] | None = None
        self.last_context: SyntaxContext | None = None
        self.last_cross_file = ""  # the cross-file header of the last request that reached the context stage

    # ------------------------------------------------------------------ the token source's lifecycle
    @property
    def info(self) -> EngineInfo | None:
        return self._source.info if self._source else None

    def describe_engine(self) -> dict[str, object]:
        """The source's set-up and counters and the last generation, for `tabfill/status` ({} before a load)."""
        source, generation = self._source, self.last_generation
        if source is None:
            return {}
        described = source.describe()
        if generation is not None:
            described["lastGeneration"] = generation.describe()
        return described

    def load(self, progress: ProgressFn | None = None) -> Future[EngineInfo]:
        """Open (or reopen) the configured source on the worker; the future fails with ModelError."""
        settings = self.settings
        report = progress or (lambda stage, fraction: log.info("%s", stage))
        with self._lock:
            self.state, self.error = "loading", ""

        def run(_cancel: CancelToken) -> EngineInfo:
            # NOTE: in a serving process, no collections while loading, and the loaded model out of every later one
            with gc_pauses.loading():
                try:
                    source = self._open(settings, report)
                except Exception as exc:  # any failure to load becomes a message, never a dead server
                    error = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
                    with self._lock:
                        self.state, self.error, self._source = "failed", error, None
                    raise exc if isinstance(exc, ModelError) else ModelError(error) from exc
                if hasattr(source, "on_outage"):  # remote sources report outages; the in-process one has none
                    source.on_outage = self._outage
                with self._lock:
                    old, self._source, self._loaded = self._source, source, settings
                    self._template = TEMPLATES.get(source.info.template)
                    self._results.clear()
                self.flights.forget_shown()
                if old is not None:
                    old.close()
            # NOTE: "ready" once the collection that ends a load is over (~300 ms with even the tiny test model):
            # a client waiting for it sends its first messages into an event loop no collection stops
            with self._lock:
                self.state = "ready"
            return source.info

        return self._worker.submit(run)

    def _outage(self, message: str | None) -> None:
        notify = self.on_outage
        if notify is not None:
            notify(message)

    def update_settings(self, settings: Settings) -> bool:
        """Apply new settings; returns True when the source must be reopened (model, device, engine or its
        set-up changed, or longer prompts than the KV slot it was opened with holds)."""
        def setup(value: Settings) -> tuple[object, ...]:
            return (value.engine, value.engine_token, value.engine_model, value.engine_api_key, value.model, value.device, value.lean_forward,
                    value.quantize, value.prefix_cache_mb)

        loaded = self._loaded
        reload = setup(settings) != setup(self.settings) or (loaded is not None and kv_slot_tokens(settings) > kv_slot_tokens(loaded))
        with self._lock:
            self.settings = settings
            self._results.clear()
        return reload and self.state != "idle"

    def close(self) -> None:
        self.flights.close()
        self._worker.close()
        if self._source is not None:
            self._source.close()

    def forget(self, uri: str) -> None:
        """The document was closed: drop what we keep for it."""
        self.flights.forget(uri)

    # ------------------------------------------------------------------ the request path
    def submit(self, request: CompletionRequest, cancel: CancelToken | None = None) -> Future[Completion]:
        """Answer at once from type-through or the result cache, else queue the model stages.
        A newer request for the same document cancels this document's older one (newest wins)."""
        settings, source, template = self.settings, self._source, self._template
        timings = Timings().add("lookup", request.lookup_ms) if request.lookup_ms else Timings()
        deadline = Deadline.after_ms(deadline_ms(settings, source.info.device if source else "cpu", request.key_interval_ms))
        if not language_enabled(settings, request.language_id):
            return _done(Completion.empty(request, "language disabled", timings))
        with timings.measure("type_through"):
            hit = self.flights.type_through(request)
        if hit is not None:
            return self._at_once(request, dataclasses.replace(hit, timings=timings))
        with timings.measure("context"):
            context = cursor_context(request)
            header = cross_file_header(request, settings)
        with self._lock:
            self.last_context, self.last_cross_file = context, header
        if context.mode is Mode.NONE:
            return self._at_once(request, Completion.empty(request, f"no completion here: {context.reason}", timings))
        with timings.measure("cache"):
            prefix, suffix = prompt_window(request, settings, header)
            key = (settings, context.mode, context.block_indent, header, prefix, suffix)
            with self._lock:
                cached = self._results.get(key)
        if cached is not None:
            completion = Completion(
                cached.text, request.offset, cached.replace_chars, request.request_id, cached.source, cached.finish_reason, timings, cached.cuts
            )
            self.flights.remember(request, completion)
            return self._at_once(request, completion)
        if source is None:
            return _done(Completion.empty(request, f"model {self.state}" + (f": {self.error}" if self.error else ""), timings))
        if template is None and context.suffix_has_code:
            return _done(Completion.empty(request, "code after the cursor and the model has no FIM", timings))
        planned = _Planned(request, context, header, prefix, suffix, key, deadline, timings)
        return self.flights.start(
            request, key, cancel or CancelToken(), lambda sequence, token: self._model_stages(source, template, planned, sequence, token),
            deadline,
        )

    def _at_once(self, request: CompletionRequest, completion: Completion) -> Future[Completion]:
        """An answer without the model; the model meanwhile prefills this place's prompt (`warm`)."""
        self.warm(request)
        return _done(completion)

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> Completion:
        """Synchronous `submit` (CLI, tests). Cancelled work returns an empty completion."""
        try:
            return self.submit(request, cancel).result()
        except Cancelled as exc:
            return Completion.empty(request, f"cancelled: {exc}")

    @property
    def window_chars(self) -> int:
        """At most this many characters before the cursor reach the prompt."""
        return window_chars(self.settings)

    @property
    def prompt_chars(self) -> tuple[int, int]:
        """About how many characters (before, after) the cursor the prompt holds; after is 0 for a prefix-only
        model. Cross-file context need not repeat them."""
        after = self.settings.max_suffix_tokens * WINDOW_CHARS_PER_TOKEN if self._template is not None else 0
        return self.window_chars, after

    def _model_stages(self, source: TokenSource, template: FimTemplate | None, planned: _Planned, sequence: int, cancel: CancelToken) -> Completion:
        request, timings = planned.request, planned.timings
        resumable, corpus = self.flights.resumable(request.uri, planned.key)
        generation = None
        if resumable is not None:  # NOTE: the same prompt as a generation cut by its deadline: go on with it
            generation = source.resume(resumable, cancel, planned.deadline)
            if generation.finish_reason == "cancelled" and not cancel.cancelled:
                generation = None  # the source dropped it (a team engine's newer request of the document): start over
        if generation is None:
            with timings.measure("prompt"):
                prompt = make_prompt(
                    self.settings, source.tokenizer, template, planned.context, planned.header, planned.prefix, planned.suffix,
                    repo_for(request, self.settings),
                )
            generation = source.generate(prompt, cancel, planned.deadline, corpus, document=request.uri)
        timings.extend(generation.timings)
        if generation.finish_reason == "cancelled":
            raise Cancelled(cancel.reason or "cancelled")
        with timings.measure("postprocess"):
            text, replace_chars, cuts = self._postprocess(request, planned.context, planned.suffix, generation)
        completion = Completion(text, request.offset, replace_chars, request.request_id, "model", generation.finish_reason, timings, cuts)
        log.debug(
            "completion %s: %d prompt tokens (%d cached), drafts %d/%d, %s", request.request_id, generation.prompt_tokens,
            generation.cached_tokens, generation.accepted_draft_tokens, generation.draft_tokens, timings.describe(),
        )
        with self._lock:
            if generation.finish_reason not in ("deadline", "error"):  # NOTE: a failed engine's empty answer is not kept
                keep(self._results, planned.key, _Result(text, replace_chars, generation.finish_reason, "cache", planned.key, cuts))
            self.last_timings, self.last_generation = timings, generation
        self.flights.answered(request, completion, generation)
        if generation.continuation is not None:
            continuation = Continuation(planned.key, sequence, request, planned.context, planned.suffix, generation.continuation)
            self.flights.keep_going(continuation, source, self._publish, self._stopped, prefilling=not generation.token_ids)
        return completion

    def _postprocess(
        self, request: CompletionRequest, context: SyntaxContext, suffix: str, generation: Generation
    ) -> tuple[str, int, tuple[int, ...]]:
        """(text to insert, code points it replaces after the cursor, where the model was unsure in it)."""
        settings = self.settings
        multi = context.mode is Mode.MULTI and settings.multi_line
        effective = context if multi or context.mode is not Mode.MULTI else dataclasses.replace(context, mode=Mode.SINGLE)
        probe_prefix = request.text[max(0, request.offset - context.probe_chars) : request.offset]
        text, replace_chars = postprocess(
            generation.text, effective, suffix, generation.finish_reason, prefix=probe_prefix, syntax=settings.syntax_postprocess
        )
        return text, replace_chars, uncertain_cuts(generation.text, generation.confidence, text, settings.confidence_percent / 100)

    def _late(self, request: CompletionRequest, completion: Completion) -> None:
        """The answer of a request that was answered with no text at its deadline (its job had not started):
        when whole, the result cache has it, so the editor may ask there again. A cut one goes on as a
        continuation, which says so at its end."""
        if completion.text and completion.finish_reason not in ("deadline", "error"):
            self._ready(request, completion)

    def _ready(self, request: CompletionRequest, completion: Completion) -> None:
        notify = self.on_ready
        if notify is not None:
            try:
                notify(request, completion)
            except Exception:  # the editor hint is optional; the generation's result is already kept
                log.exception("on_ready callback failed")

    def _publish(self, continuation: Continuation, generation: Generation) -> bool:
        """Show what a continuation has so far; at its end keep it in the result cache and tell the editor."""
        request = continuation.request
        text, replace_chars, cuts = self._postprocess(request, continuation.context, continuation.suffix, generation)
        completion = Completion(text, request.offset, replace_chars, request.request_id, "continuation", generation.finish_reason, cuts=cuts)
        if not self.flights.publish(continuation, completion, generation):
            return False
        if generation.finish_reason in ("deadline", "error"):
            return True
        with self._lock:
            keep(self._results, continuation.key, _Result(text, replace_chars, generation.finish_reason, "continuation", continuation.key, cuts))
        self._ready(request, completion)
        return True

    def _stopped(self, continuation: Continuation, reason: StopReason) -> None:
        log.debug("continuation of %s stopped: %s", continuation.request.request_id, reason)
        notify = self.on_stopped
        if notify is not None:
            notify(continuation.request, reason)

    def warm(self, request: CompletionRequest) -> None:
        """Prefill the prompt for `request` in the background (document opened, or answered without the
        model), so the next real request there finds its prefix cached. Any real request preempts it."""
        settings, source, template = self.settings, self._source, self._template
        if source is None or self.flights.busy(request.uri) or not language_enabled(settings, request.language_id):
            return

        def run(token: CancelToken) -> None:
            context = cursor_context(request)
            if context.mode is Mode.NONE or (template is None and context.suffix_has_code):
                return
            header = cross_file_header(request, settings)
            prefix, suffix = prompt_window(request, settings, header)
            prompt = make_prompt(settings, source.tokenizer, template, context, header, prefix, suffix, repo_for(request, settings))
            source.warm(list(prompt.token_ids), token, document=request.uri)

        self._worker.submit(run, key=request.uri, background=True)
