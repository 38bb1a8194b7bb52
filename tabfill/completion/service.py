"""The request path: a straight line of timed stages (DESIGN.md, "One keystroke, end to end").

Fast stages (type-through, context, result cache) run on the caller's thread and answer at once; the
model stages (prompt, generate, postprocess) run on the engine worker.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from cachetools import TTLCache

from tabfill.completion.engine import Decoding, Engine, EngineInfo
from tabfill.completion.fim import MAX_CHARS_PER_TOKEN, FimTemplate, build_prompt, detect_template, stable_prefix_start
from tabfill.completion.models import LoadedModel, ModelError, ProgressFn, load_model
from tabfill.completion.postprocess import postprocess
from tabfill.completion.prefix_cache import PrefixCache
from tabfill.completion.runners import make_runner
from tabfill.completion.settings import deadline_ms, kv_slot_tokens, language_enabled
from tabfill.completion.types import (
    CancelToken,
    Completion,
    CompletionRequest,
    Deadline,
    Generation,
    Prompt,
    Settings,
    StopRule,
    Timings,
)
from tabfill.completion.worker import Cancelled, EngineWorker
from tabfill.syntax_cache.context import Mode, SyntaxContext, context_at
from tabfill.syntax_cache.crossfile import render_context
from tabfill.syntax_cache.document import Document

log = logging.getLogger(__name__)

MULTI_LINE_MAX_LINES = 8
CONTEXT_WINDOW_CHARS = 32_000  # how far back the context rules may look for an enclosing block
# The prompt window: about this many characters per prefix token (code averages 3-4, so the window nearly
# always fits its token budget whole and `build_prompt` need not drop lines, which would move its start),
# and its start snapped to chunks of 1/8 of it (fim.stable_prefix_start) so typing keeps the cached prefix.
PREFIX_BLOCK_TOKENS = 32
WINDOW_CHARS_PER_TOKEN = 3
WINDOW_CHUNKS = 8
# After a deadline, the rest is generated in the background in slices of this many milliseconds, each
# publishing the text so far for type-through, for at most CONTINUE_MAX_MS.
CONTINUE_SLICE_MS = 40
CONTINUE_MAX_MS = 5_000


@dataclass(frozen=True)
class _Shown:
    """The last suggestion per document, and the text it was made for (for type-through)."""

    prefix: str
    suffix: str
    completion: Completion

    @staticmethod
    def of(request: CompletionRequest, completion: Completion) -> _Shown:
        return _Shown(request.text[: request.offset], request.text[request.offset :], completion)


def _empty(request: CompletionRequest, reason: str, timings: Timings) -> Completion:
    return Completion("", request.offset, 0, request.request_id, "none", reason, timings)


@dataclass(eq=False)
class _Flight:
    """A model job in flight for a document; identical requests share it (coalescing)."""

    key: tuple[object, ...]
    token: CancelToken
    future: Future[Completion]
    waiters: int = 1


@dataclass(eq=False)
class _Continuation:
    """A generation cut by its deadline, still going in the background (or resumable by the same prompt)."""

    key: tuple[object, ...]
    sequence: int  # the model request it belongs to; only the newest one per document may publish
    request: CompletionRequest
    context: SyntaxContext
    suffix: str
    state: Decoding
    running: bool = True  # its background job has not ended yet


def _done(value: Completion) -> Future[Completion]:
    future: Future[Completion] = Future()
    future.set_result(value)
    return future


def _context_window(request: CompletionRequest) -> tuple[Document, int, int]:
    """The lines around the cursor that the context rules look at, as a small document (a 1 MB file
    must not be re-indexed per keystroke). Returns it, the cursor offset inside it and where it starts."""
    text, offset = request.text, request.offset
    start = text.rfind("\n", 0, max(0, offset - CONTEXT_WINDOW_CHARS)) + 1 if offset > CONTEXT_WINDOW_CHARS else 0
    end = text.find("\n", offset + 1024)
    window = text[start : len(text) if end < 0 else end]
    return Document(request.uri, request.language_id, request.version, window), offset - start, start


def request_context(request: CompletionRequest) -> SyntaxContext:
    """Stage 3: the cursor context of a request, refined by its syntax snapshot when that describes its text."""
    document, window_offset, window_start = _context_window(request)
    syntax = request.syntax
    if syntax is not None and syntax.text is not request.text and syntax.text != request.text:
        syntax = None  # a snapshot of another version: text rules only
    return context_at(document, window_offset, syntax, base=window_start)


def cross_file_header(request: CompletionRequest, settings: Settings) -> str:
    """The cross-file snippets as comments in the request's language ("" when off or none)."""
    if not settings.cross_file_context or not request.cross_file or settings.cross_file_tokens <= 0:
        return ""
    return render_context(request.cross_file, request.language_id, settings.cross_file_tokens * 4)


