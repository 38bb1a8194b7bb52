"""The OpenAI-compatible wire format: SSE decoding, chunk parsing, kind detection, request bodies."""

from __future__ import annotations

import pytest

from tabfill.completion import openai_wire as wire
from tests.unit.completion.openai_fakes import LLAMA_CPP_FIELDS, LLAMA_CPP_PYTHON_FIELDS, SGLANG_FIELDS, VLLM_FIELDS


def test_sse_decoder_reassembles_events_split_anywhere() -> None:
    stream = 'data: {"a": 1}\r\n\r\n: ping - keep-alive\n\ndata: {"b":\ndata:  2}\n\nevent: x\ndata: [DONE]\n'
    for size in (1, 3, 7, len(stream)):
        decoder = wire.SseDecoder()
        events = [event for start in range(0, len(stream), size) for event in decoder.feed(stream[start : start + size])]
        events += decoder.close()  # the last event had no blank line after it
        assert events == ['{"a": 1}', '{"b":\n 2}', "[DONE]"]


def test_parse_event_reads_text_finish_and_cached_tokens() -> None:
    chunk = wire.parse_event('{"choices": [{"index": 0, "text": " x", "finish_reason": null}]}')
    assert (chunk.text, chunk.finish_reason, chunk.cached_tokens) == (" x", None, None)
    usage = wire.parse_event('{"choices": [], "usage": {"prompt_tokens": 90, "prompt_tokens_details": {"cached_tokens": 64}}}')
    assert (usage.prompt_tokens, usage.cached_tokens) == (90, 64)  # vLLM / SGLang
    timings = wire.parse_event('{"choices": [{"text": "", "finish_reason": "stop"}], "timings": {"cache_n": 80, "prompt_n": 3}}')
    assert (timings.finish_reason, timings.cached_tokens, timings.prompt_tokens) == ("stop", 80, 83)  # llama.cpp
    native = wire.parse_event('{"content": "y", "stop": true, "stopped_limit": true, "tokens_cached": 12}')
    assert (native.text, native.finish_reason, native.cached_tokens) == ("y", "length", 12)  # llama.cpp /infill
    assert wire.parse_event("[DONE]").done


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '{"id": "x"}', '{"choices": [{"text": 3}]}', '{"error": {"message": "boom"}}'])
def test_parse_event_rejects_malformed_events(data: str) -> None:
    with pytest.raises(wire.StreamError):
        wire.parse_event(data)


