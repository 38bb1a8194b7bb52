"""Values that cross layer boundaries (docs/DESIGN.md, "Layers and what each may import"): frozen, but for
the `Timings` a request records."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tabfill.syntax_cache.workspace import Snippet
from tabfill.syntax_cache.tree import SyntaxSnapshot


@dataclass(frozen=True)
class CompletionRequest:
    """One request, already converted out of LSP units: `offset` counts code points into `text`."""

    uri: str
    language_id: str
    version: int
    text: str
    offset: int
    request_id: str = ""
    # Set by the client when the user explicitly asked (e.g. a key), as opposed to typing.
    explicit: bool = False
    # The document's syntax tree at this version (None: text rules), and context from other files.
    syntax: SyntaxSnapshot | None = field(default=None, compare=False, repr=False)
    cross_file: tuple[Snippet, ...] = ()
    # The workspace folder's name and the document's path in it ("" outside a folder): the repository-level
    # prompt format names both.
    repo_name: str = ""
    repo_path: str = ""
    # Milliseconds the caller spent gathering `syntax` and `cross_file` (the first timed stage, "lookup").
    lookup_ms: float = field(default=0.0, compare=False)
    # The user's key interval while typing in this document (None: not typing); shortens the deadline.
    key_interval_ms: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StopRule:
    """Where a generated continuation must end, in text terms the engine can check while decoding."""

    single_line: bool = True
    # Multi-line: a non-empty line indented less than this many columns ends the block.
    block_indent: int = 0
    max_lines: int = 1


@dataclass(frozen=True)
class Prompt:
    """A fully tokenized prompt. `healing_text` is the text of prompt tokens removed at the end
    (token healing): the generation must start with it, and it is stripped from the result."""

    token_ids: tuple[int, ...]
    max_new_tokens: int
    stop: StopRule
    stop_token_ids: frozenset[int] = frozenset()
    healing_text: str = ""
    template: str = "prefix-only"
    prefix_chars: int = 0  # how many characters of the document prefix made it into the prompt
    suffix_chars: int = 0
    context_chars: int = 0  # characters of cross-file context (comments before the prefix)


@dataclass
class Timings:
    """Milliseconds per named stage, in the order they ran. The request that owns it records its stages
    (`measure`, `add`); once handed on in a Completion or Generation it is only read."""

    stages: tuple[tuple[str, float], ...] = ()

    def add(self, name: str, ms: float) -> Timings:
        self.stages += ((name, ms),)
        return self

    def extend(self, other: Timings) -> Timings:
        self.stages += other.stages
        return self

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Time the `with` block as stage `name` (recorded also when the block raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - started) * 1000)

    def get(self, name: str) -> float:
        return sum(ms for stage, ms in self.stages if stage == name)

    @property
    def total_ms(self) -> float:
        return sum(ms for _, ms in self.stages)

    def describe(self) -> str:
        return " ".join(f"{name}={ms:.1f}ms" for name, ms in self.stages)


# "error": a remote source could not answer (no connection, or the server failed the request).
FinishReason = Literal["stop", "length", "eos", "deadline", "cancelled", "error"]
Source = Literal["model", "cache", "type-through", "continuation", "none"]


class Resumable(Protocol):
    """The opaque handle of a generation cut by its deadline: only the TokenSource that made it can resume it
    (in process: an `engine.Decoding`)."""

    @property
    def prompt(self) -> Prompt: ...


@dataclass(frozen=True)
class EngineInfo:
    """How a TokenSource was set up: where its model came from, where it runs, and what loading it cost."""

    source: str
    device: str
    dtype: str
    load_ms: float
    template: str  # the FIM template's name (fim.TEMPLATES), or "prefix-only"
    import_ms: float = 0.0
    warmup_ms: float = 0.0


@dataclass(frozen=True)
class Generation:
    """What the engine produced for a prompt (healing text already removed from `text`)."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    timings: Timings = field(default_factory=Timings)
    cached_tokens: int = 0  # prompt tokens whose KV was reused (live slot or prefix store), not prefilled
    draft_tokens: int = 0  # speculative tokens proposed, and how many of them the model agreed with
    accepted_draft_tokens: int = 0
    # (offset in `text` where a generated token starts, the probability it was chosen with), per token;
    # empty when the source does not say (remote engines)
    confidence: tuple[tuple[int, float], ...] = ()
    # A generation stopped by its deadline: the source's handle to resume it (engine thread only).
    continuation: Resumable | None = field(default=None, compare=False, repr=False)

    def describe(self) -> dict[str, object]:
        """Its counters as JSON for `tabfill/status` ("lastGeneration")."""
        return {
            "promptTokens": self.prompt_tokens,
            "cachedTokens": self.cached_tokens,
            "generatedTokens": len(self.token_ids),
            "draftTokens": self.draft_tokens,
            "acceptedDraftTokens": self.accepted_draft_tokens,
            "finishReason": self.finish_reason,
        }


