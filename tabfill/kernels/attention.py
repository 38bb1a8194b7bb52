"""Causal attention over a (possibly partly filled) KV cache, through one function with backends.

Backends:
- ``xformers``: memory-efficient attention, CUDA only, when xformers is installed.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (on this CPU it picks the flash kernel).
- ``reference``: plain matmul + softmax in fp32; the test oracle.

Every backend takes queries for absolute positions ``q_start .. q_start+S-1`` and the first ``kv_len`` keys of
a cache; the query at position ``p`` sees keys ``0 .. min(p, kv_len-1)``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS: tuple[str, ...] = ("xformers", "sdpa", "reference")

AttentionFn = Callable[[Tensor, Tensor, Tensor, int, int], Tensor]


@functools.lru_cache(maxsize=1)
def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def select_backend(device: torch.device) -> tuple[str, str]:
    """The backend ``attention`` uses on ``device`` when none is named, and why."""
    if device.type == "cuda":
        if xformers_available():
            return "xformers", "CUDA and xformers installed: memory-efficient attention"
        return "sdpa", "CUDA without xformers: torch SDPA (flash / memory-efficient kernels)"
    if xformers_available():
        return "sdpa", f"xformers has no {device.type} kernels: torch SDPA"
    return "sdpa", f"xformers not installed (and has no {device.type} kernels): torch SDPA"


@functools.lru_cache(maxsize=16)
def _causal_mask(q_start: int, q_len: int, kv_len: int, device: torch.device) -> Tensor:
    """``mask[i, j]`` is True where the query at ``q_start + i`` may see key ``j``."""
    q_pos = torch.arange(q_start, q_start + q_len, device=device)  # [S]
    k_pos = torch.arange(kv_len, device=device)  # [T]
    return k_pos[None, :] <= q_pos[:, None]  # [S, T]


def _check(q: Tensor, k: Tensor, v: Tensor, q_start: int, kv_len: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q [B, Hq, S, D] and k, v [B, Hkv, T, D]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    if not 0 < kv_len <= k.shape[2]:
        raise ValueError(f"kv_len {kv_len} outside 1..{k.shape[2]}")
    if q_start < 0 or q_start >= kv_len:
        raise ValueError(f"q_start {q_start} must be in 0..kv_len-1 ({kv_len - 1}): every query needs a key")


def reference_attention(q: Tensor, k: Tensor, v: Tensor, q_start: int, kv_len: int) -> Tensor:
    """Plain attention in fp32: the oracle the other backends are tested against."""
    n_rep = q.shape[1] // k.shape[1]
    k = k[:, :, :kv_len].repeat_interleave(n_rep, dim=1).float()  # [B, Hq, T, D]
    v = v[:, :, :kv_len].repeat_interleave(n_rep, dim=1).float()  # [B, Hq, T, D]
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, Hq, S, T]
    mask = _causal_mask(q_start, q.shape[2], kv_len, q.device)  # [S, T]
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v).to(q.dtype)  # [B, Hq, S, D]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, q_start: int, kv_len: int) -> Tensor:
    k = k[:, :, :kv_len].to(q.dtype)  # [B, Hkv, T, D] (a view, SDPA takes the strides; a widened copy of an fp16 cache)
    v = v[:, :, :kv_len].to(q.dtype)
    gqa = q.shape[1] != k.shape[1]
    q_len = q.shape[2]
    if q_start + q_len == kv_len and q_len == 1:
        # NOTE: decode: the one query is the newest position and sees every valid key; no mask.
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if q_start == 0 and q_len == kv_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    # NOTE: is_causal aligns the mask top-left; queries that start after position 0 need an explicit mask.
    mask = _causal_mask(q_start, q_len, kv_len, q.device)  # [S, T]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def xformers_attention(q: Tensor, k: Tensor, v: Tensor, q_start: int, kv_len: int) -> Tensor:
    import xformers.ops as xops  # optional dependency, CUDA only

    batch, hq, q_len, head_dim = q.shape
    hkv = k.shape[1]
    groups = hq // hkv
    k, v = k[:, :, :kv_len].to(q.dtype), v[:, :, :kv_len].to(q.dtype)
    # xformers takes [B, M, G, H, K] for grouped-query attention: G = kv heads, H = queries per kv head.
    q5 = q.transpose(1, 2).reshape(batch, q_len, hkv, groups, head_dim)  # [B, S, Hkv, G, D]
    k5 = k.transpose(1, 2)[:, :, :, None, :].expand(batch, kv_len, hkv, groups, head_dim)
    v5 = v.transpose(1, 2)[:, :, :, None, :].expand(batch, kv_len, hkv, groups, head_dim)
    bias: Any
    if q_start + q_len == kv_len:
        # The queries are the last S positions: a causal mask aligned bottom-right.
        bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    else:
        mask = _causal_mask(q_start, q_len, kv_len, q.device)  # [S, T]
        # xformers wants the bias' last dim padded to a multiple of 8; slice back to T.
        padded = torch.zeros(batch, hkv, groups, q_len, (kv_len + 7) // 8 * 8, dtype=q.dtype, device=q.device)
        bias = padded[..., :kv_len]
        bias.masked_fill_(~mask, float("-inf"))
    out: Tensor = xops.memory_efficient_attention(q5, k5, v5, attn_bias=bias)  # [B, S, Hkv, G, D]
    return out.reshape(batch, q_len, hq, head_dim).transpose(1, 2)  # [B, Hq, S, D]


_BACKEND_FNS: dict[str, AttentionFn] = {
    "xformers": xformers_attention,
    "sdpa": sdpa_attention,
    "reference": reference_attention,
}


def attention(q: Tensor, k: Tensor, v: Tensor, *, q_start: int, kv_len: int, backend: str | None = None) -> Tensor:
    """Causal attention of ``q`` [B, Hq, S, D] over the first ``kv_len`` keys of ``k``, ``v`` [B, Hkv, T, D].

    Queries are at absolute positions ``q_start .. q_start+S-1``; the one at ``p`` sees keys ``0..p``. Keys at
    ``kv_len`` and beyond are never read. ``backend`` defaults to ``select_backend(q.device)``.
    Returns [B, Hq, S, D].
    """
    _check(q, k, v, q_start, kv_len)
    name = backend if backend is not None else select_backend(q.device)[0]
    try:
        fn = _BACKEND_FNS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(BACKENDS)}") from None
    return fn(q, k, v, q_start, kv_len)
