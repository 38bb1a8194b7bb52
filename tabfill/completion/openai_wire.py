"""The wire format of OpenAI-compatible completion servers (pure functions, no I/O).

What each kind of server documents and what tabfill sends it:
- every kind: `POST {base}/completions` with `prompt`, `max_tokens`, `temperature: 0`, `stop`, `stream: true`
  (https://platform.openai.com/docs/api-reference/completions/create); the answer is server-sent events,
  `data: {json}` lines ending with `data: [DONE]`.
- vLLM (vllm/entrypoints/openai/completion/protocol.py, CompletionRequest; docs.vllm.ai "OpenAI-Compatible
  Server", extra parameters): `prompt` as a list of token ids, `stop_token_ids`, `skip_special_tokens`,
  `cache_salt` (prefix cache salted per tenant), `priority` (only with `--scheduling-policy priority`; any
  other value than 0 is an error otherwise), `request_id`, `stream_options.include_usage` (usage with
  `prompt_tokens_details.cached_tokens` when started with `--enable-prompt-tokens-details`). A request is
  aborted when its client disconnects.
- SGLang (python/sglang/srt/entrypoints/openai/protocol.py, CompletionRequest): the same plus `rid`, which
  `POST /abort_request {"rid": ...}` aborts; `cached_tokens` with `--enable-cache-report`.
- llama.cpp's server (tools/server/README.md): `cache_prompt`, `id_slot`, `t_max_predict_ms`, token-id
  prompts; `timings.cache_n` / `tokens_cached` tell the reused prompt tokens; aborts on disconnect.
- llama-cpp-python's server (llama_cpp/server/types.py, CreateCompletionRequest): text prompts only, no
  cached-token count (its log says "N prefix-match hit"); aborts on disconnect.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tabfill.completion.fim import TEMPLATES
from tabfill.completion.types import Prompt

VLLM, SGLANG, LLAMA_CPP, LLAMA_CPP_PYTHON, OPENAI = "vllm", "sglang", "llama.cpp", "llama-cpp-python", "openai"
TOKEN_PROMPT_KINDS = frozenset({VLLM, SGLANG, LLAMA_CPP})
# Where each kind's tokenizer can be asked (to check that ours is the served model's): path, body maker.
TOKENIZE_ENDPOINTS: Mapping[str, tuple[str, str]] = {
    VLLM: ("/tokenize", "prompt"),
    SGLANG: ("/v1/tokenize", "prompt"),
    LLAMA_CPP: ("/tokenize", "content"),
    LLAMA_CPP_PYTHON: ("/extras/tokenize", "input"),
}
# llama.cpp: stop a request that nobody reads any more after this long (it stops after a newline past it).
LLAMA_CPP_MAX_PREDICT_MS = 5_000


class StreamError(Exception):
    """The server's stream broke its format (a `data:` line that is not a completion chunk)."""


@dataclass
class Chunk:
    """What one server-sent event carried."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    done: bool = False  # the `[DONE]` sentinel
    # (token text, probability) of each token in `text`, in order, when the server sent their logprobs
    tokens: tuple[tuple[str, float], ...] = ()


@dataclass
class SseDecoder:
    """Incremental server-sent-events decoder: feed text as it arrives, get whole events' data back.
    Handles `\\r\\n`, multi-line `data:` fields, comments (`: ping`) and events split across reads."""

    buffer: str = ""
    data: list[str] = field(default_factory=list)

    def feed(self, text: str) -> list[str]:
        self.buffer += text
        events: list[str] = []
        while True:
            newline = self.buffer.find("\n")
            if newline < 0:
                return events
            line, self.buffer = self.buffer[:newline].rstrip("\r"), self.buffer[newline + 1 :]
            if not line:
                if self.data:
                    events.append("\n".join(self.data))
                    self.data = []
            elif line.startswith(":"):
                continue
            elif line.startswith("data:"):
                value = line[5:]
                self.data.append(value[1:] if value.startswith(" ") else value)
            # other fields (event:, id:, retry:) carry nothing a completion needs

    def close(self) -> list[str]:
        """The last event when the stream ended without its blank line."""
        events = self.feed("\n") if self.buffer else []
        if self.data:
            events.append("\n".join(self.data))
            self.data = []
        return events


def parse_event(data: str) -> Chunk:
    """One event's data as a Chunk; raises StreamError when it is not a completion chunk."""
    if data.strip() == "[DONE]":
        return Chunk(done=True)
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise StreamError(f"malformed event (not JSON): {data[:80]!r}") from exc
    if not isinstance(payload, dict):
        raise StreamError(f"malformed event (not an object): {data[:80]!r}")
    if "error" in payload:
        error = payload["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise StreamError(f"the server reported an error mid-stream: {str(message)[:200]}")
    chunk = Chunk()
    choices = payload.get("choices")
    if "content" in payload and choices is None:  # llama.cpp's native /completion and /infill
        if not isinstance(payload["content"], str):
            raise StreamError(f"malformed event (content is not text): {data[:80]!r}")
        chunk.text = payload["content"]
        chunk.finish_reason = ("length" if payload.get("stopped_limit") else "stop") if payload.get("stop") else None
    elif isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict) or not isinstance(choice.get("text", ""), str):
                raise StreamError(f"malformed event (choice without text): {data[:80]!r}")
            chunk.text += choice.get("text") or ""
            chunk.tokens += _token_probabilities(choice.get("logprobs"))
            chunk.finish_reason = choice.get("finish_reason") or chunk.finish_reason
    elif "usage" not in payload:
        raise StreamError(f"malformed event (no choices): {data[:80]!r}")
    _read_usage(payload, chunk)
    return chunk


