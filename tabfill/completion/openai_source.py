"""The "openai+http(s)://" token source: tabfill's prompts, deadlines and type-through in front of an
OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, llama-cpp-python's server).

Threads: the service's engine worker calls `generate`/`resume` synchronously; the HTTP streams run as
httpx.AsyncClient coroutines on an event loop in this source's own thread. `generate` starts a stream and
waits on it only until the deadline: then it returns what arrived, and the open stream is the continuation
(the server keeps generating; `resume` waits on the same stream). Closing the stream is how vLLM and
llama.cpp abort a request; SGLang is also sent `/abort_request` with the request's `rid`.

Failures (server down, 401, 429, 5xx, no first byte in time, a malformed stream) give an empty answer at
once and start an outage (openai_health: reported once, backoff, reconnect by the next request).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import httpx

from tabfill.completion import openai_wire as wire
from tabfill.completion.openai_detect import detect_server
from tabfill.completion.openai_health import EngineOffline, Health, describe_error, offline_error
from tabfill.completion.openai_stream import Handle, Stream
from tabfill.completion.types import CancelToken, Deadline, EngineInfo, Generation, Prompt, StopRule, Timings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
FIRST_BYTE_TIMEOUT_S = 30.0  # no byte for this long: the server is treated as down (an outage)
MAX_OPEN_STREAMS = 4  # continuations kept open at once; the oldest is closed beyond that (`max_open_streams`)
_WARM_STOP = StopRule(single_line=False, max_lines=1 << 30)


class OpenAISource:
    """A TokenSource backed by an OpenAI-compatible completion server."""

    info: EngineInfo  # set by open_openai_source

    def __init__(
        self,
        base_url: str,
        tokenizer: Any,
        *,
        model: str = "",
        api_key: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
        first_byte_timeout_s: float = FIRST_BYTE_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self.tokenizer = tokenizer
        self._model_spec = model
        self._first_byte_timeout_s = first_byte_timeout_s
        self.profile = wire.ServerProfile(model=model if model and not wire.is_local_model(model) else None, salt=wire.cache_salt(api_key))
        self.detected = False
        self.prompts = "text (until the server is detected)"
        self.health = Health(self.base_url)
        self.requests = 0
        self.max_open_streams = MAX_OPEN_STREAMS
        self.last_stream: Stream | None = None
        self._lock = threading.Lock()
        self._open: list[Stream] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tabfill-openai", daemon=True)
        self._thread.start()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=first_byte_timeout_s, write=5.0, pool=5.0)

        async def make_client() -> httpx.AsyncClient:
            return httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport, trust_env=False)

        self._client: httpx.AsyncClient = self._call(make_client(), 5.0)

    def __repr__(self) -> str:  # never the key
        return f"OpenAISource({self.base_url!r}, kind={self.profile.kind!r})"

    @property
    def on_outage(self) -> Any:
        return self.health.on_outage

    @on_outage.setter
    def on_outage(self, callback: Any) -> None:
        """`callback(message)` once when an outage starts, `callback(None)` when it is over."""
        self.health.on_outage = callback

    def _call(self, coroutine: Any, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _spawn(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    # ------------------------------------------------------------------ detection
    def detect(self, timeout_s: float = 10.0) -> bool:
        """Ask the server what it is (blocking: start-up, `tabfill doctor`); False when it cannot be reached
        (an outage: requests retry after the backoff and detect again)."""
        try:
            self._call(self._detect(), timeout_s)
            return True
        except EngineOffline as exc:
            self.health.failed(str(exc))
        except Exception as exc:  # unreachable, or an answer that is not what a completion server says
            self.health.failed(f"cannot reach {self.base_url}: {describe_error(exc)}")
        return False

    async def _detect(self) -> None:
        profile, how = await detect_server(self._client, self.base_url, self.root_url, self.profile, self._model_spec, self.tokenizer)
        self.profile, self.prompts, self.detected = profile, how, True
        self.health.recovered()
        log.info("engine %s: %s, model %s, prompts: %s", self.base_url, profile.kind, profile.model, how)

    async def _detect_quietly(self) -> None:
        try:
            await self._detect()
        except Exception as exc:  # the request itself reports the failure
            log.debug("detection failed: %s", exc)

    # ------------------------------------------------------------------ TokenSource
    def describe(self) -> dict[str, object]:
        profile, outage, last = self.profile, self.health.outage, self.last_stream
        extras = [name for name, on in (
            ("cache_salt (per API key)", profile.salt is not None and profile.kind in (wire.VLLM, wire.SGLANG)),
            ("priority", profile.priority),
            ("rid + /abort_request", profile.kind == wire.SGLANG),
            ("stop_token_ids", profile.kind in (wire.VLLM, wire.SGLANG)),
            ("cache_prompt, t_max_predict_ms", profile.kind == wire.LLAMA_CPP),
            (f"id_slot {profile.slot}", profile.slot is not None),
        ) if on]
        described: dict[str, object] = {
            "kind": profile.kind if self.detected else "not detected yet",
            "url": self.base_url,
            "model": profile.model or "(server default)",
            "tokenizer": getattr(self.tokenizer, "source", type(self.tokenizer).__name__),
            "prompts": self.prompts,
            "extras": extras,
            "requests": self.requests,
            "failures": self.health.failures,
            "outages": self.health.outages,
            "outage": "" if outage is None else outage.reason,
        }
        if last is not None:
            first_byte = None if last.first_byte_ms is None else round(last.first_byte_ms, 1)
            described["lastStream"] = {"promptTokens": last.prompt_tokens, "cachedTokens": last.cached_tokens, "firstByteMs": first_byte}
        return described

    def generate(self, prompt: Prompt, cancel: CancelToken, deadline: Deadline, corpus: Sequence[int] = (), *, document: str = "") -> Generation:
        if self.health.in_backoff():
            return Generation((), "", "error", len(prompt.token_ids))
        stream = self.start_stream(prompt, prompt.max_new_tokens, priority=0)
        cancel.on_cancel(lambda _reason: self._cancelled_before_handoff(stream))
        return self._wait(Handle(stream, prompt), cancel, deadline)

    def resume(self, state: object, cancel: CancelToken, deadline: Deadline) -> Generation:
        if not isinstance(state, Handle):
            raise TypeError(f"not a continuation of this source: {type(state).__name__}")
        cancel.on_cancel(state.stream.wake)  # NOTE: a preempted background slice only returns; the stream stays open
        return self._wait(state, cancel, deadline)

    def warm(self, token_ids: list[int], cancel: CancelToken, *, document: str = "") -> int:
        """Send the prompt expected soon with one token to generate, at a lower priority, so the server's
        prefix cache holds it. Returns at once (0: what it prefills is the server's to count)."""
        if len(token_ids) < 2 or self.health.in_backoff():
            return 0
        self.start_stream(Prompt(tuple(token_ids), 1, _WARM_STOP), 1, priority=1)
        return 0

    def close(self) -> None:
        with self._lock:
            streams, self._open = self._open, []
        for stream in streams:
            self._abort(stream)

        async def shutdown() -> None:
            await self._client.aclose()

        try:
            self._call(shutdown(), 5.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)

    # ------------------------------------------------------------------ streams
    def _plan(self, prompt: Prompt, max_tokens: int, priority: int, request_id: str) -> wire.RequestPlan:
        profile, tokenizer = self.profile, self.tokenizer
        ids = list(prompt.token_ids)
        # NOTE: no token healing against a server (it cannot be made to re-produce the healed token): the
        # removed text goes back, and the answer starts after the whole prefix.
        body: list[int] | str
        if profile.token_prompts:
            body = ids + (tokenizer.encode(prompt.healing_text) if prompt.healing_text else [])
        else:
            if tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]:
                ids = ids[1:]  # the server puts its own BOS before a text prompt
            body = tokenizer.decode(ids, skip_special_tokens=False) + prompt.healing_text
        stop: tuple[str, ...] = ("\n",) if prompt.stop.single_line else ("\n\n\n",)
        stop_ids = tuple(sorted(prompt.stop_token_ids))
        if profile.kind not in (wire.VLLM, wire.SGLANG) and stop_ids:
            texts = tokenizer.convert_ids_to_tokens(list(stop_ids))
            stop += tuple(t for t in texts if isinstance(t, str) and t)
            if profile.kind == wire.OPENAI:
                stop = stop[:4]  # the OpenAI API takes at most 4
        # NOTE: each token's probability lets the service draw the answer up to where the model was unsure, as
        # with the in-process and team engines; a warm-up (one token, never shown) does not ask for it
        return wire.RequestPlan(body, max_tokens, stop, stop_ids, request_id, priority, logprobs=max_tokens > 1)

    def start_stream(self, prompt: Prompt, max_tokens: int, priority: int, *, salt: str | None = None,
                     listener: Callable[[], None] | None = None) -> Stream:
        """Send `prompt` and return its stream at once (it fills on this source's event loop). `salt`: the
        prefix-cache salt of this request's tenant (vLLM/SGLang `cache_salt`) instead of the API key's;
        `listener`: called after each event and when the stream ends."""
        request_id = f"tabfill-{uuid.uuid4().hex[:16]}"
        plan = self._plan(prompt, max_tokens, priority, request_id)
        profile = self.profile if salt is None else dataclasses.replace(self.profile, salt=salt)
        path, body = self.base_url + "/completions", wire.completion_body(plan, profile)
        parts = wire.split_fim(prompt, self.tokenizer) if self.profile.kind == wire.LLAMA_CPP else None
        if parts is not None:  # NOTE: llama.cpp's own FIM, with the cross-file header as an input_extra file
            header, prefix, suffix = parts
            files = [("context", header)] if header else []
            path, body = self.root_url + "/infill", wire.infill_body(prefix, suffix, files, plan, profile)
        stream = Stream(request_id, prompt.stop, len(prompt.token_ids), listener=listener)
        with self._lock:
            self.requests += 1
            self._open.append(stream)
            extra = self._open[: -self.max_open_streams]
        for old in extra:
            self._abort(old)
        if not self.detected:
            self._spawn(self._detect_quietly())
        stream.task = self._spawn(self._run(stream, path, body))
        self.last_stream = stream
        return stream

    async def _run(self, stream: Stream, path: str, body: dict[str, Any]) -> None:
        response: httpx.Response | None = None
        try:
            # NOTE: the first byte is awaited with a timeout of our own (headers and first event), whatever
            # the transport; later gaps are bounded by the client's read timeout.
            async with asyncio.timeout(self._first_byte_timeout_s):
                request = self._client.build_request("POST", path, json=body)
                response = await self._client.send(request, stream=True)
                if response.status_code != 200:
                    raise await offline_error(response)
                chunks = response.aiter_text()
                first = await anext(chunks, "")
            decoder = wire.SseDecoder()
            for data in decoder.feed(first):
                if self._take(stream, data):
                    return
            async for text in chunks:
                for data in decoder.feed(text):
                    if self._take(stream, data):
                        return
            for data in decoder.close():
                if self._take(stream, data):
                    return
            if stream.finish is None:
                raise wire.StreamError("the stream ended without a finish reason or [DONE]")
        except TimeoutError:
            reason = f"no first byte within {self._first_byte_timeout_s:g} s"
            self.health.failed(reason)
            stream.end("error", reason)
        except asyncio.CancelledError:
            stream.end("cancelled")
            raise
        except EngineOffline as exc:
            if exc.outage:
                self.health.failed(str(exc), exc.retry_after_s)
            else:  # only this request was refused (e.g. too long); the server itself is fine
                log.warning("engine %s: %s", self.base_url, exc)
            stream.end("error", str(exc))
        except wire.StreamError as exc:
            self.health.failed(str(exc))
            stream.end("error", str(exc))
        except httpx.HTTPError as exc:
            self.health.failed(describe_error(exc))
            stream.end("error", describe_error(exc))
        finally:
            if response is not None:
                await response.aclose()  # NOTE: closing the connection is what aborts the request on the server
            stream.end("stop")
            with self._lock:
                if stream in self._open:
                    self._open.remove(stream)

    def _take(self, stream: Stream, data: str) -> bool:
        """One event into the stream; True when reading stops. A cut by the stop rule before the server
        finished closes the connection (leaving `_run`); SGLang is also told by rid."""
        chunk = wire.parse_event(data)
        if stream.first_byte_ms is None:
            self.health.recovered()
        if not stream.add(chunk):
            return False
        if not stream.server_finished and self.profile.kind == wire.SGLANG:
            self._spawn(self._post_quietly(self.root_url + "/abort_request", {"rid": stream.request_id}))
        return True

    def _cancelled_before_handoff(self, stream: Stream) -> None:
        """The generate call's token: cancelled while generate still owned the stream, the answer is unwanted."""
        stream.wake()
        if not stream.handed_off:
            self._abort(stream)

    def abort(self, stream: Stream) -> None:
        """Stop a stream this source started (closing it is how the server aborts the request)."""
        self._abort(stream)

    def _abort(self, stream: Stream) -> None:
        """Close the stream (vLLM and llama.cpp abort on disconnect); SGLang also gets /abort_request."""
        if stream.finish is not None:
            return
        task = stream.task
        if task is not None:
            task.cancel()
        if self.profile.kind == wire.SGLANG:
            self._spawn(self._post_quietly(self.root_url + "/abort_request", {"rid": stream.request_id}))

    async def _post_quietly(self, url: str, body: dict[str, Any]) -> None:
        try:
            await self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            log.debug("abort request failed: %s", exc)

    def _wait(self, handle: Handle, cancel: CancelToken, deadline: Deadline) -> Generation:
        stream = handle.stream
        started = time.perf_counter()
        finish = stream.wait(cancel, deadline)
        with stream.cond:
            text, cached, prompt_tokens = stream.text, stream.cached_tokens, stream.prompt_tokens
            confidence = tuple(stream.confidence)
        continuation: Handle | None = None
        if finish == "deadline":
            continuation = handle
            if not stream.handed_off:
                stream.handed_off = True
                weakref.finalize(handle, self._abort, stream)
        token_ids = tuple(self.tokenizer.encode(text)) if text else ()
        timings = Timings().add("remote", (time.perf_counter() - started) * 1000)
        return Generation(token_ids, text, finish, prompt_tokens, timings, cached_tokens=cached, continuation=continuation, confidence=confidence)


