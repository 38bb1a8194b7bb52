"""Recorded-shape fakes of vLLM, SGLang and llama.cpp servers as httpx MockTransport handlers.

The answers follow what each project documents and returns (shapes, not models):
- vLLM: /v1/models cards `owned_by: "vllm"` with `max_model_len`; `POST /tokenize` -> {"count", "max_model_len",
  "tokens"}; completion chunks {"id", "object": "text_completion", "created", "model", "choices": [{"index",
  "text", "logprobs", "finish_reason", "stop_reason"}]} and, with stream_options.include_usage, a last chunk with
  "choices": [] and "usage" {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details":
  {"cached_tokens"}}; a non-zero priority without `--scheduling-policy priority` -> HTTP 400 error object.
  (vllm/entrypoints/openai/completion/protocol.py; docs.vllm.ai/en/latest/serving/openai_compatible_server.html)
- SGLang: /v1/models `owned_by: "sglang"`, `GET /get_model_info`, `POST /v1/tokenize`, `POST /abort_request {"rid"}`
  (python/sglang/srt/entrypoints/openai/protocol.py, python/sglang/srt/entrypoints/http_server.py).
- llama.cpp's server: /v1/models `owned_by: "llamacpp"`, `GET /props` with `total_slots`, `POST /tokenize
  {"content"}` -> {"tokens"}; final chunk with "timings" {"cache_n", "prompt_n", ...} (tools/server/README.md).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


class SseBody(httpx.AsyncByteStream):
    """A streamed body that records whether the client closed it before its end."""

    def __init__(self, server: FakeServer, request_id: str, events: list[bytes], delay_s: float, first_delay_s: float) -> None:
        self.server, self.request_id, self.events = server, request_id, events
        self.delay_s, self.first_delay_s = delay_s, first_delay_s
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, event in enumerate(self.events):
            await asyncio.sleep(self.first_delay_s if index == 0 else self.delay_s)
            self.sent += 1
            yield event

    async def aclose(self) -> None:
        if self.sent < len(self.events):
            self.server.closed_early.append(self.request_id)


@dataclass
class FakeServer:
    kind: str  # "vllm" | "sglang" | "llama.cpp"
    pieces: tuple[str, ...] = ("return", " x", " +", " 1", "\n", "def")
    tokenize: Callable[[str], list[int]] | None = None
    delay_s: float = 0.0
    first_delay_s: float = 0.0
    cached_tokens: int = 7
    priority_scheduling: bool = False
    fail: Callable[[httpx.Request], httpx.Response | None] | None = None  # a failure to answer instead, or None
    requests: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, JSON body)
    closed_early: list[str] = field(default_factory=list)
    probabilities: tuple[float, ...] = ()  # per piece, streamed as its logprob when a request asks (`logprobs`)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for _, p, body in self.requests if p == path]

    def streamed(self) -> list[dict[str, Any]]:
        """The completion requests that streamed (not vLLM's one-token priority probe)."""
        return [body for body in self.bodies("/v1/completions") if body.get("stream")]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.requests.append((request.method, path, body))
        if self.fail is not None:
            failure = self.fail(request)
            if failure is not None:
                return failure
        if path == "/v1/models":
            return httpx.Response(200, json=self.models())
        if path == "/v1/completions":
            return self.complete(body)
        if self.kind == "llama.cpp" and path == "/infill":
            return self.infill(body)
        if self.kind == "sglang" and path == "/get_model_info":
            return httpx.Response(200, json={"model_path": "Qwen/Qwen2.5-Coder-1.5B", "tokenizer_path": "Qwen/Qwen2.5-Coder-1.5B", "is_generation": True})
        if self.kind == "sglang" and path == "/abort_request":
            return httpx.Response(200)
        if self.kind == "llama.cpp" and path == "/props":
            return httpx.Response(200, json={"default_generation_settings": {"n_ctx": 4096}, "total_slots": 4, "model_path": "m.gguf"})
        tokenize_path = {"vllm": "/tokenize", "sglang": "/v1/tokenize", "llama.cpp": "/tokenize"}[self.kind]
        if path == tokenize_path and self.tokenize is not None:
            text = body.get("prompt", body.get("content"))
            tokens = self.tokenize(text)
            return httpx.Response(200, json={"tokens": tokens, "count": len(tokens), "max_model_len": 32768})
        return httpx.Response(404, json={"detail": "Not Found"})

    def models(self) -> dict[str, Any]:
        owner = {"vllm": "vllm", "sglang": "sglang", "llama.cpp": "llamacpp"}[self.kind]
        card: dict[str, Any] = {"id": "Qwen/Qwen2.5-Coder-1.5B", "object": "model", "created": 1730000000, "owned_by": owner}
        if self.kind in ("vllm", "sglang"):
            card.update(root="Qwen/Qwen2.5-Coder-1.5B", parent=None, max_model_len=32768)
        return {"object": "list", "data": [card]}

    def complete(self, body: dict[str, Any]) -> httpx.Response:
        if body.get("priority") and not self.priority_scheduling:
            return httpx.Response(400, json={"object": "error", "message": "Priority scheduling is not enabled.",
                                             "type": "BadRequestError", "param": None, "code": 400})
        if not body.get("stream"):
            return httpx.Response(200, json={"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "x", "finish_reason": "length"}]})
        request_id = str(body.get("rid") or body.get("request_id") or "")
        pieces, finish = self.until_stop(body.get("stop") or [])
        asked = body.get("logprobs") is not None and self.kind != "llama.cpp"
        events = [self.chunk(piece, None, self._logprob(i) if asked else None) for i, piece in enumerate(pieces)]
        events.append(self.chunk("", finish))
        prompt_tokens = len(body["prompt"]) if isinstance(body["prompt"], list) else len(body["prompt"]) // 3
        if self.kind == "llama.cpp":
            events[-1] = _sse({"choices": [{"index": 0, "text": "", "finish_reason": finish}],
                               "timings": {"cache_n": self.cached_tokens, "prompt_n": prompt_tokens - self.cached_tokens}})
        elif (body.get("stream_options") or {}).get("include_usage"):
            events.append(_sse({"id": "cmpl-1", "object": "text_completion", "created": 1730000000, "model": body.get("model"), "choices": [],
                                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(self.pieces), "total_tokens": prompt_tokens + len(self.pieces),
                                          "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}}))
        events.append(b"data: [DONE]\n\n")
        stream = SseBody(self, request_id, events, self.delay_s, self.first_delay_s)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    def until_stop(self, stops: list[str]) -> tuple[list[str], str]:
        """The pieces a server streams when it applies the stop strings itself (and leaves them out)."""
        pieces, text = [], ""
        for piece in self.pieces:
            at = min((i for i in ((text + piece).find(stop) for stop in stops) if i >= 0), default=-1)
            if at >= 0:
                pieces.append((text + piece)[len(text) : at])
                return pieces, "stop"
            text += piece
            pieces.append(piece)
        return pieces, "length"

    def infill(self, body: dict[str, Any]) -> httpx.Response:
        """llama.cpp's native stream: {"content", "stop"} events, the last with timings and tokens_cached."""
        pieces, finish = self.until_stop(body.get("stop") or [])
        events = [_sse({"content": piece, "stop": False}) for piece in pieces]
        events.append(_sse({"content": "", "stop": True, "stopped_limit": finish == "length", "tokens_cached": self.cached_tokens,
                            "timings": {"cache_n": self.cached_tokens, "prompt_n": 5}}))
        stream = SseBody(self, "infill", events, self.delay_s, self.first_delay_s)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    def _logprob(self, index: int) -> float:
        return math.log(self.probabilities[index]) if index < len(self.probabilities) else 0.0

    def chunk(self, text: str, finish: str | None, logprob: float | None = None) -> bytes:
        """A completion chunk; with `logprob`, its one token's logprobs as vLLM streams them (CompletionLogProbs)."""
        logprobs = None if logprob is None else {"text_offset": [0], "token_logprobs": [logprob], "tokens": [text], "top_logprobs": [{text: logprob}]}
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        if self.kind == "vllm":
            choice["stop_reason"] = None
        return _sse({"id": "cmpl-1", "object": "text_completion", "created": 1730000000, "model": "Qwen/Qwen2.5-Coder-1.5B", "choices": [choice]})


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


# The request fields each project documents for its completions endpoint (see the module docstring).
OPENAI_FIELDS = {"model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
                 "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user"}
VLLM_FIELDS = OPENAI_FIELDS | {
    # vllm/entrypoints/openai/completion/protocol.py, CompletionRequest: sampling and extra params
    "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty", "stop_token_ids", "include_stop_str_in_output",
    "ignore_eos", "min_tokens", "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "allowed_token_ids", "prompt_logprobs", "add_special_tokens", "response_format", "priority", "request_id",
    "return_tokens_as_token_ids", "return_token_ids", "cache_salt", "kv_transfer_params", "vllm_xargs",
}
SGLANG_FIELDS = OPENAI_FIELDS | {
    # python/sglang/srt/entrypoints/openai/protocol.py, CompletionRequest
    "top_k", "min_p", "min_tokens", "json_schema", "regex", "ebnf", "repetition_penalty", "stop_token_ids", "no_stop_trim",
    "ignore_eos", "skip_special_tokens", "lora_path", "session_params", "response_format", "rid", "extra_key",
    "cache_salt", "priority", "return_hidden_states",
}
LLAMA_CPP_FIELDS = OPENAI_FIELDS | {
    # tools/server/README.md, POST /completion options (also taken by /v1/completions and /infill)
    "n_predict", "top_k", "min_p", "cache_prompt", "id_slot", "t_max_predict_ms", "samplers", "return_tokens",
    "input_prefix", "input_suffix", "input_extra",
}
LLAMA_CPP_PYTHON_FIELDS = {
    # llama_cpp/server/types.py, CreateCompletionRequest (0.3.x)
    "model", "prompt", "suffix", "max_tokens", "min_tokens", "temperature", "top_p", "min_p", "echo", "stop", "stream",
    "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "n", "best_of", "user", "top_k",
    "repeat_penalty", "logit_bias_type", "mirostat_mode", "mirostat_tau", "mirostat_eta", "grammar",
}
