"""Every available attention backend against the plain reference, on random inputs."""

from __future__ import annotations

import pytest
import torch

from tabfill.kernels import BACKENDS, attention, select_backend
from tabfill.kernels.attention import xformers_available

# (S, T, q_start, kv_len, Hq, Hkv): prefill, decode with cache, draft verification, GQA, MHA.
SHAPES = {
    "prefill": (12, 12, 0, 12, 4, 4),
    "prefill_gqa": (12, 16, 0, 12, 6, 2),
    "decode_with_cache": (1, 32, 19, 20, 6, 2),
    "draft_verification": (5, 32, 11, 16, 6, 2),
    "chunked_prefill": (8, 40, 8, 16, 4, 1),
}


def _inputs(shape: tuple[int, int, int, int, int, int], device: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    q_len, t_len, _, _, hq, hkv = shape
    gen = torch.Generator().manual_seed(q_len * 1000 + t_len)
    q = torch.randn(2, hq, q_len, 16, generator=gen)  # [B, Hq, S, D]
    k = torch.randn(2, hkv, t_len, 16, generator=gen)  # [B, Hkv, T, D]
    v = torch.randn(2, hkv, t_len, 16, generator=gen)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


XFORMERS = pytest.param(
    "xformers", "cuda", torch.float16, 2e-3,
    marks=[
        pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers memory-efficient attention needs CUDA; none here"),
        pytest.mark.skipif(not xformers_available(), reason="xformers is not installed"),
    ],
)


@pytest.mark.parametrize(("backend", "device", "dtype", "tolerance"), [("sdpa", "cpu", torch.float32, 1e-5), XFORMERS])
@pytest.mark.parametrize("name", list(SHAPES))
def test_backend_matches_reference(name: str, backend: str, device: str, dtype: torch.dtype, tolerance: float) -> None:
    shape = SHAPES[name]
    q, k, v = _inputs(shape, device, dtype)
    q_start, kv_len = shape[2], shape[3]
    expected = attention(q, k, v, q_start=q_start, kv_len=kv_len, backend="reference")
    got = attention(q, k, v, q_start=q_start, kv_len=kv_len, backend=backend)
    assert got.shape == q.shape
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_keys_beyond_kv_len_are_never_read() -> None:
    q, k, v = _inputs(SHAPES["decode_with_cache"], "cpu", torch.float32)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 20:] = float("nan")
    v2[:, :, 20:] = float("nan")
    for backend in ("sdpa", "reference"):
        a = attention(q, k, v, q_start=19, kv_len=20, backend=backend)
        b = attention(q, k2, v2, q_start=19, kv_len=20, backend=backend)
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_reference_is_causal_by_absolute_position() -> None:
    q, k, v = _inputs(SHAPES["draft_verification"], "cpu", torch.float32)
    full = attention(q, k, v, q_start=11, kv_len=16, backend="reference")
    # the first draft query (position 11) equals a decode step at position 11 with kv_len 12
    one = attention(q[:, :, :1], k, v, q_start=11, kv_len=12, backend="reference")
    torch.testing.assert_close(full[:, :, :1], one, atol=1e-6, rtol=1e-6)


def test_select_backend_on_cpu_is_sdpa_with_a_reason() -> None:
    name, why = select_backend(torch.device("cpu"))
    assert name == "sdpa" and name in BACKENDS
    assert "xformers" in why


def test_bad_arguments_raise() -> None:
    q, k, v = _inputs(SHAPES["decode_with_cache"], "cpu", torch.float32)
    with pytest.raises(ValueError):
        attention(q, k, v, q_start=19, kv_len=33, backend="sdpa")
    with pytest.raises(ValueError):
        attention(q, k, v, q_start=19, kv_len=20, backend="nope")