def open_openai_source(settings: Any, progress: Any = None) -> OpenAISource:
    """The source for `settings.engine` = "openai+http(s)://…" (the opener registered in sources.py).

    The tokenizer is the served model's, found on this machine from `engine_model` (or, when that is empty,
    the model id the server lists): its prompts are then token ids where the server takes them and agrees on a
    probe. With no tokenizer found, prompts are text (see tokenizer_file.CharTokenizer). The API key is
    `engine_api_key` or TABFILL_ENGINE_API_KEY. An unreachable server is not an error here: it is an outage,
    and requests reconnect when it is back."""
    from tabfill.completion.fim import detect_template
    from tabfill.completion.tokenizer_file import CharTokenizer, load_tokenizer

    report = progress or (lambda stage, fraction: None)
    started = time.perf_counter()
    url = wire.parse_engine_url(settings.engine)
    api_key = settings.engine_api_key or os.environ.get("TABFILL_ENGINE_API_KEY", "")
    report("loading the served model's tokenizer", None)
    tokenizer = load_tokenizer(settings.engine_model)
    source = OpenAISource(url, tokenizer, model=settings.engine_model, api_key=api_key)
    report(f"connecting to {url}", None)
    source.detect()
    if isinstance(tokenizer, CharTokenizer) and not settings.engine_model and source.profile.model:
        found = load_tokenizer(source.profile.model)  # e.g. llama-cpp-python lists its GGUF's path
        if not isinstance(found, CharTokenizer):
            source.tokenizer = found
            source.detect()
    template = detect_template(source.tokenizer)
    source.info = _engine_info(
        f"{url} ({source.profile.kind}, {source.profile.model or 'server default'})",
        template.name if template else "prefix-only",
        (time.perf_counter() - started) * 1000,
    )
    return source


def _engine_info(name: str, template: str, load_ms: float) -> EngineInfo:
    return EngineInfo(name, "remote", "server's", load_ms, template)
