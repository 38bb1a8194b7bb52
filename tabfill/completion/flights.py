"""What the service keeps per document between requests: one `DocumentState` per URI.

- type-through: the suggestion last shown, and the text it was made for;
- coalescing: the model job in flight; an identical request joins it, and it stops when every waiter left;
- newest wins: any other request for the document cancels that job and takes a new sequence number; the
  superseded request is answered from the newest one's answer when the user only typed in between;
- due at the deadline: a request whose job has not started by its deadline (the worker is finishing another
  job's prefill chunk) is answered then with no text; the job still runs when the worker gets to it, goes on
  as a continuation, and says when its answer is whole (the `late` callback, then `on_ready`);
- continuation: a generation cut by its deadline goes on in background slices, publishing its text for
  type-through, while it still belongs to the document's newest request. It always ends by saying so: whole
  (the service's `on_ready`) or stopped (`Stopped`: time cap, preempted, superseded, error); a stopped one
  is kept, and the next request with the same prompt resumes it instead of starting over.

Thread-safe: the LSP thread asks, the engine worker answers and publishes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Literal

from tabfill.completion.alarms import Alarms
from tabfill.completion.source import TokenSource
from tabfill.completion.types import CancelToken, Completion, CompletionRequest, Deadline, Generation, Resumable, Source, Timings
from tabfill.completion.worker import Cancelled, EngineWorker
from tabfill.syntax_cache.context import SyntaxContext

log = logging.getLogger(__name__)

# After a deadline, the rest is generated in the background in slices of this many milliseconds, each
# publishing the text so far for type-through, for at most CONTINUE_MAX_MS.
CONTINUE_SLICE_MS = 40
CONTINUE_MAX_MS = 5_000
# A continuation cut before its first token (its prompt still prefilling) has nothing to publish: with an
# in-process engine its slices are this long, so its prefill runs in wide chunks. NOTE: a chunk cannot be
# cut, so a request arriving meanwhile waits up to this long (its answer would have been empty: the prompt
# was not there yet); chunks sized to 40 ms ran ~10 tokens each at ~4 ms a token on this CPU, a 128-token
# chunk 2.2 ms a token, and a 350-token cold prompt kept a typist at 10 keys/s without a suggestion for 17
# keys (1.7 s).
PREFILL_SLICE_MS = 300
# Continuations kept per document (the oldest goes first): typing a character and deleting it comes back
# to a place whose continuation was superseded meanwhile, and resumes it.
CONTINUATIONS_KEPT = 4

# Why a continuation stopped before its answer was whole (sent to the editor in tabfill/completionReady):
# its CONTINUE_MAX_MS were spent; the worker took it off for another document's request; a newer request
# for its document took over; the source failed.
StopReason = Literal["timeLimit", "preempted", "superseded", "error"]

Key = tuple[object, ...]  # what identifies a prompt: the settings and the text that went into it


@dataclass(frozen=True)
class Shown:
    """The last suggestion in a document, and the text around the cursor it was made for."""

    prefix: str
    suffix: str
    completion: Completion

    @staticmethod
    def of(request: CompletionRequest, completion: Completion) -> Shown:
        return Shown(request.text[: request.offset], request.text[request.offset :], completion)

    def rest(self, request: CompletionRequest) -> Completion | None:
        """The user typed a prefix of this suggestion: the rest of it (None when they typed anything else)."""
        prefix = request.text[: request.offset]
        typed_chars = len(prefix) - len(self.prefix)
        if typed_chars <= 0 or not prefix.startswith(self.prefix):
            return None
        shown = self.completion
        remainder = shown.text[typed_chars:]
        if not shown.text.startswith(prefix[len(self.prefix) :]) or not remainder.strip():
            return None
        if request.text[request.offset :] != self.suffix:
            return None
        # a continuation's text keeps its origin: that is where it came from, the typing only reveals it
        source: Source = "continuation" if shown.source == "continuation" else "type-through"
        cuts = tuple(cut - typed_chars for cut in shown.cuts if cut > typed_chars)
        return Completion(remainder, request.offset, shown.replace_chars, request.request_id, source, shown.finish_reason, cuts=cuts)


@dataclass(eq=False)
class Flight:
    """A model job in flight for a document; identical requests share it."""

    key: Key
    token: CancelToken  # the job's own: cancelled when every waiter has cancelled
    future: Future[Completion]
    request: CompletionRequest
    answer: Future[Completion] = dataclasses.field(default_factory=Future)  # what waiters get (see _answer)
    waiters: int = 1
    successor: tuple[CompletionRequest, Future[Completion]] | None = None  # the newer request that superseded it
    queued_at: float = dataclasses.field(default_factory=time.monotonic)
    early: bool = False  # answered with no text at its deadline, before its job started


def _settle(future: Future[Completion], result: Completion | None = None, error: BaseException | None = None) -> bool:
    """Give `future` its result or error unless it has one already (an answer given at the deadline). False
    when it had one."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)
    except InvalidStateError:
        return False
    return True


