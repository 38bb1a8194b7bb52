"""A lean decoder-only forward (gpt-fast style) for Llama, Qwen2 and StarCoder2 on Hugging Face weights.

The transformers model stays the reference twin (tests compare logits on tiny random-init configs); other
architectures stay on transformers (``supports`` says which).

The hot path is three short step functions over one ``forward``: ``prefill`` (chunked), ``decode_one_token``
and ``verify_draft``, writing into a preallocated ``KVCache``. Batch size is 1: one completion at a time.

NOTE: measured on this box (2-core AVX2 EPYC, torch 2.13 CPU, SmolLM2-135M, ``python -m bench.decode_step``):
- fp32 weights are stored input-major (``[K, N]``, ``x @ w``): at one token MKL streams them about 1.4x as
  fast as the ``[N, K]`` layout (31 vs 45 ms for all of SmolLM2's matrices), 2x for the 49152-wide lm_head;
  and each product is split over K, one slice per thread (see ``_Dense``): 31 -> 22 ms.
- ``quantize="int8"``: fbgemm dynamic quantization (int8 per-output-channel weights, activations quantized
  per token) for q|k|v, o, gate|up and lm_head; the MLP down projections stay fp32 (quantizing them too
  dropped teacher-forced argmax agreement with fp32 from ~87% to ~57%); activation outliers are smoothed
  from a calibration forward. ~1.4x faster decode, ~1.7x faster prefill, ~2x faster 8-token verify than
  fp32, at ~87% argmax agreement on code. Weight-only int8 would keep ~97%, but its kernel here
  (``aten._weight_int8pack_mm``, gpt-fast's CPU path) streams ~1-2 GB/s without AVX-512; fp16/bf16 matmuls
  are slower than fp32 on this CPU, and so is fbgemm's fp16 linear.
- ``torch.compile`` of ``forward`` (dynamic shapes) graph-breaks around the cache update, recompiles per
  layer until the recompile limit, took 7-34 s and ran slower than eager (47 vs 40 ms): not used.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from tabfill.kernels.attention import attention, select_backend

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "starcoder2")
QUANTIZATIONS = ("none", "int8")
PREFILL_CHUNK_TOKENS = 256
CALIBRATION_TOKENS = 128  # int8: one forward over fixed random tokens to find the outlier input channels

# rope types whose tables do not depend on the sequence length (the cache keeps rotated keys).
_STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class KVCache:
    """Preallocated keys and values for every layer: ``k``, ``v`` [L, B, Hkv, max_tokens, D].

    Positions beyond what was written hold garbage; callers bound attention with ``kv_len``.
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
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, Hkv, T, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, Hkv, T, D]
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


class _Linear(Protocol):
    def __call__(self, x: Tensor) -> Tensor: ...


