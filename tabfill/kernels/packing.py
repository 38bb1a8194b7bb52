"""How the decoder holds a transformers model's weights: fp32 repacked input-major in place (the transformers
model keeps views of the same storage), and the page-out that keeps the repack from doubling memory.
Measurements: bench/RESULTS.md ("Decode step"). (Quantized weights: kernels.quant over a GGUF's blocks.)"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from tabfill.kernels.config import Arch


class Linear(Protocol):
    def __call__(self, x: Tensor) -> Tensor: ...


class Dense:
    """``x @ weight_t + bias`` with the weight stored input-major: ``weight_t`` [K, N].

    NOTE: on CPU, MKL runs a matrix-vector product on one thread. Splitting the reduction dim K into one
    slice per thread and summing a ``bmm`` over them streams all slices at once. It needs no copy: ``[K, N]``
    viewed as ``[splits, K/splits, N]``.
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


@dataclass
class Layer:
    norm1_weight: Tensor
    norm1_bias: Tensor | None
    qkv: Linear  # [S, D] -> [S, (Hq + 2 Hkv) Dh]
    o: Linear  # [S, Hq Dh] -> [S, D]
    norm2_weight: Tensor
    norm2_bias: Tensor | None
    up: Linear  # gated: [S, D] -> [S, 2 I] (gate | up); plain: [S, D] -> [S, I]
    down: Linear  # [S, I] -> [S, D]


def detached(t: Tensor | None) -> Tensor | None:
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


def rebind_transposed(param: Tensor) -> Tensor:
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


def _linear(modules: list[Any]) -> Linear:
    """The modules' weights fused (q|k|v, gate|up) and repacked input-major, their biases concatenated."""
    return Dense(_rebind_fused([m.weight for m in modules]), _fused_bias([getattr(m, "bias", None) for m in modules]))


def pack_layer(layer: Any, arch: Arch) -> Layer:
    attn, mlp = layer.self_attn, layer.mlp
    if arch.gated_mlp:
        up, down = _linear([mlp.gate_proj, mlp.up_proj]), _linear([mlp.down_proj])
    else:
        up, down = _linear([mlp.c_fc]), _linear([mlp.c_proj])
    return Layer(
        norm1_weight=layer.input_layernorm.weight.detach(),
        norm1_bias=detached(getattr(layer.input_layernorm, "bias", None)),
        qkv=_linear([attn.q_proj, attn.k_proj, attn.v_proj]),
        o=_linear([attn.o_proj]),
        norm2_weight=layer.post_attention_layernorm.weight.detach(),
        norm2_bias=detached(getattr(layer.post_attention_layernorm, "bias", None)),
        up=up,
        down=down,
    )


@dataclass
class PackedWeights:
    layers: list[Layer]
    lm_head: Linear
    embed: Tensor  # [D, V] when embed_transposed (shared with the tied fp32 lm_head), else [V, D]
    embed_transposed: bool


def pack_weights(model: Any, arch: Arch) -> PackedWeights:
    """The linear layers of a transformers causal LM packed for the decoder: repacked (q|k|v and gate|up
    fused, stored input-major) with the transformers model's parameters rebound to views of the repacked
    tensors, so memory is not doubled and the transformers model computes exactly what it did."""
    inner = model.model
    # NOTE: from_pretrained maps the safetensors file, and one small tensor left in that mapping (a norm
    # weight) keeps the whole file mapped next to the repacked copies (+500 MB RSS on SmolLM2). Vectors
    # (norms, biases) are copied out here; the matrices are repacked below.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() < 2:
                param.data = param.data.clone()
        layers = [pack_layer(layer, arch) for layer in inner.layers]
        embed_param = inner.embed_tokens.weight
        head_param = model.lm_head.weight
        tied = head_param is embed_param or head_param.data_ptr() == embed_param.data_ptr()
        head_t = rebind_transposed(head_param)  # [D, V]
        lm_head = Dense(head_t, detached(getattr(model.lm_head, "bias", None)))
        return PackedWeights(layers, lm_head, head_t if tied else embed_param.detach(), tied)
