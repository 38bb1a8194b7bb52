"""LeanDecoder against its transformers twin on tiny random-init Llama, Qwen2 and StarCoder2 configs."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config, Starcoder2Config

from tabfill.kernels import KVCache, LeanDecoder, describe, steps, supports
from tests.support import TINY_DIMENSIONS

VOCAB = 320
ATOL = 1e-4


def _config(arch: str) -> Any:
    common: dict[str, Any] = dict(vocab_size=VOCAB, **TINY_DIMENSIONS, max_position_embeddings=256)
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    if arch == "llama_untied_bias":
        return LlamaConfig(**common, tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
    if arch == "llama_linear_rope":
        return LlamaConfig(**common, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "starcoder2":
        return Starcoder2Config(**common, sliding_window=None, tie_word_embeddings=True)
    raise AssertionError(arch)


ARCHS = ["llama", "llama_untied_bias", "llama_linear_rope", "qwen2", "starcoder2"]


def _model(arch: str) -> Any:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch), dtype=torch.float32).eval()
    with torch.no_grad():  # random-init biases are zero; make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _prompt(n: int, seed: int = 1) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()  # [S, V]


@pytest.fixture(scope="module", params=ARCHS)
def twin(request: pytest.FixtureRequest) -> tuple[Any, LeanDecoder, torch.Tensor]:
    model = _model(request.param)
    prompt = _prompt(24)
    before = _hf_logits(model, prompt)
    decoder = LeanDecoder.from_hf(model, max_tokens=64)
    return model, decoder, before


def test_from_hf_leaves_transformers_logits_unchanged(twin: tuple[Any, LeanDecoder, torch.Tensor]) -> None:
    model, _, before = twin
    torch.testing.assert_close(_hf_logits(model, _prompt(24)), before, atol=1e-6, rtol=1e-6)


def test_forward_matches_transformers(twin: tuple[Any, LeanDecoder, torch.Tensor]) -> None:
    _, decoder, expected = twin
    got = decoder.forward(torch.tensor(_prompt(24)), 0, all_logits=True)
    assert got.shape == (24, VOCAB) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(decoder.forward(torch.tensor(_prompt(24)), 0), expected[-1], atol=ATOL, rtol=ATOL)


def test_prefill_then_decode_matches_full_sequence(twin: tuple[Any, LeanDecoder, torch.Tensor]) -> None:
    _, decoder, expected = twin
    prompt = _prompt(24)
    torch.testing.assert_close(steps.prefill(decoder, prompt[:16]), expected[15], atol=ATOL, rtol=ATOL)
    for pos in range(16, 24):
        torch.testing.assert_close(steps.decode_one_token(decoder, prompt[pos], pos), expected[pos], atol=ATOL, rtol=ATOL)


def test_verify_draft_equals_sequential_decode(twin: tuple[Any, LeanDecoder, torch.Tensor]) -> None:
    _, decoder, _ = twin
    prompt = _prompt(24)
    steps.prefill(decoder, prompt[:16])
    sequential = torch.stack([steps.decode_one_token(decoder, prompt[p], p) for p in range(16, 24)])
    steps.prefill(decoder, prompt[:16])
    torch.testing.assert_close(steps.verify_draft(decoder, prompt[16], prompt[17:24], 16)[1], sequential, atol=ATOL, rtol=ATOL)


def test_rollback_overwrites_rejected_positions(twin: tuple[Any, LeanDecoder, torch.Tensor]) -> None:
    _, decoder, expected = twin
    prompt = _prompt(24)
    steps.prefill(decoder, prompt[:16])
    rejected = _prompt(6, seed=7)
    steps.verify_draft(decoder, rejected[0], rejected[1:], 16)  # a rejected draft at 16..21
    torch.testing.assert_close(steps.verify_draft(decoder, prompt[16], prompt[17:20], 16)[1], expected[16:20], atol=ATOL, rtol=ATOL)


def test_read_kv_write_kv_round_trip(twin: tuple[Any, LeanDecoder, torch.Tensor]) -> None:
    _, decoder, expected = twin
    prompt = _prompt(24)
    steps.prefill(decoder, prompt[:20])
    saved = decoder.read_kv(0, 20)
    assert saved.shape == (2, 2, 2, 20, 16)
    assert saved.numel() * saved.element_size() == 20 * decoder.kv_bytes_per_token()
    steps.prefill(decoder, _prompt(20, seed=9))  # clobber
    decoder.write_kv(0, saved)
    torch.testing.assert_close(steps.verify_draft(decoder, prompt[20], prompt[21:24], 20)[1], expected[20:24], atol=ATOL, rtol=ATOL)


def test_prefill_is_chunked_beyond_the_chunk_size() -> None:
    model = _model("llama")
    prompt = _prompt(300)
    decoder = LeanDecoder.from_hf(model, max_tokens=320)
    torch.testing.assert_close(steps.prefill(decoder, prompt), _hf_logits(model, prompt)[-1], atol=ATOL, rtol=ATOL)


def test_unsupported_configs() -> None:
    gpt2 = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    assert not supports(gpt2)
    model = AutoModelForCausalLM.from_config(gpt2)
    with pytest.raises(ValueError):
        LeanDecoder.from_hf(model)
    dynamic = LlamaConfig(**{**_config("llama").to_dict(), "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}})
    assert not supports(dynamic)
    assert supports(_config("qwen2")) and supports(_config("starcoder2"))
    windowed = _model("starcoder2")
    windowed.config.sliding_window = 32
    with pytest.raises(ValueError, match="sliding window"):
        LeanDecoder.from_hf(windowed, max_tokens=64)


def test_positions_outside_the_cache_raise(twin: tuple[Any, LeanDecoder, torch.Tensor]) -> None:
    _, decoder, _ = twin
    with pytest.raises(ValueError):
        steps.verify_draft(decoder, 1, [2, 3], decoder.max_tokens - 2)


def test_describe_and_kv_cache() -> None:
    decoder = LeanDecoder.from_hf(_model("llama"), max_tokens=32)
    info = describe(decoder)
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["attention backend"] == "sdpa" and info["attention backend why"]
    assert info["quantization"] == "none"
    cache = KVCache(2, 2, 8, 4, dtype=torch.float32, device=torch.device("cpu"))
    k_all, _ = cache.update(1, 3, torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    assert k_all.shape == (1, 2, 8, 4) and k_all[0, :, 3:5].eq(1).all() and k_all[0, :, 5:].eq(0).all()
    assert cache.bytes_per_token() == 2 * 2 * 2 * 4 * 4


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_matches_transformers_for_any_thread_split(threads: int) -> None:
    model = _model("qwen2")
    prompt = _prompt(12)
    expected = _hf_logits(model, prompt)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        decoder = LeanDecoder.from_hf(model, max_tokens=32)
    finally:
        torch.set_num_threads(previous)
    assert decoder.layers[0].o.k_splits == threads  # type: ignore[attr-defined]
    torch.testing.assert_close(steps.verify_draft(decoder, prompt[0], prompt[1:], 0)[1], expected, atol=ATOL, rtol=ATOL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_from_hf_keeps_no_tensor_in_the_weights_file_mapping(tmp_path: Path) -> None:
    """A single norm weight left in from_pretrained's mapping of model.safetensors kept the whole file
    resident next to the repacked copies (+500 MB RSS with the default model)."""
    _model("llama").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    decoder = LeanDecoder.from_hf(model, max_tokens=64)
    gc.collect()
    weights = str(tmp_path / "model.safetensors")
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(weights)]
    assert decoder.forward(torch.tensor([1, 2, 3]), 0).shape == (decoder.vocab_size,)


def test_the_kv_slot_is_zero_and_resident_only_where_written() -> None:
    """KVCache's CPU tensors lie on an anonymous mapping (decoder.lazy_zeros): zeros, writable, and a slot's
    pages cost memory only once written (torch.zeros made the whole 47 MB slot resident at start)."""
    from tabfill.kernels.decoder import KVCache

    def rss_mib() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    before = rss_mib()
    cache = KVCache(4, 2, 8192, 1024, dtype=torch.float32, device=torch.device("cpu"))  # 2 x 256 MiB
    allocated = rss_mib()
    assert allocated - before < 16, (before, allocated)
    assert cache.k.is_contiguous() and cache.k.shape == (4, 1, 2, 8192, 1024)
    cache.update(1, 0, torch.ones(1, 2, 256, 1024), torch.full((1, 2, 256, 1024), 2.0))  # 4 MiB of 512
    written = rss_mib()
    assert 3 < written - allocated < 24, (allocated, written)
    assert float(cache.k.sum()) == 2 * 256 * 1024 and float(cache.v.sum()) == 2 * 2 * 256 * 1024
