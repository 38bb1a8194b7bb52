"""What kind of OpenAI-compatible server is behind a URL, and which of its extras tabfill turns on.

`/v1/models` (vLLM, SGLang and llama.cpp say who owns the model), then `/props` (llama.cpp's server),
`/get_model_info` (SGLang) and `/extras/tokenize/count` (llama-cpp-python's server). Token-id prompts are used
only where the server takes them and tokenizes a probe exactly as the local tokenizer does; vLLM's priority
only where the server accepts one (it must run with `--scheduling-policy priority`).
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Any

import httpx

from tabfill.completion import openai_wire as wire
from tabfill.completion.openai_health import EngineOffline

PROBE_TEXT = "def área(x):\n    return x  # <tag>\n"
PROBE_PATHS = ("/props", "/get_model_info", "/extras/tokenize/count")


async def _get_json(client: httpx.AsyncClient, url: str) -> tuple[int, Any]:
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return 0, None
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


async def detect_server(
    client: httpx.AsyncClient, base_url: str, root_url: str, profile: wire.ServerProfile, model_spec: str, tokenizer: Any
) -> tuple[wire.ServerProfile, str]:
    """The detected profile and how prompts are sent (for `describe`). Raises EngineOffline, httpx.HTTPError."""
    response = await client.get(base_url + "/models")
    if response.status_code != 200:
        what = "the engine rejected the API key" if response.status_code in (401, 403) else f"{base_url}/models failed"
        raise EngineOffline(f"{what} (HTTP {response.status_code})")
    try:
        models = response.json()
    except ValueError as exc:
        raise EngineOffline(f"{base_url}/models did not answer JSON") from exc
    answers = {path: await _get_json(client, root_url + path) for path in PROBE_PATHS}
    kind = wire.detect_kind(models, {path: status for path, (status, _) in answers.items()})
    ids = wire.served_model_ids(models)
    model = profile.model
    if model is None or (ids and model not in ids):
        model = next((i for i in ids if model_spec and i.endswith(model_spec)), ids[0] if ids else None)
    slot = None
    props = answers["/props"][1]
    slots = props.get("total_slots") if kind == wire.LLAMA_CPP and isinstance(props, dict) else None
    if isinstance(slots, int) and slots > 1:
        # NOTE: a slot per tenant (stable across restarts) keeps this front-end's prompt KV in place
        slot = zlib.crc32((profile.salt or "").encode()) % slots
    profile = replace(profile, kind=kind, model=model, slot=slot)
    token_prompts, how = await _check_tokens(client, root_url, profile, tokenizer)
    profile = replace(profile, token_prompts=token_prompts)
    if kind == wire.VLLM:
        profile = replace(profile, priority=await _accepts_priority(client, base_url, profile))
    return profile, how


async def _check_tokens(client: httpx.AsyncClient, root_url: str, profile: wire.ServerProfile, tokenizer: Any) -> tuple[bool, str]:
    if profile.kind not in wire.TOKEN_PROMPT_KINDS:
        return False, f"text ({profile.kind} takes text prompts)"
    if not hasattr(tokenizer, "_tokenizer"):
        return False, "text (no local tokenizer of the served model)"
    request = wire.tokenize_body(profile.kind, PROBE_TEXT, profile.model)
    if request is None:
        return False, "text"
    theirs: Any = None
    try:
        response = await client.post(root_url + request[0], json=request[1])
        if response.status_code == 200:
            theirs = response.json().get("tokens")
    except (httpx.HTTPError, ValueError, AttributeError):
        theirs = None
    if theirs is None:
        return False, "text (the server's tokenizer cannot be asked)"
    if not wire.same_tokens(tokenizer.encode(PROBE_TEXT), theirs, tokenizer.bos_token_id):
        return False, "text (the server tokenizes differently from the local tokenizer)"
    return True, "token ids (the server tokenizes a probe as the local tokenizer does)"


async def _accepts_priority(client: httpx.AsyncClient, base_url: str, profile: wire.ServerProfile) -> bool:
    body = wire.completion_body(wire.RequestPlan("a", 1, ()), replace(profile, priority=True, usage=False))
    body.update(stream=False, priority=1)
    try:
        return (await client.post(base_url + "/completions", json=body)).status_code == 200
    except httpx.HTTPError:
        return False