class _Dense:
    """``x @ weight_t + bias`` with the weight stored input-major: ``weight_t`` [K, N].

    NOTE: on CPU, MKL runs a matrix-vector product on one thread (measured: the same ms/token with 1 and 2
    threads, ~17 GB/s of the ~32 GB/s two cores stream). Splitting the reduction dim K into one slice per
    thread and summing a ``bmm`` over them streams both halves at once: 31 -> 22 ms for SmolLM2's matrices
    at one token, 66 -> 45 ms at eight. It needs no copy: ``[K, N]`` viewed as ``[splits, K/splits, N]``.
    """

    def __init__(self, weight_t: Tensor, bias: Tensor | None) -> None:
        self.weight_t = weight_t  # [K, N]
        self.bias = bias  # [N] or None
        in_features = weight_t.shape[0]
        threads = torch.get_num_threads()
        self.k_splits = threads if weight_t.device.type == "cpu" and threads > 1 and in_features % threads == 0 else 1
        # [splits, K/splits, N] view of the same storage
        self.weight_split = weight_t.view(self.k_splits, in_features // self.k_splits, weight_t.shape[1])

    def __call__(self, x: Tensor) -> Tensor:  # [S, K] -> [S, N]
        if self.k_splits == 1:
            return x @ self.weight_t if self.bias is None else torch.addmm(self.bias, x, self.weight_t)
        rows, in_features = x.shape
        x_split = x.view(rows, self.k_splits, in_features // self.k_splits).transpose(0, 1)  # [splits, S, K/splits]
        out = torch.bmm(x_split, self.weight_split).sum(dim=0)  # [S, N]
        return out if self.bias is None else out.add_(self.bias)


class _Int8Dynamic:
    """int8 per-output-channel weights, activations quantized per call (fbgemm ``linear_dynamic``).

    NOTE: per-token activation quantization alone lost the argmax on half the positions of SmolLM2 (a few
    input channels carry outlier activations). SmoothQuant-style smoothing fixes most of it: input channel
    ``j`` is divided by ``s_j = amax_x_j ** alpha / amax_w_j ** (1 - alpha)`` before quantization and the
    weight's column multiplied by it, with ``amax_x`` from a calibration forward.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, input_absmax: Tensor | None, alpha: float) -> None:
        w = weight.detach().float()  # [N, K]
        self.inv_smooth: Tensor | None = None
        if input_absmax is not None:
            w_absmax = w.abs().amax(dim=0).clamp(min=1e-5)  # [K]
            smooth = (input_absmax.float().clamp(min=1e-5) ** alpha / w_absmax ** (1 - alpha)).clamp(min=1e-5)
            w = w * smooth[None, :]
            self.inv_smooth = (1.0 / smooth).to(weight.device)  # [K]
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # [N]
        zero_points = torch.zeros_like(scales, dtype=torch.long)
        with warnings.catch_warnings():
            # NOTE: torch 2.13 flags quantized tensor creation as deprecated; fbgemm's prepack still needs it.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(w, scales.double(), zero_points, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())
        self.out_dtype = weight.dtype

    def __call__(self, x: Tensor) -> Tensor:  # [S, K] -> [S, N]
        x = x.float()
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        # NOTE: reduce_range keeps activations to 7 bits: AVX2's u8*s8 pair sums saturate int16 otherwise.
        out = torch.ops.quantized.linear_dynamic(x, self.packed, True)
        return out.to(self.out_dtype)


@dataclass
class _Layer:
    norm1_weight: Tensor
    norm1_bias: Tensor | None
    qkv: _Linear  # [S, D] -> [S, (Hq + 2 Hkv) Dh]
    o: _Linear  # [S, Hq Dh] -> [S, D]
    norm2_weight: Tensor
    norm2_bias: Tensor | None
    up: _Linear  # gated: [S, D] -> [S, 2 I] (gate | up); plain: [S, D] -> [S, I]
    down: _Linear  # [S, I] -> [S, D]


@dataclass(frozen=True)
class _Arch:
    norm: str  # "rms" | "layer"
    gated_mlp: bool
    activation: str  # "silu" | "gelu" | "gelu_tanh"
    eps: float


def _rope_parameters(config: Any) -> dict[str, Any]:
    """``{"rope_type": ..., "rope_theta": ..., ...}`` from a transformers 5 or 4 config."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return {"rope_type": params.get("rope_type", params.get("type", "default")), **params}
    if isinstance(params, dict) and params:
        raise ValueError("per-layer-type rope parameters are not supported")
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = getattr(config, "rope_theta", 10000.0)
    return {"rope_type": scaling.get("rope_type", scaling.get("type", "default")), "rope_theta": theta, **scaling}


def _activation(config: Any) -> str:
    act = getattr(config, "hidden_act", None)
    if act == "silu":
        return "silu"
    if act in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        return "gelu_tanh"
    if act == "gelu":
        return "gelu"
    raise ValueError(f"activation {act!r} is not supported")


def _config_problem(config: Any, max_tokens: int | None = None) -> str | None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    try:
        rope = _rope_parameters(config)
        _activation(config)
    except ValueError as exc:
        return str(exc)
    if rope["rope_type"] not in _STATIC_ROPE_TYPES:
        return f"rope type {rope['rope_type']!r} is not supported (its tables depend on the sequence length)"
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embeddings are not supported"
    window = _sliding_window(config)
    if window is not None and max_tokens is not None and max_tokens > window:
        return f"sliding window {window} is smaller than max_tokens {max_tokens}; not implemented"
    return None


def _sliding_window(config: Any) -> int | None:
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    layer_types = getattr(config, "layer_types", None)
    if config.model_type == "qwen2":
        if not getattr(config, "use_sliding_window", False):
            return None
        if layer_types is not None and "sliding_attention" not in layer_types:
            return None
    return int(window)


def supports(config: Any) -> bool:
    """True when ``LeanDecoder.from_hf`` can run a model with this transformers config."""
    return _config_problem(config) is None


def _rope_tables(config: Any, rotary: Any, head_dim: int, max_tokens: int) -> tuple[Tensor, Tensor]:
    """cos and signed sin [max_tokens, Dh] in fp32, as transformers computes them (``rotate_half`` layout)."""
    rope = _rope_parameters(config)
    rope_type = rope["rope_type"]
    if rope_type in ("default", "linear"):
        inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        if rope_type == "linear":
            inv_freq = inv_freq / float(rope["factor"])
        scaling = 1.0
    else:
        # NOTE: llama3 / yarn: take the inverse frequencies transformers computed at init.
        inv_freq = getattr(rotary, "original_inv_freq", rotary.inv_freq).detach().float().cpu()
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
    if inv_freq.shape[0] * 2 != head_dim:
        raise ValueError("rotary dimension differs from head_dim (partial rotary) — not supported")
    positions = torch.arange(max_tokens, dtype=torch.int64).float()  # [T]
    freqs = positions[:, None] * inv_freq[None, :]  # [T, Dh/2]
    cos = torch.cat((freqs, freqs), dim=-1).cos() * scaling  # [T, Dh]
    sin_half = freqs.sin() * scaling
    # NOTE: rotate_half(x) * sin == roll(x, Dh/2) * cat(-sin, sin): one roll instead of slice, neg and cat.
    signed_sin = torch.cat((-sin_half, sin_half), dim=-1)  # [T, Dh]
    return cos, signed_sin


class LeanDecoder:
    """Llama / Qwen2 / StarCoder2 forward over a preallocated KV cache, sharing a transformers model's weights."""

    def __init__(
        self,
        *,
        arch: _Arch,
        embed: Tensor,
        embed_transposed: bool,
        layers: list[_Layer],
        final_norm_weight: Tensor,
        final_norm_bias: Tensor | None,
        lm_head: _Linear,
        cos: Tensor,
        signed_sin: Tensor,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        vocab_size: int,
        max_tokens: int,
        quantization: str,
    ) -> None:
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
        self.attention_backend, self.attention_why = select_backend(self.device)
        self.cache = KVCache(
            len(layers), num_kv_heads, max_tokens, head_dim, dtype=self.dtype, device=self.device
        )

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def from_hf(
        cls, model: Any, *, max_tokens: int = 2048, quantize: str | None = None, smooth_alpha: float | None = 0.5
    ) -> LeanDecoder:
        """Build from a loaded transformers causal LM (its device and dtype).

        Without quantization the weights are repacked (q|k|v and gate|up fused, stored input-major) and the
        transformers model's parameters are rebound to views of the repacked tensors, so memory is not
        doubled and the transformers model computes exactly what it did. With ``quantize="int8"`` (CPU only)
        the linear layers get int8 copies; embeddings and norms stay shared.
        Raises ValueError for configurations it does not implement.
        """
        config = model.config
        problem = _config_problem(config, max_tokens)
        if problem is not None:
            raise ValueError(problem)
        quantization = "none" if quantize in (None, "none") else quantize
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
        inner = model.model
        if quantization == "none":
            # NOTE: from_pretrained maps the safetensors file, and one small tensor left in that mapping (a
            # norm weight) keeps the whole file mapped next to the repacked copies (+500 MB RSS on
            # SmolLM2). Vectors (norms, biases) are copied out here; the matrices are repacked below.
            with torch.no_grad():
                for param in model.parameters():
                    if param.dim() < 2:
                        param.data = param.data.clone()
        first = next(iter(model.parameters()))
        device, dtype = first.device, first.dtype
        if quantization == "int8":
            if device.type != "cpu":
                raise ValueError("int8 dynamic quantization runs on CPU only")
            if not {"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines):
                raise ValueError("this torch build has no fbgemm/x86 quantized engine")
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        attn0 = inner.layers[0].self_attn
        if not math.isclose(float(getattr(attn0, "scaling", head_dim**-0.5)), head_dim**-0.5, rel_tol=1e-6):
            raise ValueError("attention scaling other than 1/sqrt(head_dim) is not supported")
        if config.model_type == "starcoder2":
            arch = _Arch(norm="layer", gated_mlp=False, activation=_activation(config), eps=config.norm_epsilon)
        else:
            arch = _Arch(norm="rms", gated_mlp=True, activation=_activation(config), eps=config.rms_norm_eps)

        absmax: dict[int, Tensor] = {}
        if quantization == "int8" and smooth_alpha is not None:
            calibration = torch.randint(
                0, config.vocab_size, (CALIBRATION_TOKENS,), generator=torch.Generator().manual_seed(0)
            )
            absmax = _calibrate_input_absmax(model, calibration)
        packing = _Packing(quantization, absmax, smooth_alpha)
        with torch.no_grad():
            layers = [_pack_layer(layer, arch, packing) for layer in inner.layers]
            embed_param = inner.embed_tokens.weight
            head_param = model.lm_head.weight
            tied = head_param is embed_param or head_param.data_ptr() == embed_param.data_ptr()
            lm_head: _Linear
            if quantization == "int8":
                lm_head = packing.linear([model.lm_head])
                embed, embed_transposed = embed_param.detach(), False
            else:
                head_t = _rebind_transposed(head_param)  # [D, V]
                lm_head = _Dense(head_t, _detached(getattr(model.lm_head, "bias", None)))
                if tied:
                    embed, embed_transposed = head_t, True
                else:
                    embed, embed_transposed = embed_param.detach(), False
            cos, signed_sin = _rope_tables(config, getattr(inner, "rotary_emb", None), head_dim, max_tokens)
        return cls(
            arch=arch,
            embed=embed,
            embed_transposed=embed_transposed,
            layers=layers,
            final_norm_weight=inner.norm.weight.detach(),
            final_norm_bias=_detached(getattr(inner.norm, "bias", None)),
            lm_head=lm_head,
            cos=cos.to(device=device, dtype=dtype),
            signed_sin=signed_sin.to(device=device, dtype=dtype),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            max_tokens=max_tokens,
            quantization="int8 dynamic (fbgemm, per-channel weights)" if quantization == "int8" else "none",
        )

    # ---- the forward --------------------------------------------------------------------------------

    def _norm(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.arch.norm == "rms":
            return F.rms_norm(x, (x.shape[-1],), weight, self.arch.eps)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, self.arch.eps)

    def _mlp(self, layer: _Layer, x: Tensor) -> Tensor:  # [S, D] -> [S, D]
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
    def forward(self, token_ids: Tensor, start_pos: int, *, all_logits: bool = False) -> Tensor:
        """Run ``token_ids`` [S] at cache positions ``start_pos..start_pos+S-1``, attending to ``0..start_pos+S-1``.

        Returns fp32 logits [S, V] when ``all_logits``, else [V] for the last position. Writing at a
        ``start_pos`` below what was written before overwrites (rollback / prefix reuse).
        """
        q_len = token_ids.shape[0]
        end_pos = start_pos + q_len
        if q_len == 0 or start_pos < 0 or end_pos > self.max_tokens:
            raise ValueError(f"positions {start_pos}..{end_pos - 1} outside the cache (max_tokens {self.max_tokens})")
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

    # ---- step functions -----------------------------------------------------------------------------

    def _ids(self, token_ids: list[int]) -> Tensor:
        return torch.tensor(token_ids, dtype=torch.long, device=self.device)  # [S]

    def prefill(self, token_ids: list[int], start_pos: int) -> Tensor:
        """Write ``token_ids`` from ``start_pos`` in chunks; returns the last position's logits [V]."""
        if not token_ids:
            raise ValueError("prefill needs at least one token")
        logits = torch.empty(0)
        for offset in range(0, len(token_ids), PREFILL_CHUNK_TOKENS):
            chunk = token_ids[offset : offset + PREFILL_CHUNK_TOKENS]
            logits = self.forward(self._ids(chunk), start_pos + offset)
        return logits

    def decode_one_token(self, token_id: int, pos: int) -> Tensor:
        """Logits [V] after writing ``token_id`` at ``pos``."""
        return self.forward(self._ids([token_id]), pos)

    def verify_draft(self, token_ids: list[int], start_pos: int) -> Tensor:
        """Logits [S, V] for every position of ``token_ids`` written from ``start_pos``, in one forward."""
        return self.forward(self._ids(token_ids), start_pos, all_logits=True)

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
        if end > self.max_tokens:
            raise ValueError(f"positions {start}..{end - 1} outside the cache (max_tokens {self.max_tokens})")
        self.cache.k[:, 0, :, start:end] = kv[:, 0]
        self.cache.v[:, 0, :, start:end] = kv[:, 1]


def _detached(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


_MADV_PAGEOUT = 21  # Linux >= 5.4


def _page_out(tensors: list[Tensor]) -> None:
    """Ask the kernel to drop the resident pages of tensors that are no longer used.

    NOTE: from_pretrained maps the safetensors file; the pages a repack reads stay resident until the whole
    mapping goes, so repacking every matrix would peak at file + copies (~1.4 GB for SmolLM2 in fp32).
    MADV_PAGEOUT drops clean file pages as each matrix is done (they would be read again from the file if
    touched) and is a no-op for anonymous memory without swap, so it never changes what a tensor holds."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return
    for tensor in tensors:
        if tensor.device.type != "cpu":
            continue
        storage = tensor.untyped_storage()
        start = -(-storage.data_ptr() // page) * page
        end = (storage.data_ptr() + storage.nbytes()) // page * page
        if end > start:
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)


def _rebind_transposed(param: Tensor) -> Tensor:
    """An input-major contiguous copy [K, N] of a transformers weight [N, K]; the parameter becomes its view."""
    old = param.detach()
    weight_t = old.t().contiguous()  # [K, N]
    param.data = weight_t.t()
    _page_out([old])
    return weight_t


def _rebind_fused(params: list[Tensor]) -> Tensor:
    """``cat`` of weights [N_i, K] stored input-major [K, sum N_i]; each parameter becomes a view of it."""
    old = [p.detach() for p in params]
    fused_t = torch.cat(old, dim=0).t().contiguous()  # [K, N]
    offset = 0
    for p in params:
        p.data = fused_t[:, offset : offset + p.shape[0]].t()
        offset += p.shape[0]
    _page_out(old)
    return fused_t


def _fused_bias(biases: list[Tensor | None]) -> Tensor | None:
    present = [b for b in biases if b is not None]
    if not present:
        return None
    if len(present) != len(biases):
        raise ValueError("some of the fused projections have a bias and some do not")
    return torch.cat([b.detach() for b in present])


class _Packing:
    """How ``from_hf`` packs linear layers: fp32 repacked in place, or int8 with calibrated smoothing."""

    def __init__(self, quantization: str, input_absmax: dict[int, Tensor], alpha: float | None) -> None:
        self.quantization = quantization
        self.input_absmax = input_absmax  # id(nn.Linear) -> [K]
        self.alpha = alpha

    def linear(self, modules: list[Any], *, outlier_input: bool = False) -> _Linear:
        """``outlier_input``: the MLP's down projection, whose input (act(gate) * up) has massive outliers."""
        bias = _fused_bias([getattr(m, "bias", None) for m in modules])
        if self.quantization == "int8" and not outlier_input:
            # the fused projections share their input: one set of statistics
            absmax = self.input_absmax.get(id(modules[0])) if self.alpha is not None else None
            weight = torch.cat([m.weight.detach() for m in modules], dim=0)  # [N, K]
            return _Int8Dynamic(weight, bias, absmax, self.alpha if self.alpha is not None else 0.0)
        return _Dense(_rebind_fused([m.weight for m in modules]), bias)


def _calibrate_input_absmax(model: Any, token_ids: Tensor) -> dict[int, Tensor]:
    """Per-input-channel max |x| of every ``nn.Linear`` over one forward of ``token_ids`` [S]."""
    absmax: dict[int, Tensor] = {}
    handles = []

    def record(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0].detach().abs().flatten(0, -2).amax(dim=0)  # [K]
        key = id(module)
        absmax[key] = x if key not in absmax else torch.maximum(absmax[key], x)

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(token_ids[None, :].to(next(iter(model.parameters())).device))
    finally:
        for handle in handles:
            handle.remove()
    return absmax


def _pack_layer(layer: Any, arch: _Arch, packing: _Packing) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    _pack_linear = packing.linear
    if arch.gated_mlp:
        up = _pack_linear([mlp.gate_proj, mlp.up_proj])
        down = _pack_linear([mlp.down_proj], outlier_input=True)
    else:
        up = _pack_linear([mlp.c_fc])
        down = _pack_linear([mlp.c_proj], outlier_input=True)
    return _Layer(
        norm1_weight=layer.input_layernorm.weight.detach(),
        norm1_bias=_detached(getattr(layer.input_layernorm, "bias", None)),
        qkv=_pack_linear([attn.q_proj, attn.k_proj, attn.v_proj]),
        o=_pack_linear([attn.o_proj]),
        norm2_weight=layer.post_attention_layernorm.weight.detach(),
        norm2_bias=_detached(getattr(layer.post_attention_layernorm, "bias", None)),
        up=up,
        down=down,
    )


def describe(decoder: LeanDecoder) -> dict[str, str]:
    """What ``tabfill doctor`` prints about the decoder in use."""
    return {
        "device": str(decoder.device),
        "dtype": str(decoder.dtype).removeprefix("torch."),
        "attention backend": decoder.attention_backend,
        "attention backend why": decoder.attention_why,
        "quantization": decoder.quantization,
        "kv cache": f"{decoder.max_tokens} tokens x {decoder.kv_bytes_per_token()} bytes",
    }