def _models(owner: str) -> dict[str, object]:
    return {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": owner}]}


def test_detect_kind_from_recorded_answers() -> None:
    assert wire.detect_kind(_models("vllm"), {}) == wire.VLLM
    assert wire.detect_kind(_models("sglang"), {"/get_model_info": 200}) == wire.SGLANG
    assert wire.detect_kind(_models("llamacpp"), {"/props": 200}) == wire.LLAMA_CPP
    assert wire.detect_kind(_models("me"), {"/props": 404, "/extras/tokenize/count": 405}) == wire.LLAMA_CPP_PYTHON
    assert wire.detect_kind(_models("openai"), {"/props": 404}) == wire.OPENAI
    assert wire.detect_kind(None, {}) == wire.OPENAI


PLAN = wire.RequestPlan([1, 2, 3], 24, ("\n",), (5, 6), "tabfill-1", 0)


def test_vllm_body_uses_only_documented_fields() -> None:
    profile = wire.ServerProfile(kind=wire.VLLM, model="Qwen/Qwen2.5-Coder-1.5B", token_prompts=True, salt="s" * 43, priority=True)
    body = wire.completion_body(PLAN, profile)
    assert set(body) <= VLLM_FIELDS
    assert body["prompt"] == [1, 2, 3] and body["temperature"] == 0 and body["stream"] is True and body["max_tokens"] == 24
    assert (body["cache_salt"], body["priority"], body["request_id"], body["stop_token_ids"]) == ("s" * 43, 0, "tabfill-1", [5, 6])
    assert body["stream_options"] == {"include_usage": True}
    assert "priority" not in wire.completion_body(PLAN, wire.ServerProfile(kind=wire.VLLM))  # not accepted unless enabled


def test_sglang_body_uses_only_documented_fields() -> None:
    body = wire.completion_body(PLAN, wire.ServerProfile(kind=wire.SGLANG, salt="k"))
    assert set(body) <= SGLANG_FIELDS
    assert (body["rid"], body["cache_salt"], body["stop_token_ids"]) == ("tabfill-1", "k", [5, 6])


def test_llama_cpp_bodies_use_only_documented_fields() -> None:
    body = wire.completion_body(PLAN, wire.ServerProfile(kind=wire.LLAMA_CPP, slot=2))
    assert set(body) <= LLAMA_CPP_FIELDS
    assert (body["cache_prompt"], body["id_slot"], body["t_max_predict_ms"]) == (True, 2, wire.LLAMA_CPP_MAX_PREDICT_MS)
    infill = wire.infill_body("def f(", "):\n", [("util.py", "def g(): pass\n")], PLAN, wire.ServerProfile(kind=wire.LLAMA_CPP))
    assert set(infill) <= LLAMA_CPP_FIELDS
    assert infill["input_extra"] == [{"filename": "util.py", "text": "def g(): pass\n"}]
    python_body = wire.completion_body(wire.RequestPlan("text", 8, ("\n",)), wire.ServerProfile(kind=wire.LLAMA_CPP_PYTHON))
    assert set(python_body) <= LLAMA_CPP_PYTHON_FIELDS and python_body["prompt"] == "text"


def test_cache_salt_separates_tenants_and_hides_the_key() -> None:
    first, second = wire.cache_salt("key-one"), wire.cache_salt("key-two")
    assert first is not None and second is not None and first != second
    assert first == wire.cache_salt("key-one") and len(first) == 43 and "key-one" not in first
    assert wire.cache_salt("") is None


def test_same_tokens_ignores_a_bos_the_server_adds() -> None:
    assert wire.same_tokens([5, 6], [1, 5, 6], bos=1)
    assert not wire.same_tokens([5, 6], [5, 7], bos=1)
    assert not wire.same_tokens([5, 6], {"tokens": [5, 6]}, bos=None)


def test_parse_engine_url() -> None:
    assert wire.parse_engine_url("openai+http://gpu:8000/v1") == "http://gpu:8000/v1"
    assert wire.parse_engine_url("openai+https://gw.example/team") == "https://gw.example/team/v1"
    assert wire.parse_engine_url("openai+http://127.0.0.1:8080") == "http://127.0.0.1:8080/v1"
    for bad in ("http://gpu:8000/v1", "openai+ftp://x", "openai+http://"):
        with pytest.raises(ValueError):
            wire.parse_engine_url(bad)


def test_parse_event_reads_each_token_s_probability() -> None:
    chunk = wire.parse_event('{"choices": [{"text": " x +", "logprobs": {"tokens": [" x", " +"], "token_logprobs": [-0.1, -2.0], '
                             '"text_offset": [9, 11], "top_logprobs": null}, "finish_reason": null}]}')
    assert [token for token, _ in chunk.tokens] == [" x", " +"]
    assert [p for _, p in chunk.tokens] == pytest.approx([0.904837, 0.135335], abs=1e-6)
    for malformed in ('{"tokens": [" x"], "token_logprobs": []}', '{"tokens": [" x"], "token_logprobs": ["a"]}',
                      '{"tokens": [1], "token_logprobs": [-0.1]}', '"yes"', 'null', '{"tokens": [" x"], "token_logprobs": [NaN]}'):
        assert wire.parse_event(f'{{"choices": [{{"text": " x", "logprobs": {malformed}}}]}}').tokens == ()


def test_logprobs_are_asked_only_where_the_stream_carries_them() -> None:
    plan = wire.RequestPlan([1, 2], 24, ("\n",), logprobs=True)
    for kind, fields in ((wire.VLLM, VLLM_FIELDS), (wire.SGLANG, SGLANG_FIELDS), (wire.LLAMA_CPP_PYTHON, LLAMA_CPP_PYTHON_FIELDS)):
        body = wire.completion_body(plan, wire.ServerProfile(kind=kind))
        assert body["logprobs"] == 1 and set(body) <= fields
    assert "logprobs" not in wire.completion_body(plan, wire.ServerProfile(kind=wire.LLAMA_CPP))  # another shape
    assert "logprobs" not in wire.completion_body(PLAN, wire.ServerProfile(kind=wire.VLLM))  # not asked


def test_a_stream_places_each_token_at_its_offset_and_skips_tokens_that_do_not_spell_the_text() -> None:
    from tabfill.completion.openai_stream import Stream
    from tabfill.completion.types import StopRule

    stream = Stream("r", StopRule(single_line=True), 5)
    stream.add(wire.Chunk(text="ret", tokens=(("ret", 0.9),)))
    stream.add(wire.Chunk(text="urn x", tokens=(("urn", 0.99), (" x", 0.3))))
    stream.add(wire.Chunk(text=" +", tokens=(("\ufffd", 0.2),)))  # e.g. a token ending inside a character: not placed
    stream.add(wire.Chunk(text=" 1\nnext", tokens=((" 1", 0.8), ("\n", 0.9), ("next", 0.1))))
    assert stream.text == "return x + 1"  # cut at the newline by the stop rule
    assert stream.confidence == [(0, 0.9), (3, 0.99), (6, 0.3), (10, 0.8)]  # none past the cut
