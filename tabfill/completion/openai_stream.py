"""One streamed completion from an OpenAI-compatible server, shared between the source's event-loop thread
(which appends what arrives) and the engine worker thread (which waits for it until its deadline)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tabfill.completion.openai_wire import Chunk
from tabfill.completion.postprocess import stop_index
from tabfill.completion.types import CancelToken, Deadline, FinishReason, Prompt, StopRule

FINISHES: dict[str, FinishReason] = {"stop": "stop", "length": "length", "eos": "eos", "abort": "error"}


@dataclass(eq=False)
class Stream:
    """The text so far and how it ended (None while it runs). Guarded by `cond`."""

    request_id: str
    stop: StopRule
    prompt_tokens: int
    text: str = ""
    finish: FinishReason | None = None
    error: str = ""
    cached_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    first_byte_ms: float | None = None
    server_finished: bool = False  # the server sent its finish reason (usage may follow)
    handed_off: bool = False  # returned to the service as a continuation: its first cancel token no longer owns it
    task: Any = None  # the concurrent.futures.Future of its coroutine on the event loop
    cond: threading.Condition = field(default_factory=threading.Condition)
    listener: Callable[[], None] | None = None  # called (event-loop thread, no lock held) after each event and at the end
    confidence: list[tuple[int, float]] = field(default_factory=list)  # as Generation.confidence: (offset in text, probability)

    def add(self, chunk: Chunk) -> bool:
        """Take one event; True when reading must stop (the stop rule cut the text, or [DONE]). After the
        server's finish reason the answer is complete, but reading goes on to [DONE] for the usage event."""
        stop = self._add(chunk)
        if self.listener is not None:
            self.listener()
        return stop

    def _add(self, chunk: Chunk) -> bool:
        with self.cond:
            if self.first_byte_ms is None:
                self.first_byte_ms = (time.monotonic() - self.started) * 1000
            if chunk.prompt_tokens is not None:
                self.prompt_tokens = chunk.prompt_tokens
            if chunk.cached_tokens is not None:
                self.cached_tokens = chunk.cached_tokens
            if self.finish is not None:
                return chunk.done or not self.server_finished
            if chunk.text:
                if chunk.tokens and "".join(token for token, _ in chunk.tokens) == chunk.text:
                    # NOTE: only when the tokens spell the chunk's text (a token that ends inside a character,
                    # or a server that trims a stop string, would misplace every offset after it)
                    start = len(self.text)
                    for token, probability in chunk.tokens:
                        self.confidence.append((start, probability))
                        start += len(token)
                self.text += chunk.text
                cut = stop_index(self.text, self.stop)
                if cut is not None:
                    self.text = self.text[:cut]
                    self.confidence = [entry for entry in self.confidence if entry[0] < cut]
                    self._end("stop")
                    return True
            if chunk.done:
                # NOTE: [DONE] with no finish reason before it: the server cut the stream short (llama-cpp-python
                # does when another request arrives); the text so far is shown but is not a whole answer
                self._end("error")
                return True
            if chunk.finish_reason is not None:
                self._end(FINISHES.get(chunk.finish_reason, "stop"))
                self.server_finished = True
            return False

    def end(self, finish: FinishReason, error: str = "") -> None:
        with self.cond:
            if self.finish is None:
                self.error = error
                self._end(finish)
        if self.listener is not None:
            self.listener()

    def _end(self, finish: FinishReason) -> None:
        self.finish = finish
        self.cond.notify_all()

    def wake(self, _reason: str = "") -> None:
        with self.cond:
            self.cond.notify_all()

    def wait(self, cancel: CancelToken, deadline: Deadline) -> FinishReason:
        """Block the calling thread until the stream ends ("stop", "length", ...), `cancel` is set
        ("cancelled") or the deadline ("deadline"): never past the deadline."""
        with self.cond:
            while self.finish is None:
                if cancel.cancelled:
                    return "cancelled"
                if deadline.at is None:
                    self.cond.wait()
                    continue
                remaining = deadline.at - time.monotonic()
                if remaining <= 0:
                    return "deadline"
                self.cond.wait(remaining)
            return self.finish

    @property
    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000


class Handle:
    """The Resumable the service keeps for a deadline-cut generation: the open stream. When the service drops
    it (a newer prompt took over), a finalizer closes the stream, which is how the server aborts it."""

    __slots__ = ("stream", "prompt", "__weakref__")

    def __init__(self, stream: Stream, prompt: Prompt) -> None:
        self.stream = stream
        self.prompt = prompt