def carried_back(older: CompletionRequest, newer: CompletionRequest, completion: Completion) -> Completion | None:
    """A newer request's answer as the answer to an older one it superseded: when the user only typed at the
    older cursor since (same text before and after it), what they typed followed by the newer answer."""
    typed = newer.text[older.offset : newer.offset]
    if (
        not completion.text
        or newer.offset < older.offset
        or "\n" in typed
        or newer.text[newer.offset :] != older.text[older.offset :]
        or newer.text[: older.offset] != older.text[: older.offset]
    ):
        return None
    return dataclasses.replace(completion, text=typed + completion.text, offset=older.offset, request_id=older.request_id)


@dataclass(eq=False)
class Continuation:
    """A generation cut by its deadline, still going in the background (or resumable by the same prompt)."""

    key: Key
    sequence: int  # the model request it belongs to; only the document's newest may publish
    request: CompletionRequest
    context: SyntaxContext
    suffix: str
    state: Resumable
    running: bool = True  # its background job has not ended yet
    stopped: StopReason | None = None  # why it stopped before its answer was whole (it stays resumable)


@dataclass
class DocumentState:
    shown: Shown | None = None
    flight: Flight | None = None
    continuations: dict[Key, Continuation] = dataclasses.field(default_factory=dict)  # oldest first
    sequence: int = 0  # the newest model request's number
    previous_tokens: tuple[int, ...] = ()  # the last generation's tokens (a corpus for drafts)


# Shows what a continuation has so far; False when a newer request for the document took over.
Publish = Callable[[Continuation, Generation], bool]
# Says that a continuation stopped before its answer was whole, and why (any thread; must not block).
Stopped = Callable[[Continuation, StopReason], None]
# Gives the answer of a request that was answered with no text at its deadline, when its job ended after it.
Late = Callable[[CompletionRequest, Completion], None]

# The answer of a request whose job had not started by its deadline.
BUSY = "deadline: the engine was busy"


