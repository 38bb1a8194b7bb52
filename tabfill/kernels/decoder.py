"""A lean decoder-only forward (gpt-fast style) for Llama, Qwen2 and StarCoder2 on Hugging Face weights.

The transformers model stays the reference twin (tests compare logits on tiny random-init configs); other
architectures stay on transformers (``config.supports`` says which). One ``forward`` writes into a
preallocated ``KVCache``; batch size is 1 (one completion at a time). The step functions over it are in
``steps``, the weight formats in ``packing``, the config checks and rotary tables in ``config``. Why it is
built this way, measured: bench/RESULTS.md ("Decode step").
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tabfill.kernels.attention import attention, select_backend
from tabfill.kernels.config import Arch, arch_of, config_problem, rope_tables, supports
from tabfill.kernels.packing import Layer, Linear, detached, pack_weights

__all__ = ["KVCache", "LeanDecoder", "describe", "supports"]


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.zeros``, but on CPU over an anonymous mapping: its pages are zero and become resident only when
    written, so a KV slot sized for the longest prompt costs memory for the positions prompts reach.
    NOTE: measured in `tabfill serve` with the default model: torch.zeros made the whole 1,024-position slot
    (47 MB) resident at start, where the default budgets reach ~620 positions."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=count).view(shape)


class KVCache:
    """Preallocated keys and values for every layer: ``k``, ``v`` [L, B, Hkv, max_tokens, D], zero until written
    (`lazy_zeros`: resident as positions are written).

    Positions beyond what was written hold zeros or stale values; callers bound attention with ``kv_len``.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        max_tokens: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        batch_size: int = 1,
    ) -> None:
        shape = (num_layers, batch_size, num_kv_heads, max_tokens, head_dim)
        self.k = lazy_zeros(shape, dtype, device)  # [L, B, Hkv, T, D]
        self.v = lazy_zeros(shape, dtype, device)  # [L, B, Hkv, T, D]
        self.max_tokens = max_tokens

    def update(self, layer: int, input_pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k``, ``v`` [B, Hkv, S, D] at positions ``input_pos..input_pos+S-1`` of ``layer``.

        Returns the layer's whole cache ``(k, v)`` [B, Hkv, T, D] (views).
        """
        end_pos = input_pos + k.shape[2]
        self.k[layer, :, :, input_pos:end_pos] = k
        self.v[layer, :, :, input_pos:end_pos] = v
        return self.k[layer], self.v[layer]

    def bytes_per_token(self) -> int:
        per_layer = self.k.shape[1] * self.k.shape[2] * self.k.shape[4] * self.k.element_size()
        return 2 * self.k.shape[0] * per_layer


class LeanDecoder:
    """Llama / Qwen2 / StarCoder2 forward over a preallocated KV cache, sharing a transformers model's weights."""

    def __init__(
        self,
        *,
        arch: Arch,
        embed: Tensor,
        embed_transposed: bool,
        layers: list[Layer],
        final_norm_weight: Tensor,
        final_norm_bias: Tensor | None,
        lm_head: Linear,
        cos: Tensor,
        signed_sin: Tensor,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        vocab_size: int,
        max_tokens: int,
        quantization: str,
        cache_tokens: int | None = None,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        """``cache_tokens``: positions of the decoder's own KV cache (default ``max_tokens``); 0 when its KV
        lives elsewhere (kernels.batch's slot pool) and ``forward`` is not used. ``kv_dtype``: what the KV
        cache (and a batch's slot pool) holds, default the weights' dtype; keys and values are rounded to it
        as they are written and widened to the queries' dtype for attention."""
        self.arch = arch
        self.embed = embed  # [D, V] when embed_transposed (shared with the tied lm_head), else [V, D]
        self.embed_transposed = embed_transposed
        self.layers = layers
        self.final_norm_weight = final_norm_weight
        self.final_norm_bias = final_norm_bias
        self.lm_head = lm_head
        self.cos = cos  # [T, Dh]
        self.signed_sin = signed_sin  # [T, Dh]
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self.quantization = quantization
        self.device = final_norm_weight.device
        self.dtype = final_norm_weight.dtype
        self.kv_dtype = self.dtype if kv_dtype is None else kv_dtype
        self.attention_backend, self.attention_why = select_backend(self.device)
        self.cache = KVCache(
            len(layers), num_kv_heads, max_tokens if cache_tokens is None else cache_tokens, head_dim,
            dtype=self.kv_dtype, device=self.device,
        )

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def from_hf(
        cls, model: Any, *, max_tokens: int = 2048, cache_tokens: int | None = None,
    ) -> LeanDecoder:
        """Build from a loaded transformers causal LM (its device and dtype), its weights packed by
        ``packing.pack_weights`` (shared with the transformers model).
        Raises ValueError for configurations it does not implement.
        """
        config = model.config
        problem = config_problem(config, max_tokens)
        if problem is not None:
            raise ValueError(problem)
        first = next(iter(model.parameters()))
        device, dtype = first.device, first.dtype
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        inner = model.model
        if not math.isclose(float(getattr(inner.layers[0].self_attn, "scaling", head_dim**-0.5)), head_dim**-0.5, rel_tol=1e-6):
            raise ValueError("attention scaling other than 1/sqrt(head_dim) is not supported")
        arch = arch_of(config)
        weights = pack_weights(model, arch)
        cos, signed_sin = rope_tables(config, getattr(inner, "rotary_emb", None), head_dim, max_tokens)
        return cls(
            arch=arch,
            embed=weights.embed,
            embed_transposed=weights.embed_transposed,
            layers=weights.layers,
            final_norm_weight=inner.norm.weight.detach(),
            final_norm_bias=detached(getattr(inner.norm, "bias", None)),
            lm_head=weights.lm_head,
            cos=cos.to(device=device, dtype=dtype),
            signed_sin=signed_sin.to(device=device, dtype=dtype),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            max_tokens=max_tokens,
            quantization="none",
            cache_tokens=cache_tokens,
        )

    # ---- the forward --------------------------------------------------------------------------------

    def _norm(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.arch.norm == "rms":
            return F.rms_norm(x, (x.shape[-1],), weight, self.arch.eps)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, self.arch.eps)

    def _mlp(self, layer: Layer, x: Tensor) -> Tensor:  # [S, D] -> [S, D]
        h = layer.up(x)  # [S, 2I] gated, else [S, I]
        if self.arch.gated_mlp:
            gate, up = h.chunk(2, dim=-1)  # [S, I] each
            h = F.silu(gate) * up
        elif self.arch.activation == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.gelu(h)
        return layer.down(h)

    def _embed(self, token_ids: Tensor) -> Tensor:  # [S] -> [S, D]
        if self.embed_transposed:
            return self.embed[:, token_ids].t()
        return F.embedding(token_ids, self.embed)

    @torch.no_grad()
    def forward(self, token_ids: Tensor | Sequence[int], start_pos: int, *, all_logits: bool = False) -> Tensor:
        """Run ``token_ids`` [S] at cache positions ``start_pos..start_pos+S-1``, attending to ``0..start_pos+S-1``.

        Returns fp32 logits [S, V] when ``all_logits``, else [V] for the last position. Writing at a
        ``start_pos`` below what was written before overwrites (rollback / prefix reuse).
        """
        if not isinstance(token_ids, Tensor):
            token_ids = torch.tensor(list(token_ids), dtype=torch.long, device=self.device)  # [S]
        q_len = token_ids.shape[0]
        end_pos = start_pos + q_len
        if q_len == 0 or start_pos < 0 or end_pos > self.cache.max_tokens:
            raise ValueError(f"positions {start_pos}..{end_pos - 1} outside the cache (max_tokens {self.cache.max_tokens})")
        hq, hkv, dh = self.num_heads, self.num_kv_heads, self.head_dim
        cos = self.cos[start_pos:end_pos, None, :]  # [S, 1, Dh]
        sin = self.signed_sin[start_pos:end_pos, None, :]  # [S, 1, Dh]
        x = self._embed(token_ids)  # [S, D]
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.norm1_weight, layer.norm1_bias)
            qkv = layer.qkv(h)  # [S, (Hq + 2 Hkv) Dh]
            qk = qkv[:, : (hq + hkv) * dh].view(q_len, hq + hkv, dh)  # [S, Hq + Hkv, Dh]
            qk = torch.addcmul(qk * cos, qk.roll(dh // 2, dims=-1), sin)  # rotary, q and k at once
            q = qk[:, :hq].transpose(0, 1).unsqueeze(0)  # [1, Hq, S, Dh]
            k = qk[:, hq:].transpose(0, 1).unsqueeze(0)  # [1, Hkv, S, Dh]
            v = qkv[:, (hq + hkv) * dh :].view(q_len, hkv, dh).transpose(0, 1).unsqueeze(0)  # [1, Hkv, S, Dh]
            k_all, v_all = self.cache.update(index, start_pos, k, v)  # [1, Hkv, T, Dh]
            o = attention(q, k_all, v_all, q_start=start_pos, kv_len=end_pos, backend=self.attention_backend)
            o = o[0].transpose(0, 1).reshape(q_len, hq * dh)  # [S, Hq Dh]
            x = x + layer.o(o)
            x = x + self._mlp(layer, self._norm(x, layer.norm2_weight, layer.norm2_bias))
        if not all_logits:
            x = x[-1:]  # [1, D]
        logits = self.lm_head(self._norm(x, self.final_norm_weight, self.final_norm_bias)).float()  # [S|1, V]
        return logits if all_logits else logits[0]

    # ---- the cache as data --------------------------------------------------------------------------

    def kv_bytes_per_token(self) -> int:
        return self.cache.bytes_per_token()

    def read_kv(self, start: int, end: int) -> Tensor:
        """A copy of cache positions ``[start, end)``: [L, 2, Hkv, n, Dh]."""
        k = self.cache.k[:, 0, :, start:end]  # [L, Hkv, n, Dh]
        v = self.cache.v[:, 0, :, start:end]
        return torch.stack((k, v), dim=1)  # [L, 2, Hkv, n, Dh]

    def write_kv(self, start: int, kv: Tensor) -> None:
        """Inverse of ``read_kv``: ``kv`` [L, 2, Hkv, n, Dh] into positions ``[start, start+n)``."""
        end = start + kv.shape[3]
        if end > self.cache.max_tokens:
            raise ValueError(f"positions {start}..{end - 1} outside the cache (max_tokens {self.cache.max_tokens})")
        self.cache.k[:, 0, :, start:end] = kv[:, 0]
        self.cache.v[:, 0, :, start:end] = kv[:, 1]


def describe(decoder: LeanDecoder) -> dict[str, str]:
    """What ``tabfill doctor`` prints about the decoder in use."""
    return {
        "device": str(decoder.device),
        "dtype": str(decoder.dtype).removeprefix("torch."),
        "attention backend": decoder.attention_backend,
        "attention backend why": decoder.attention_why,
        "quantization": decoder.quantization,
        "kv cache": f"{decoder.max_tokens} tokens x {decoder.kv_bytes_per_token()} bytes ({str(decoder.kv_dtype).removeprefix('torch.')})",
    }