@dataclass(frozen=True)
class Completion:
    """The answer: insert `text` at the request offset, replacing `replace_chars` code points after it."""

    text: str
    offset: int
    replace_chars: int = 0
    request_id: str = ""
    source: Source = "model"
    finish_reason: str = ""  # the Generation's, or why there is no text ("language disabled", ...)
    timings: Timings = field(default_factory=Timings)
    # Offsets in `text` (code points, ascending, inside it) where the model was unsure: a token chosen with
    # less than Settings.confidence_percent probability starts there. Editors show the text up to the first
    # one and reveal the next piece as the user types into it or accepts (postprocess.uncertain_cuts).
    cuts: tuple[int, ...] = ()

    @staticmethod
    def empty(request: CompletionRequest, reason: str, timings: Timings | None = None) -> Completion:
        """No suggestion for `request`, and why (`finish_reason`)."""
        return Completion("", request.offset, 0, request.request_id, "none", reason, timings or Timings())

    def pieces(self) -> list[str]:
        """`text` split at `cuts`."""
        bounds = [0, *self.cuts, len(self.text)]
        return [self.text[start:end] for start, end in zip(bounds, bounds[1:])]


class CancelToken:
    """Set once; checked by the decode loop between steps. Thread-safe."""

    __slots__ = ("_event", "_lock", "_callbacks", "reason")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[str], None]] = []
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(reason)

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once when cancelled (at once if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback(self.reason)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class Deadline:
    """An absolute monotonic deadline; `None` seconds means no deadline."""

    at: float | None = None

    @staticmethod
    def after_ms(ms: float | None) -> Deadline:
        return Deadline(None if ms is None or ms <= 0 else time.monotonic() + ms / 1000.0)

    @property
    def expired(self) -> bool:
        return self.within_ms(0)

    @property
    def remaining_ms(self) -> float | None:
        """Milliseconds left (negative when past); None without a deadline."""
        return None if self.at is None else (self.at - time.monotonic()) * 1000.0

    def within_ms(self, ms: float) -> bool:
        """True when the deadline is at most `ms` milliseconds away (or past): a step of that length
        started now would end after it."""
        return self.at is not None and time.monotonic() + ms / 1000.0 >= self.at


@dataclass(frozen=True)
class Settings:
    """User settings (from initializationOptions / didChangeConfiguration or the CLI)."""

    model: str = "default"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    max_new_tokens: int = 48
    single_line_max_new_tokens: int = 24
    deadline_ms: int = 0  # 0: choose by device (see completion.settings)
    enabled_languages: tuple[str, ...] = ("*",)
    max_prefix_tokens: int = 384
    max_suffix_tokens: int = 128
    multi_line: bool = True
    # Syntax-aware post-processing (block stop by the parse, closers, repeats); off: plain newline rules.
    syntax_postprocess: bool = True
    # Cross-file context (imported definitions, recent edits in other files) before the prefix, in tokens.
    cross_file_context: bool = True
    cross_file_tokens: int = 192
    # Speed: the lean kernels/ forward where the architecture has one (off: transformers' own forward),
    # its weights ("auto": on CPU the GGUF's own quantized blocks when the model has a GGUF, else fp32;
    # "gguf": those blocks or an error; "none": fp32), and the bytes of KV the prefix store keeps.
    lean_forward: bool = True
    quantize: str = "auto"
    # NOTE: 64 MiB of fp16 blocks (completion.prefix_cache) hold the ~2,900 tokens of the default model that 128
    # MiB of fp32 held: the same prompts kept, half the memory.
    prefix_cache_mb: int = 64
    # Suggestions are split before each token the model chose with less than this probability (percent);
    # the editors show the first piece and the next as the user types into it or accepts. 0: show it whole.
    confidence_percent: int = 50
    # Where tokens come from (completion.sources): "" or "local" = this process.
    engine: str = ""
    # The team engine's token (tcp:// and tcps://; else $TABFILL_ENGINE_TOKEN). Never logged nor shown.
    engine_token: str = field(default="", repr=False)
    # The served model of a server engine: its name there and/or where its tokenizer is here ("default", a
    # directory, a tokenizer.json, a converted .gguf, a cached hub id). The key is never logged (repr=False).
    engine_model: str = ""
    engine_api_key: str = field(default="", repr=False)
