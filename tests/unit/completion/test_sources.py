"""Token sources: the scheme registry, and a service that generates through any TokenSource it is given."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tabfill.completion.models import ModelError, ProgressFn
from tabfill.completion.service import CompletionService
from tabfill.completion.source import TokenSource
from tabfill.completion.sources import OPENERS, open_source, scheme
from tabfill.completion.types import (
    CancelToken, CompletionRequest, Deadline, EngineInfo, Generation, Prompt, Resumable, Settings, Timings,
)
from tests.support import build_tiny_tokenizer

TEXT = "def area(r):\n    return "


def test_the_scheme_names_the_kind() -> None:
    assert [scheme(engine) for engine in ("", "local", " Local ", "tcp://box:7000", "openai+https://h/v1")] == [
        "", "local", "local", "tcp", "openai+https",
    ]


def test_an_unknown_engine_is_a_model_error_that_names_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown engine 'grpc://box:1'.*'local'"):
        open_source(Settings(engine="grpc://box:1"), lambda stage, fraction: None)


@dataclass(eq=False)
class _Cut:
    """A scripted source's resumable handle."""

    prompt: Prompt
    rest: str


@dataclass
class ScriptedSource:
    """Answers every prompt with `answer`; with `cut_at`, the first call stops there at its deadline."""

    answer: str
    cut_at: int = 0
    info: EngineInfo = EngineInfo("scripted", "cpu", "none", 0.0, "prefix-only")
    tokenizer: object = field(default_factory=build_tiny_tokenizer)
    calls: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {"runner": "scripted"}

    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline, corpus: Sequence[int] = (), *, document: str = "") -> Generation:
        self.calls.append("generate")
        if self.cut_at:
            head = self.answer[: self.cut_at]
            return Generation((1,), head, "deadline", len(prompt.token_ids), Timings(), continuation=_Cut(prompt, self.answer))
        return Generation((1, 2), self.answer, "stop", len(prompt.token_ids), Timings().add("decode", 1.0))

    def resume(self, state: Resumable, cancel: CancelToken, deadline: Deadline) -> Generation:
        self.calls.append("resume")
        assert isinstance(state, _Cut)
        return Generation((1, 2), state.rest, "stop", len(state.prompt.token_ids), Timings())

    def warm(self, token_ids: list[int], cancel: CancelToken, *, document: str = "") -> int:
        self.calls.append("warm")
        return 0

    def close(self) -> None:
        self.calls.append("close")


def serve(source: ScriptedSource, **settings: Any) -> CompletionService:
    opened: list[Settings] = []

    def opener(chosen: Settings, progress: ProgressFn) -> TokenSource:
        opened.append(chosen)
        return source

    service = CompletionService(Settings(engine="scripted://here", **settings), opener=opener)
    assert service.load().result(10) == source.info and opened[0].engine == "scripted://here"
    return service


def test_the_service_generates_through_the_source_it_was_given() -> None:
    source = ScriptedSource("r * r")
    service = serve(source, deadline_ms=60_000)
    try:
        answer = service.complete(CompletionRequest("file:///a.py", "python", 1, TEXT, len(TEXT), "r"))
        assert (answer.source, answer.text, answer.finish_reason) == ("model", "r * r", "stop")
        assert [name for name, _ in answer.timings.stages] == ["type_through", "context", "cache", "prompt", "decode", "postprocess"]
        assert service.describe_engine()["runner"] == "scripted" and service.info == source.info
    finally:
        service.close()
    assert source.calls[0] == "generate" and source.calls[-1] == "close"


def test_a_cut_generation_is_resumed_through_the_source_and_then_served_as_its_continuation() -> None:
    source = ScriptedSource("r * r", cut_at=2)
    ready: list[str] = []
    service = serve(source, deadline_ms=60_000)
    service.on_ready = lambda request, completion: ready.append(completion.text)
    try:
        first = service.complete(CompletionRequest("file:///a.py", "python", 1, TEXT, len(TEXT), "r"))
        assert (first.text, first.finish_reason) == ("r", "deadline")  # cut at a clean boundary
        give_up = time.monotonic() + 10
        while not ready and time.monotonic() < give_up:  # the continuation runs in the background
            time.sleep(0.01)
        assert ready == ["r * r"] and source.calls[:2] == ["generate", "resume"]
        again = service.complete(CompletionRequest("file:///a.py", "python", 1, TEXT, len(TEXT), "s"))
        assert (again.source, again.text) == ("continuation", "r * r")
    finally:
        service.close()