def _token_probabilities(logprobs: Any) -> tuple[tuple[str, float], ...]:
    """A completion choice's `logprobs` ({"tokens": [...], "token_logprobs": [...], ...}, the legacy completions
    shape vLLM, SGLang, llama-cpp-python and OpenAI stream) as (token text, probability) pairs; () when absent or
    malformed (then nothing is judged unsure)."""
    if not isinstance(logprobs, dict):
        return ()
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        return ()
    pairs = []
    for token, value in zip(tokens, values):
        if not isinstance(token, str) or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return ()
        pairs.append((token, math.exp(min(0.0, value))))
    return tuple(pairs)


def _read_usage(payload: Mapping[str, Any], chunk: Chunk) -> None:
    usage = payload.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            chunk.prompt_tokens = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            chunk.cached_tokens = details["cached_tokens"]
    timings = payload.get("timings")
    if isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
        chunk.cached_tokens = timings["cache_n"]
        if isinstance(timings.get("prompt_n"), int):
            chunk.prompt_tokens = timings["cache_n"] + timings["prompt_n"]
    if isinstance(payload.get("tokens_cached"), int) and chunk.cached_tokens is None:
        chunk.cached_tokens = payload["tokens_cached"]


def detect_kind(models: Any, probes: Mapping[str, int]) -> str:
    """The server's kind from its `/v1/models` answer and which probe paths answered 200."""
    owners = set()
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        owners = {str(m.get("owned_by", "")).lower() for m in models["data"] if isinstance(m, dict)}
    if "vllm" in owners:
        return VLLM
    if "sglang" in owners or probes.get("/get_model_info") == 200:
        return SGLANG
    if "llamacpp" in owners or probes.get("/props") == 200:
        return LLAMA_CPP
    if probes.get("/extras/tokenize/count") in (200, 405, 422) or "me" in owners:
        return LLAMA_CPP_PYTHON
    return OPENAI