class Flights:
    def __init__(self, worker: EngineWorker, late: Late | None = None) -> None:
        self._worker = worker
        self._late = late
        self._alarms = Alarms()
        self._lock = threading.Lock()
        self._documents: dict[str, DocumentState] = {}

    def _state(self, uri: str) -> DocumentState:  # under self._lock
        return self._documents.setdefault(uri, DocumentState())

    def forget(self, uri: str) -> None:
        """The document was closed: drop its state and stop its job."""
        with self._lock:
            state = self._documents.pop(uri, None)
        if state is not None and state.flight is not None:
            state.flight.token.cancel("document closed")

    def close(self) -> None:
        with self._lock:
            flights = [state.flight for state in self._documents.values() if state.flight is not None]
        for flight in flights:
            flight.token.cancel("shutdown")
        self._alarms.close()

    def forget_shown(self) -> None:
        """A new model: no suggestion of the old one is typed through, and none of its generations resumed."""
        with self._lock:
            for state in self._documents.values():
                state.shown = None
                state.continuations.clear()

    def busy(self, uri: str) -> bool:
        """A job of this document is in flight or its continuation still runs."""
        with self._lock:
            state = self._documents.get(uri)
            return state is not None and (state.flight is not None or any(kept.running for kept in state.continuations.values()))

    def continuation(self, uri: str) -> Continuation | None:
        """The document's newest kept continuation (running, or stopped and resumable)."""
        with self._lock:
            state = self._documents.get(uri)
            return next(reversed(state.continuations.values()), None) if state is not None else None

    # ------------------------------------------------------------------ type-through
    def type_through(self, request: CompletionRequest) -> Completion | None:
        with self._lock:
            state = self._documents.get(request.uri)
            shown = state.shown if state is not None else None
        return shown.rest(request) if shown is not None else None

    def remember(self, request: CompletionRequest, completion: Completion) -> None:
        if completion.text:
            shown = Shown.of(request, completion)
            with self._lock:
                self._state(request.uri).shown = shown

    # ------------------------------------------------------------------ coalescing and newest wins
    def start(
        self, request: CompletionRequest, key: Key, cancel: CancelToken, run: Callable[[int, CancelToken], Completion], deadline: Deadline
    ) -> Future[Completion]:
        """Join the document's job for the same prompt, or cancel its job and queue `run(sequence, token)`;
        answered with no text at `deadline` if the job has not started by then."""
        with self._lock:
            state = self._state(request.uri)
            previous = state.flight
            shared = previous if previous is not None and previous.key == key and not previous.future.done() else None
            if shared is not None:
                shared.waiters += 1
            else:
                state.sequence += 1
            sequence = state.sequence
        if shared is not None:  # the same prompt is already being generated
            return self._join(shared, request, cancel)
        token, answer = CancelToken(), Future[Completion]()
        if previous is not None:  # NOTE: before submitting: the worker drops the previous job if it is still queued
            previous.successor = (request, answer)
        future = self._worker.submit(lambda job_token: run(sequence, job_token), token, key=request.uri)
        flight = Flight(key, token, future, request, answer)
        if previous is not None:
            previous.token.cancel("superseded")
        with self._lock:
            self._state(request.uri).flight = flight
        future.add_done_callback(lambda _: self._land(request.uri, flight))
        future.add_done_callback(lambda _: self._answer(flight))
        cancel.on_cancel(lambda reason: self._leave(flight, reason))
        if deadline.at is not None:
            self._alarms.at(deadline.at, lambda: self._due(flight))
        return flight.answer

    def _due(self, flight: Flight) -> None:
        """The request's deadline: if its job has not started (the worker is busy finishing something else),
        answer now with no text. The job stays queued; it runs when the worker gets to it (its deadline then
        past: it goes on as a continuation, publishing for type-through) and `_answer` hands its result to
        `late`."""
        future = flight.future
        with self._lock:
            if future.running() or future.done() or flight.answer.done():
                return
            flight.early = True
        waited = (time.monotonic() - flight.queued_at) * 1000
        _settle(flight.answer, Completion.empty(flight.request, BUSY, Timings().add("queued", waited)))

    def _answer(self, flight: Flight) -> None:
        """The job ended: its result, or (superseded) the newer request's answer carried back when it fits."""
        done = flight.future
        error = Cancelled("cancelled") if done.cancelled() else done.exception()
        successor = flight.successor
        if error is None:
            with self._lock:
                early = flight.early
            if not _settle(flight.answer, done.result()) and early and self._late is not None:
                self._late(flight.request, done.result())
        elif isinstance(error, Cancelled) and successor is not None:

            newer_request, newer_answer = successor

            def carry(newer: Future[Completion]) -> None:
                answer = None if newer.cancelled() or newer.exception() else carried_back(flight.request, newer_request, newer.result())
                _settle(flight.answer, answer, None if answer is not None else error)

            newer_answer.add_done_callback(carry)
        else:
            _settle(flight.answer, error=error)

    def _join(self, flight: Flight, request: CompletionRequest, cancel: CancelToken) -> Future[Completion]:
        joined: Future[Completion] = Future()

        def relay(done: Future[Completion]) -> None:
            if joined.done():
                return
            error = done.exception() if not done.cancelled() else Cancelled("cancelled")
            if error is not None:
                joined.set_exception(error)
            else:
                joined.set_result(dataclasses.replace(done.result(), request_id=request.request_id))

        flight.answer.add_done_callback(relay)
        cancel.on_cancel(lambda reason: self._leave(flight, reason))
        return joined

    def _leave(self, flight: Flight, reason: str) -> None:
        """A waiter cancelled; the generation stops when no waiter is left."""
        with self._lock:
            flight.waiters -= 1
            last = flight.waiters <= 0
        if last:
            flight.token.cancel(reason)

    def _land(self, uri: str, flight: Flight) -> None:
        with self._lock:
            state = self._documents.get(uri)
            if state is not None and state.flight is flight:
                state.flight = None

    # ------------------------------------------------------------------ continuations
    def resumable(self, uri: str, key: Key) -> tuple[Resumable | None, tuple[int, ...]]:
        """The document's cut generation for this same prompt, taken (others stay for a request back at their
        place), and the previous generation's tokens."""
        with self._lock:
            state = self._state(uri)
            continuation = state.continuations.pop(key, None)
            corpus = state.previous_tokens
        return (continuation.state if continuation is not None else None), corpus

    def answered(self, request: CompletionRequest, completion: Completion, generation: Generation) -> None:
        with self._lock:
            self._state(request.uri).previous_tokens = generation.token_ids
        self.remember(request, completion)

    def keep_going(
        self, continuation: Continuation, source: TokenSource, publish: Publish, stopped: Stopped, *, prefilling: bool = False,
    ) -> None:
        """Generate the rest of a deadline-cut answer in the background, in slices, publishing each. Any real
        request preempts it; one with the same prompt resumes it. Unless its document was closed, it ends
        with a whole answer published or with `stopped(continuation, why)`, even when its job never ran.
        `prefilling`: it was cut before its first token; with a source that prefills only while resumed, its
        slices are PREFILL_SLICE_MS until one yields a token."""
        uri = continuation.request.uri
        with self._lock:
            kept = self._state(uri).continuations
            kept.pop(continuation.key, None)
            kept[continuation.key] = continuation
            while len(kept) > CONTINUATIONS_KEPT:
                del kept[next(iter(kept))]

        def run(token: CancelToken) -> str:
            until = Deadline.after_ms(CONTINUE_MAX_MS)
            # NOTE: only for a source that prefills while resumed (in process): a remote engine or server prefills
            # on its own, and a longer slice would only hold back the first tokens from type-through
            slow_start = prefilling and getattr(source, "prefills_while_resumed", False)
            slice_ms = PREFILL_SLICE_MS if slow_start else CONTINUE_SLICE_MS
            while not token.cancelled:
                if until.expired:
                    return "timeLimit"
                generation = source.resume(continuation.state, token, Deadline.after_ms(slice_ms))
                slice_ms = CONTINUE_SLICE_MS if generation.token_ids else slice_ms
                if generation.finish_reason == "cancelled":
                    break
                if not publish(continuation, generation):
                    return "superseded"
                if generation.finish_reason != "deadline":
                    return "finished"
            return token.reason or "preempted"

        def ended(future: Future[str]) -> None:
            if future.cancelled() or future.exception() is not None:  # dropped before it ran, or failed
                error = None if future.cancelled() else future.exception()
                outcome = "error" if error is not None and not isinstance(error, Cancelled) else token.reason or "preempted"
            else:
                outcome = future.result()
            self._end(continuation, outcome, stopped)

        token = CancelToken()
        self._worker.submit(run, token, key=uri, background=True).add_done_callback(ended)

    def _end(self, continuation: Continuation, outcome: str, stopped: Stopped) -> None:
        """A continuation's background job ended; say why when its answer is not whole."""
        with self._lock:
            continuation.running = False
            state = self._documents.get(continuation.request.uri)
            if outcome == "finished" or state is None or outcome in ("shutdown", "document closed"):
                return
            reason: StopReason
            if state.sequence != continuation.sequence or outcome == "superseded":
                reason = "superseded"
            elif outcome == "timeLimit":
                reason = "timeLimit"
            elif outcome == "error":  # the source failed: its state is not to be resumed
                reason = "error"
                if state.continuations.get(continuation.key) is continuation:
                    del state.continuations[continuation.key]
            else:
                reason = "preempted"
            continuation.stopped = reason
        try:
            stopped(continuation, reason)
        except Exception:  # the editor hint is optional; the continuation stays resumable either way
            log.exception("stopped callback failed")

    def publish(self, continuation: Continuation, completion: Completion, generation: Generation) -> bool:
        """Record what a continuation has so far, unless a newer request for the document took over (False)."""
        request = continuation.request
        with self._lock:
            state = self._documents.get(request.uri)
            if state is None or state.sequence != continuation.sequence:
                return False
            if generation.finish_reason != "deadline":
                if state.continuations.get(continuation.key) is continuation:
                    del state.continuations[continuation.key]
                state.previous_tokens = generation.token_ids
            if completion.text:
                state.shown = Shown.of(request, completion)
        return True
