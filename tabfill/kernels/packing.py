"""How the decoder holds its weights: fp32 repacked input-major in place (the transformers model keeps views
of the same storage), or int8 per-channel with SmoothQuant-style smoothing; and the page-out that keeps the
repack from doubling memory. Measurements: bench/RESULTS.md ("Decode step")."""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from tabfill.kernels.config import Arch

CALIBRATION_TOKENS = 128  # int8: one forward over fixed random tokens to find the outlier input channels


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


class Int8Dynamic:
    """int8 per-output-channel weights, activations quantized per call (fbgemm ``linear_dynamic``).

    NOTE: a few input channels carry outlier activations, which per-token activation quantization alone
    cannot represent. SmoothQuant-style smoothing: input channel ``j`` is divided by
    ``s_j = amax_x_j ** alpha / amax_w_j ** (1 - alpha)`` before quantization and the weight's column
    multiplied by it, with ``amax_x`` from a calibration forward.
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
        out: Tensor = torch.ops.quantized.linear_dynamic(x, self.packed, True)
        return out.to(self.out_dtype)


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


class Packing:
    """How ``from_hf`` packs linear layers: fp32 repacked in place, or int8 with calibrated smoothing."""

    def __init__(self, quantization: str, input_absmax: dict[int, Tensor], alpha: float | None) -> None:
        self.quantization = quantization
        self.input_absmax = input_absmax  # id(nn.Linear) -> [K]
        self.alpha = alpha

    def linear(self, modules: list[Any], *, outlier_input: bool = False) -> Linear:
        """``outlier_input``: the MLP's down projection, whose input (act(gate) * up) has massive outliers."""
        bias = _fused_bias([getattr(m, "bias", None) for m in modules])
        if self.quantization == "int8" and not outlier_input:
            # the fused projections share their input: one set of statistics
            absmax = self.input_absmax.get(id(modules[0])) if self.alpha is not None else None
            weight = torch.cat([m.weight.detach() for m in modules], dim=0)  # [N, K]
            return Int8Dynamic(weight, bias, absmax, self.alpha if self.alpha is not None else 0.0)
        return Dense(_rebind_fused([m.weight for m in modules]), bias)


def calibrate_input_absmax(model: Any, token_ids: Tensor) -> dict[int, Tensor]:
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


def pack_layer(layer: Any, arch: Arch, packing: Packing) -> Layer:
    attn, mlp = layer.self_attn, layer.mlp
    _pack_linear = packing.linear
    if arch.gated_mlp:
        up = _pack_linear([mlp.gate_proj, mlp.up_proj])
        down = _pack_linear([mlp.down_proj], outlier_input=True)
    else:
        up = _pack_linear([mlp.c_fc])
        down = _pack_linear([mlp.c_proj], outlier_input=True)
    return Layer(
        norm1_weight=layer.input_layernorm.weight.detach(),
        norm1_bias=detached(getattr(layer.input_layernorm, "bias", None)),
        qkv=_pack_linear([attn.q_proj, attn.k_proj, attn.v_proj]),
        o=_pack_linear([attn.o_proj]),
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


def pack_weights(model: Any, arch: Arch, quantization: str, smooth_alpha: float | None) -> PackedWeights:
    """The linear layers of a transformers causal LM packed for the decoder ("none" or "int8").

    "none": the weights are repacked (q|k|v and gate|up fused, stored input-major) and the transformers
    model's parameters are rebound to views of the repacked tensors, so memory is not doubled and the
    transformers model computes exactly what it did. "int8" (CPU only): int8 copies of the linear layers but
    the MLP down projections (their input has massive outliers); embeddings and norms stay shared."""
    inner = model.model
    if quantization == "none":
        # NOTE: from_pretrained maps the safetensors file, and one small tensor left in that mapping (a
        # norm weight) keeps the whole file mapped next to the repacked copies (+500 MB RSS on
        # SmolLM2). Vectors (norms, biases) are copied out here; the matrices are repacked below.
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() < 2:
                    param.data = param.data.clone()
    absmax: dict[int, Tensor] = {}
    if quantization == "int8" and smooth_alpha is not None:
        calibration = torch.randint(0, model.config.vocab_size, (CALIBRATION_TOKENS,), generator=torch.Generator().manual_seed(0))
        absmax = calibrate_input_absmax(model, calibration)
    packing = Packing(quantization, absmax, smooth_alpha)
    with torch.no_grad():
        layers = [pack_layer(layer, arch, packing) for layer in inner.layers]
        embed_param = inner.embed_tokens.weight
        head_param = model.lm_head.weight
        if quantization == "int8":
            return PackedWeights(layers, packing.linear([model.lm_head]), embed_param.detach(), False)
        tied = head_param is embed_param or head_param.data_ptr() == embed_param.data_ptr()
        head_t = rebind_transposed(head_param)  # [D, V]
        lm_head = Dense(head_t, detached(getattr(model.lm_head, "bias", None)))
        return PackedWeights(layers, lm_head, head_t if tied else embed_param.detach(), tied)
