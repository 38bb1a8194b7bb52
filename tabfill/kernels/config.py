"""What the lean decoder can run: checks of a transformers config, and its rotary tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "starcoder2")

# rope types whose tables do not depend on the sequence length (the cache keeps rotated keys).
_STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class Arch:
    norm: str  # "rms" | "layer"
    gated_mlp: bool
    activation: str  # "silu" | "gelu" | "gelu_tanh"
    eps: float


def arch_of(config: Any) -> Arch:
    """The norm, MLP and activation of a supported model type."""
    if config.model_type == "starcoder2":
        return Arch(norm="layer", gated_mlp=False, activation=activation(config), eps=config.norm_epsilon)
    return Arch(norm="rms", gated_mlp=True, activation=activation(config), eps=config.rms_norm_eps)


def rope_parameters(config: Any) -> dict[str, Any]:
    """``{"rope_type": ..., "rope_theta": ..., ...}`` from a transformers 5 or 4 config."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return {"rope_type": params.get("rope_type", params.get("type", "default")), **params}
    if isinstance(params, dict) and params:
        raise ValueError("per-layer-type rope parameters are not supported")
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = getattr(config, "rope_theta", 10000.0)
    return {"rope_type": scaling.get("rope_type", scaling.get("type", "default")), "rope_theta": theta, **scaling}


def activation(config: Any) -> str:
    act = getattr(config, "hidden_act", None)
    if act == "silu":
        return "silu"
    if act in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        return "gelu_tanh"
    if act == "gelu":
        return "gelu"
    raise ValueError(f"activation {act!r} is not supported")


def config_problem(config: Any, max_tokens: int | None = None) -> str | None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    try:
        rope = rope_parameters(config)
        activation(config)
    except ValueError as exc:
        return str(exc)
    if rope["rope_type"] not in _STATIC_ROPE_TYPES:
        return f"rope type {rope['rope_type']!r} is not supported (its tables depend on the sequence length)"
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embeddings are not supported"
    window = sliding_window(config)
    if window is not None and max_tokens is not None and max_tokens > window:
        return f"sliding window {window} is smaller than max_tokens {max_tokens}; not implemented"
    return None


def sliding_window(config: Any) -> int | None:
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
    return config_problem(config) is None


def rope_tables(config: Any, rotary: Any, head_dim: int, max_tokens: int) -> tuple[Tensor, Tensor]:
    """cos and signed sin [max_tokens, Dh] in fp32, as transformers computes them (``rotate_half`` layout)."""
    rope = rope_parameters(config)
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