class CompletionService:
    """Owns the engine worker, the model state and the per-document caches."""

    def __init__(self, settings: Settings | None = None, loader: Callable[[str, str, ProgressFn], LoadedModel] | None = None) -> None:
        self.settings = settings or Settings()
        self._loader = loader or load_model
        self._worker = EngineWorker()
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._template: FimTemplate | None = None
        self.state = "idle"  # idle | loading | ready | failed
        self.error = ""
        self._inflight: dict[str, _Flight] = {}
        self._continuations: dict[str, _Continuation] = {}
        self._sequence: dict[str, int] = {}  # per document: the newest model request's number
        self._previous_tokens: dict[str, tuple[int, ...]] = {}  # per document: the last generation (drafts)
        self._shown: dict[str, _Shown] = {}
        self._results: TTLCache[tuple[object, ...], tuple[str, int, str]] = TTLCache(maxsize=512, ttl=600)
        self.last_timings = Timings()
        self.last_generation: Generation | None = None
        # Called (from the engine thread) when a deadline-cut answer has been generated to its end: the
        # caller may tell the editor to ask again at that place (the result cache then has it whole).
        self.on_ready: Callable[[CompletionRequest, Completion], None] | None = None
        self.last_context: SyntaxContext | None = None
        self.last_cross_file = ""  # the cross-file header of the last request that reached the context stage

    # ------------------------------------------------------------------ model lifecycle
    @property
    def info(self) -> EngineInfo | None:
        return self._engine.info if self._engine else None

    def describe_engine(self) -> dict[str, object]:
        """The engine set-up and its caches' counters, for `tabfill/status` (empty before a model is loaded)."""
        engine, generation = self._engine, self.last_generation
        if engine is None:
            return {}
        described: dict[str, object] = dict(engine.describe())
        store = engine.prefix_cache
        if store is not None:
            described["prefixCacheBytes"] = store.num_bytes
            described["prefixCacheBlocks"] = store.num_blocks
            described["prefixCacheStats"] = dataclasses.asdict(store.stats)
        if generation is not None:
            described["lastGeneration"] = {
                "promptTokens": generation.prompt_tokens,
                "cachedTokens": generation.cached_tokens,
                "generatedTokens": len(generation.token_ids),
                "draftTokens": generation.draft_tokens,
                "acceptedDraftTokens": generation.accepted_draft_tokens,
                "finishReason": generation.finish_reason,
            }
        return described

    def load(self, progress: ProgressFn | None = None) -> Future[EngineInfo]:
        """Load (or reload) the configured model on the worker; the future fails with ModelError."""
        settings = self.settings
        report = progress or (lambda stage, fraction: log.info("%s", stage))
        with self._lock:
            self.state, self.error = "loading", ""

        def run(_cancel: CancelToken) -> EngineInfo:
            try:
                loaded = self._loader(settings.model, settings.device, report)
                template = detect_template(loaded.tokenizer)
                info = EngineInfo(
                    loaded.source, loaded.device, loaded.dtype, loaded.load_ms,
                    template.name if template else "prefix-only", loaded.import_ms,
                )
                runner = make_runner(
                    loaded.model,
                    torch.device(loaded.device),
                    max_tokens=kv_slot_tokens(settings),
                    quantize=None if settings.quantize == "none" else settings.quantize,
                    lean=settings.lean_forward,
                )
                store = PrefixCache(PREFIX_BLOCK_TOKENS, settings.prefix_cache_mb * 2**20) if settings.prefix_cache_mb else None
                engine = Engine(loaded.model, loaded.tokenizer, loaded.device, info, runner=runner, prefix_cache=store)
                info = dataclasses.replace(info, warmup_ms=engine.warm_up())
                engine.info = info
            except ModelError as exc:
                with self._lock:
                    self.state, self.error, self._engine = "failed", str(exc), None
                raise
            except Exception as exc:  # any failure to load becomes a message, never a dead server
                with self._lock:
                    self.state, self.error, self._engine = "failed", f"{type(exc).__name__}: {exc}", None
                raise ModelError(self.error) from exc
            with self._lock:
                self._engine, self._template, self.state = engine, template, "ready"
                self._results.clear()
                self._shown.clear()
            return info

        return self._worker.submit(run)

    def update_settings(self, settings: Settings) -> bool:
        """Apply new settings; returns True when the model must be reloaded (model, device or engine set-up
        changed, or longer prompts than the KV slot holds)."""
        def setup(value: Settings) -> tuple[object, ...]:
            return (value.model, value.device, value.lean_forward, value.quantize, value.prefix_cache_mb)

        engine = self._engine
        reload = setup(settings) != setup(self.settings) or (
            engine is not None and kv_slot_tokens(settings) > engine.runner.max_tokens
        )
        with self._lock:
            self.settings = settings
            self._results.clear()
        return reload and self.state != "idle"

    def close(self) -> None:
        for flight in list(self._inflight.values()):
            flight.token.cancel("shutdown")
        self._worker.close()

    def forget(self, uri: str) -> None:
        """The document was closed: drop what we keep for it."""
        with self._lock:
            self._shown.pop(uri, None)
            self._continuations.pop(uri, None)
            self._previous_tokens.pop(uri, None)
            self._sequence.pop(uri, None)
            flight = self._inflight.pop(uri, None)
        if flight:
            flight.token.cancel("document closed")

    # ------------------------------------------------------------------ the request path
    def submit(self, request: CompletionRequest, cancel: CancelToken | None = None) -> Future[Completion]:
        """Answer at once from type-through or the result cache, else queue the model stages.
        A newer request for the same document cancels this document's older one (newest wins)."""
        cancel = cancel or CancelToken()
        settings = self.settings
        timings = Timings().add("lookup", request.lookup_ms) if request.lookup_ms else Timings()
        deadline = Deadline.after_ms(deadline_ms(settings, self._engine.info.device if self._engine else "cpu"))
        if not language_enabled(settings, request.language_id):
            return _done(_empty(request, "language disabled", timings))

        started = time.perf_counter()
        hit = self._type_through(request)
        timings = timings.add("type_through", (time.perf_counter() - started) * 1000)
        if hit is not None:
            self.warm(request)
            return _done(dataclasses.replace(hit, timings=timings))

        started = time.perf_counter()
        context = request_context(request)
        header = cross_file_header(request, settings)
        timings = timings.add("context", (time.perf_counter() - started) * 1000)
        with self._lock:
            self.last_context, self.last_cross_file = context, header
        if context.mode is Mode.NONE:
            self.warm(request)
            return _done(_empty(request, f"no completion here: {context.reason}", timings))

        started = time.perf_counter()
        prefix, suffix = self._window(request, header)
        key = (settings, context.mode, context.block_indent, header, prefix, suffix)
        with self._lock:
            cached = self._results.get(key)
            engine, template = self._engine, self._template
        timings = timings.add("cache", (time.perf_counter() - started) * 1000)
        if cached is not None:
            text, replace_chars, finish = cached
            completion = Completion(text, request.offset, replace_chars, request.request_id, "cache", finish, timings)
            self._remember(request, completion)
            self.warm(request)
            return _done(completion)
        if engine is None:
            return _done(_empty(request, f"model {self.state}" + (f": {self.error}" if self.error else ""), timings))
        if template is None and context.suffix_has_code:
            return _done(_empty(request, "code after the cursor and the model has no FIM", timings))

        with self._lock:
            previous = self._inflight.get(request.uri)
            shared: _Flight | None = None
            if previous is not None and previous.key == key and not previous.future.done():
                previous.waiters += 1
                shared = previous
            else:
                sequence = self._sequence[request.uri] = self._sequence.get(request.uri, 0) + 1
        if shared is not None:  # coalescing: the same prompt is already being generated
            return self._join(shared, request, cancel)
        if previous is not None:
            previous.token.cancel("superseded")

        token = CancelToken()  # the job's own token: cancelled when every waiter has cancelled

        def run(job_token: CancelToken) -> Completion:
            return self._model_stages(engine, template, request, context, header, prefix, suffix, key, job_token, deadline, timings, sequence)

        future = self._worker.submit(run, token, key=request.uri)
        flight = _Flight(key, token, future)
        with self._lock:
            self._inflight[request.uri] = flight
        future.add_done_callback(lambda _: self._land(request.uri, flight))
        cancel.on_cancel(lambda reason: self._leave(flight, reason))
        return future

    @property
    def window_chars(self) -> int:
        """At most this many characters before the cursor reach the prompt."""
        return self.settings.max_prefix_tokens * WINDOW_CHARS_PER_TOKEN

    @property
    def prompt_chars(self) -> tuple[int, int]:
        """About how many characters (before, after) the cursor the prompt holds; after is 0 for a prefix-only
        model. Cross-file context need not repeat them."""
        after = self.settings.max_suffix_tokens * WINDOW_CHARS_PER_TOKEN if self._template is not None else 0
        return self.window_chars, after

    def _window(self, request: CompletionRequest, header: str) -> tuple[str, str]:
        """The prefix and suffix text the prompt may use; the prefix starts at a stable line start.

        NOTE: the cross-file `header` takes its tokens out of the prefix budget. A window longer than what is
        left is cut again by build_prompt, from its start, a line at a time as the user types: the prompt's
        first code tokens then change with every new line and the cached prefix after the header is lost. So
        the window leaves the header's room (about as many characters as the header has; at most half)."""
        settings = self.settings
        max_chars = self.window_chars - min(len(header), self.window_chars // 2)
        start = stable_prefix_start(request.text, request.offset, max_chars, max(1, max_chars // WINDOW_CHUNKS))
        suffix = request.text[request.offset : request.offset + settings.max_suffix_tokens * MAX_CHARS_PER_TOKEN]
        return request.text[start : request.offset], suffix

    def _join(self, flight: _Flight, request: CompletionRequest, cancel: CancelToken) -> Future[Completion]:
        joined: Future[Completion] = Future()

        def relay(done: Future[Completion]) -> None:
            if joined.done():
                return
            error = done.exception() if not done.cancelled() else Cancelled("cancelled")
            if error is not None:
                joined.set_exception(error)
            else:
                joined.set_result(dataclasses.replace(done.result(), request_id=request.request_id))

        flight.future.add_done_callback(relay)
        cancel.on_cancel(lambda reason: self._leave(flight, reason))
        return joined

    def _leave(self, flight: _Flight, reason: str) -> None:
        """A waiter cancelled; the generation stops when no waiter is left."""
        with self._lock:
            flight.waiters -= 1
            last = flight.waiters <= 0
        if last:
            flight.token.cancel(reason)

    def _land(self, uri: str, flight: _Flight) -> None:
        with self._lock:
            if self._inflight.get(uri) is flight:
                del self._inflight[uri]

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> Completion:
        """Synchronous `submit` (CLI, tests). Cancelled work returns an empty completion."""
        try:
            return self.submit(request, cancel).result()
        except Cancelled as exc:
            return _empty(request, f"cancelled: {exc}", Timings())

    def _model_stages(
        self,
        engine: Engine,
        template: FimTemplate | None,
        request: CompletionRequest,
        context: SyntaxContext,
        header: str,
        prefix: str,
        suffix: str,
        key: tuple[object, ...],
        cancel: CancelToken,
        deadline: Deadline,
        timings: Timings,
        sequence: int,
    ) -> Completion:
        with self._lock:
            resumable = self._continuations.pop(request.uri, None)
            corpus = self._previous_tokens.get(request.uri, ())
        if resumable is not None and resumable.key == key:
            # NOTE: the same prompt as a generation cut by its deadline: go on with it, not from scratch.
            generation = engine.resume(resumable.state, cancel, deadline)
        else:
            started = time.perf_counter()
            prompt = self._prompt(engine, template, context, header, prefix, suffix)
            timings = timings.add("prompt", (time.perf_counter() - started) * 1000)
            generation = engine.generate(prompt, cancel, deadline, corpus)
        timings = timings.merged(generation.timings)
        if generation.finish_reason == "cancelled":
            raise Cancelled(cancel.reason or "cancelled")

        started = time.perf_counter()
        text, replace_chars = self._postprocess(request, context, suffix, generation)
        timings = timings.add("postprocess", (time.perf_counter() - started) * 1000)
        completion = Completion(text, request.offset, replace_chars, request.request_id, "model", generation.finish_reason, timings)
        log.debug(
            "completion %s: %d prompt tokens (%d cached), drafts %d/%d, %s",
            request.request_id, generation.prompt_tokens, generation.cached_tokens,
            generation.accepted_draft_tokens, generation.draft_tokens, timings.describe(),
        )
        with self._lock:
            if generation.finish_reason != "deadline":
                self._results[key] = (text, replace_chars, generation.finish_reason)
            self.last_timings = timings
            self.last_generation = generation
            self._previous_tokens[request.uri] = generation.token_ids
        self._remember(request, completion)
        state = generation.continuation
        if isinstance(state, Decoding):
            self._continue(engine, _Continuation(key, sequence, request, context, suffix, state))
        return completion

    def _prompt(
        self, engine: Engine, template: FimTemplate | None, context: SyntaxContext, header: str, prefix: str, suffix: str
    ) -> Prompt:
        settings = self.settings
        multi = context.mode is Mode.MULTI and settings.multi_line
        stop = StopRule(single_line=not multi, block_indent=context.block_indent, max_lines=MULTI_LINE_MAX_LINES if multi else 1)
        return build_prompt(
            prefix,
            suffix,
            template,
            engine.tokenizer,
            max_prefix_tokens=settings.max_prefix_tokens,
            max_suffix_tokens=settings.max_suffix_tokens,
            max_new_tokens=settings.max_new_tokens if multi else settings.single_line_max_new_tokens,
            stop=stop,
            context=header,
            max_context_tokens=settings.cross_file_tokens,
        )

    def _postprocess(self, request: CompletionRequest, context: SyntaxContext, suffix: str, generation: Generation) -> tuple[str, int]:
        multi = context.mode is Mode.MULTI and self.settings.multi_line
        effective = context if multi or context.mode is not Mode.MULTI else dataclasses.replace(context, mode=Mode.SINGLE)
        probe_prefix = request.text[max(0, request.offset - context.probe_chars) : request.offset]
        return postprocess(
            generation.text, effective, suffix, generation.finish_reason, prefix=probe_prefix, syntax=self.settings.syntax_postprocess
        )

    # ------------------------------------------------------------------ after the deadline
    def _continue(self, engine: Engine, continuation: _Continuation) -> None:
        """Generate the rest of a deadline-cut answer in the background, publishing it for type-through.
        Any real request preempts it; one with the same prompt resumes it."""
        uri = continuation.request.uri
        with self._lock:
            self._continuations[uri] = continuation

        def run(token: CancelToken) -> None:
            until = Deadline.after_ms(CONTINUE_MAX_MS)
            try:
                while not token.cancelled and not until.expired:
                    generation = engine.resume(continuation.state, token, Deadline.after_ms(CONTINUE_SLICE_MS))
                    if generation.finish_reason == "cancelled" or not self._publish(continuation, generation):
                        return
                    if generation.finish_reason != "deadline":
                        return
            finally:
                continuation.running = False

        self._worker.submit(run, key=uri, background=True)

    def _publish(self, continuation: _Continuation, generation: Generation) -> bool:
        """Show what the continuation has so far; False when a newer request for the document took over."""
        request = continuation.request
        text, replace_chars = self._postprocess(request, continuation.context, continuation.suffix, generation)
        finished = generation.finish_reason != "deadline"
        completion = Completion(text, request.offset, replace_chars, request.request_id, "continuation", generation.finish_reason)
        with self._lock:
            if self._sequence.get(request.uri) != continuation.sequence:
                return False
            if finished:
                self._continuations.pop(request.uri, None)
                self._results[continuation.key] = (text, replace_chars, generation.finish_reason)
                self._previous_tokens[request.uri] = generation.token_ids
            if text:
                self._shown[request.uri] = _Shown.of(request, completion)
            notify = self.on_ready if finished else None
        if notify is not None:
            try:
                notify(request, completion)
            except Exception:  # the editor hint is optional; the generation's result is already kept
                log.exception("on_ready callback failed")
        return True

    # ------------------------------------------------------------------ warm-up
    def warm(self, request: CompletionRequest) -> None:
        """Prefill the prompt for `request` in the background (document opened, or answered without the
        model), so the next real request there finds its prefix cached. Any real request preempts it."""
        with self._lock:
            engine, template = self._engine, self._template
            continuation = self._continuations.get(request.uri)
            busy = request.uri in self._inflight or (continuation is not None and continuation.running)
        if engine is None or busy or not language_enabled(self.settings, request.language_id):
            return

        def run(token: CancelToken) -> None:
            context = request_context(request)
            if context.mode is Mode.NONE or (template is None and context.suffix_has_code):
                return
            header = cross_file_header(request, self.settings)
            prefix, suffix = self._window(request, header)
            prompt = self._prompt(engine, template, context, header, prefix, suffix)
            engine.warm(list(prompt.token_ids), token)

        self._worker.submit(run, key=request.uri, background=True)

    # ------------------------------------------------------------------ type-through
    def _remember(self, request: CompletionRequest, completion: Completion) -> None:
        if not completion.text:
            return
        shown = _Shown.of(request, completion)
        with self._lock:
            self._shown[request.uri] = shown

    def _type_through(self, request: CompletionRequest) -> Completion | None:
        """The user typed a prefix of the suggestion shown for this document: the rest, no model."""
        with self._lock:
            shown = self._shown.get(request.uri)
        if shown is None:
            return None
        prefix = request.text[: request.offset]
        typed_chars = len(prefix) - len(shown.prefix)
        if typed_chars <= 0 or not prefix.startswith(shown.prefix):
            return None
        typed = prefix[len(shown.prefix) :]
        remainder = shown.completion.text[typed_chars:]
        if not shown.completion.text.startswith(typed) or not remainder.strip():
            return None
        if request.text[request.offset :] != shown.suffix:
            return None
        return Completion(
            remainder, request.offset, shown.completion.replace_chars, request.request_id, "type-through", shown.completion.finish_reason
        )