def served_model_ids(models: Any) -> list[str]:
    if not isinstance(models, dict) or not isinstance(models.get("data"), list):
        return []
    return [str(m["id"]) for m in models["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]


def cache_salt(api_key: str, tenant: str = "") -> str | None:
    """vLLM/SGLang `cache_salt` for this tenant: derived from its API key (the tenant's secret), 256 bits as
    43 url-safe base64 characters, so tenants with different keys never share a prefix-cache hit and nobody
    without the key can compute it. No key: one tenant, no salt."""
    if not api_key:
        return None
    digest = hashlib.sha256(b"tabfill cache salt\0" + tenant.encode() + b"\0" + api_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class RequestPlan:
    """The engine-independent part of one completion request."""

    prompt: list[int] | str
    max_tokens: int
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...] = ()
    request_id: str = ""
    priority: int = 0  # 0 typing; 1 warm-up (later, where the server schedules by priority)
    logprobs: bool = False  # ask for each token's logprob (where the server streams them: LOGPROB_KINDS)


@dataclass(frozen=True)
class ServerProfile:
    """What was detected about the server and which extras are on."""

    kind: str = OPENAI
    model: str | None = None  # sent as `model` (None: left out, the server's default)
    token_prompts: bool = False
    salt: str | None = None
    priority: bool = False  # vLLM: only once the server accepted a priority (scheduling policy "priority")
    slot: int | None = None  # llama.cpp: the slot this front-end keeps its prompt in
    usage: bool = True  # ask for usage in the stream (stream_options.include_usage)


# Kinds whose /v1/completions streams the legacy `logprobs` object per chunk ({"tokens", "token_logprobs", ...}).
# NOTE: llama.cpp's own server streams another shape (`completion_probabilities`, or chat-style content lists
# in newer builds) and its /infill takes `n_probs`: not asked, so its answers are drawn whole.
LOGPROB_KINDS = frozenset({VLLM, SGLANG, LLAMA_CPP_PYTHON, OPENAI})


def completion_body(plan: RequestPlan, profile: ServerProfile) -> dict[str, Any]:
    """The JSON body of `POST /v1/completions` for this server kind."""
    body: dict[str, Any] = {
        "prompt": plan.prompt,
        "max_tokens": plan.max_tokens,
        "temperature": 0,
        "stop": list(plan.stop),
        "stream": True,
    }
    if profile.model is not None:
        body["model"] = profile.model
    kind = profile.kind
    if plan.logprobs and kind in LOGPROB_KINDS:
        body["logprobs"] = 1  # the chosen token's logprob (and its top-1 alternative, which is itself when greedy)
    if kind in (VLLM, SGLANG, OPENAI) and profile.usage:
        body["stream_options"] = {"include_usage": True}
    if kind in (VLLM, SGLANG):
        if plan.stop_token_ids:
            body["stop_token_ids"] = list(plan.stop_token_ids)
        if profile.salt:
            body["cache_salt"] = profile.salt
        if profile.priority:
            body["priority"] = plan.priority
    if kind == VLLM and plan.request_id:
        body["request_id"] = plan.request_id
    if kind == SGLANG and plan.request_id:
        body["rid"] = plan.request_id
    if kind in (LLAMA_CPP, LLAMA_CPP_PYTHON):
        body["top_k"] = 1  # greedy without relying on temperature 0 alone
    if kind == LLAMA_CPP:
        body["cache_prompt"] = True
        body["t_max_predict_ms"] = LLAMA_CPP_MAX_PREDICT_MS
        if profile.slot is not None:
            body["id_slot"] = profile.slot
    return body


def infill_body(prefix: str, suffix: str, extra: Iterable[tuple[str, str]], plan: RequestPlan, profile: ServerProfile) -> dict[str, Any]:
    """llama.cpp's `POST /infill`: the server applies the model's own FIM (repo-level with `input_extra`
    files where the model has those tokens); it takes every /completion option too."""
    body: dict[str, Any] = {
        "input_prefix": prefix,
        "input_suffix": suffix,
        "input_extra": [{"filename": name, "text": text} for name, text in extra],
        "prompt": "",
        "n_predict": plan.max_tokens,
        "temperature": 0,
        "top_k": 1,
        "stop": list(plan.stop),
        "stream": True,
        "cache_prompt": True,
        "t_max_predict_ms": LLAMA_CPP_MAX_PREDICT_MS,
    }
    if profile.slot is not None:
        body["id_slot"] = profile.slot
    return body


def tokenize_body(kind: str, text: str, model: str | None) -> tuple[str, dict[str, Any]] | None:
    """Where and what to send to ask the server how it tokenizes `text` (None: it cannot be asked)."""
    endpoint = TOKENIZE_ENDPOINTS.get(kind)
    if endpoint is None:
        return None
    path, field_name = endpoint
    body: dict[str, Any] = {field_name: text}
    if kind in (VLLM, SGLANG):
        body["add_special_tokens"] = False
        if model is not None:
            body["model"] = model
    elif kind == LLAMA_CPP:
        body["add_special"] = False
    return path, body


def same_tokens(ours: list[int], theirs: Any, bos: int | None) -> bool:
    """Whether the server tokenized a probe as we do (a BOS it added in front is ignored)."""
    if not isinstance(theirs, list) or not all(isinstance(t, int) for t in theirs):
        return False
    tokens: list[int] = theirs[1:] if bos is not None and theirs[:1] == [bos] and ours[:1] != [bos] else theirs
    return tokens == ours


def parse_engine_url(spec: str) -> str:
    """"openai+http://host:8000/v1" -> "http://host:8000/v1" (a missing /v1 is added); ValueError otherwise."""
    for scheme in ("openai+http://", "openai+https://"):
        if spec.startswith(scheme):
            url = httpx.URL(spec[len("openai+") :])
            if not url.host:
                break
            path = url.path.rstrip("/")
            return str(url.copy_with(path=path if path.endswith("/v1") else path + "/v1"))
    raise ValueError(f"not an OpenAI-compatible engine URL: {spec!r} (expected openai+http://HOST:PORT/v1)")


def is_local_model(spec: str) -> bool:
    """A tokenizer location on this machine (not a name the server knows its model by)."""
    return spec.lower() in ("default", "smollm2", "smollm2-135m") or spec.startswith((".", "/", "~")) or spec.endswith((".gguf", ".json"))


def split_fim(prompt: Prompt, tokenizer: Any) -> tuple[str, str, str] | None:
    """A prefix-suffix-middle FIM prompt as text again: (cross-file header, prefix, suffix), for llama.cpp's
    /infill, which applies the model's own FIM. None: not such a prompt."""
    template = TEMPLATES.get(prompt.template)
    if template is None or template.order != "psm" or not template.middle_marker:
        return None
    ids = list(prompt.token_ids)
    markers = [tokenizer.convert_tokens_to_ids(m) for m in (template.prefix_marker, template.suffix_marker, template.middle_marker)]
    try:
        at_prefix = ids.index(markers[0])
        at_suffix = ids.index(markers[1], at_prefix)
        at_middle = ids.index(markers[2], at_suffix)
    except ValueError:
        return None
    head = tokenizer.decode(ids[at_prefix + 1 : at_suffix], skip_special_tokens=False)
    suffix = tokenizer.decode(ids[at_suffix + 1 : at_middle], skip_special_tokens=False)
    return head[: prompt.context_chars], head[prompt.context_chars :] + prompt.healing_text, suffix
