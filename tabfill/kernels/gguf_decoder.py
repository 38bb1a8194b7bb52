"""The lean decoder built straight from a GGUF file, its matrices left in the file's quantized blocks.

`decoder_from_gguf` memory-maps the file (gguf-py's reader) and wraps every matrix as a `QuantTensor` over
the mapped bytes: nothing is dequantized or copied at load except the norm vectors, the biases and (for
Llama) the q/k rows, which GGUF stores in an interleaved rotary order and are put back in the order the
decoder's rotary uses (a row permutation of whole blocks: exact). Resident memory is the file's pages that
are touched plus the KV cache.

``dequantized=True`` builds the same decoder over fp32 copies of the dequantized matrices (the reference
twin of the whole model: with ``kv_dtype=torch.float32``, what transformers' GGUF conversion computes).

Keys and values are kept as fp16 by default (``kv_dtype``), as llama.cpp keeps them: half the memory of a KV
slot and half the bytes a decode step's attention reads (docs/DESIGN.md says what it measured).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tabfill.kernels.config import arch_of, config_problem, rope_parameters, rope_tables
from tabfill.kernels.decoder import KVCache, LeanDecoder
from tabfill.kernels.packing import Dense, Layer
from tabfill.kernels.quant import (
    BLOCKS, STEP_MAX_TOKENS, DecodeStep, QuantError, QuantLinear, QuantTensor, StepLayer, dequantize, dequantize_rows,
)

GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}  # GGUF general.architecture -> transformers model_type


class GgufDecoder(LeanDecoder):
    """LeanDecoder whose embedding rows are dequantized on lookup from the GGUF's token_embd blocks, and whose
    narrow forwards (a decode step, a draft's verification: up to STEP_MAX_TOKENS tokens) run whole in one C
    call (`DecodeStep`) when its matrices are the GGUF's blocks."""

    def __init__(self, *, token_embd: QuantTensor | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token_embd = token_embd
        self.step = self.decode_step(self.cache) if self.cache.k.shape[3] else None

    def decode_step(self, cache: KVCache) -> DecodeStep | None:
        """The whole-step C call over ``cache`` (this decoder's own, or a batch's slot pool), when the
        decoder's shape allows it."""
        linears = [m for layer in self.layers for m in (layer.qkv, layer.o, layer.up, layer.down)] + [self.lm_head]
        arch = self.arch
        if self.token_embd is None or not all(isinstance(m, QuantLinear) for m in linears):
            return None
        if (arch.norm, arch.gated_mlp, arch.activation) != ("rms", True, "silu"):
            return None
        layers = [
            StepLayer(layer.norm1_weight.float().contiguous(), layer.norm2_weight.float().contiguous(), layer.qkv, layer.o, layer.up, layer.down)  # type: ignore[arg-type]
            for layer in self.layers
        ]
        return DecodeStep(
            layers=layers, final_norm=self.final_norm_weight.float().contiguous(), head=self.lm_head,  # type: ignore[arg-type]
            embed=self.token_embd, heads=self.num_heads, kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            eps=arch.eps, cos=self.cos.contiguous(), signed_sin=self.signed_sin.contiguous(), k_cache=cache.k,
            v_cache=cache.v,
        )

    @torch.no_grad()
    def forward(self, token_ids: Tensor | Sequence[int], start_pos: int, *, all_logits: bool = False) -> Tensor:
        n = len(token_ids)
        if self.step is None or not 0 < n <= STEP_MAX_TOKENS or start_pos < 0 or start_pos + n > self.step.max_tokens:
            return super().forward(token_ids, start_pos, all_logits=all_logits)
        tokens = [int(t) for t in token_ids]
        logits = self.step.rows(tokens, range(start_pos, start_pos + n), [0] * n, None if all_logits else [n - 1])
        return logits if all_logits else logits[0]

    def _embed(self, token_ids: Tensor) -> Tensor:  # [S] -> [S, D]
        if self.token_embd is None:
            return super()._embed(token_ids)
        return dequantize_rows(self.token_embd, token_ids)


class GgufFile:
    """The tensors of a GGUF file by name, as `QuantTensor` views of the memory-mapped file (gguf_index: the
    header only, no metadata values made into objects)."""

    def __init__(self, path: str | Path) -> None:
        from tabfill.kernels.gguf_index import read_index

        try:
            values, self.tensors = read_index(path)
        except (OSError, ValueError) as exc:
            raise QuantError(f"cannot read GGUF {path}: {exc}") from exc
        self.path = Path(path)
        architecture = values.get("general.architecture")
        self.architecture = architecture if isinstance(architecture, str) else "?"

    def _array(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise QuantError(f"{self.path.name} has no tensor {name!r}")
        return np.asarray(self.tensors[name].data)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def vector(self, name: str) -> Tensor:
        """An fp32 copy of a 1-D tensor (norms, biases)."""
        kind = int(self.tensors[name].tensor_type) if name in self.tensors else -1
        if kind not in (0, 1):
            raise QuantError(f"{name}: expected an F32/F16 vector, got type {kind}")
        return torch.from_numpy(self._array(name).astype(np.float32))

    def matrix(self, name: str) -> QuantTensor:
        """A matrix [rows, cols] over the mapped bytes (no copy)."""
        array = self._array(name)
        kind = int(self.tensors[name].tensor_type)
        if kind not in BLOCKS:
            raise QuantError(f"{name}: GGML type {self.tensors[name].tensor_type.name} is not supported")
        cols = int(self.tensors[name].shape[0])
        rows = array.shape[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the mapping is read-only; nothing writes to it
            data = torch.from_numpy(array.reshape(rows, -1).view(np.uint8))
        return QuantTensor(kind, rows, cols, data)

    def weight_types(self) -> dict[str, int]:
        """How many matrices of each type (for `describe`)."""
        counts: dict[str, int] = {}
        for tensor in self.tensors.values():
            if len(tensor.shape) == 2:
                counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        return counts


def _unpermute_rotary_rows(tensor: QuantTensor, heads: int) -> QuantTensor:
    """Undo llama.cpp's q/k row permutation (pairs (2i, 2i+1) of each head -> halves i, i + Dh/2)."""
    half = tensor.rows // heads // 2
    index = torch.arange(tensor.rows).view(heads, half, 2).transpose(1, 2).reshape(-1)
    return tensor.select_rows(index)


def decoder_from_gguf(
    path: str | Path, config: Any, *, max_tokens: int = 2048, dequantized: bool = False, cache_tokens: int | None = None,
    kv_dtype: torch.dtype = torch.float16,
) -> GgufDecoder:
    """A decoder for a Llama/Qwen2 GGUF with the transformers ``config`` (its shapes checked against the file).
    ``cache_tokens``, ``kv_dtype``: as for LeanDecoder (0: the KV lives in a batched decoder's slot pool).

    Raises QuantError (a ValueError) for what it does not implement or a file that does not match.
    """
    problem = config_problem(config, max_tokens)
    if problem is not None:
        raise QuantError(problem)
    gguf = GgufFile(path)
    model_type = GGUF_ARCHITECTURES.get(gguf.architecture)
    if model_type is None or model_type != config.model_type:
        raise QuantError(f"GGUF architecture {gguf.architecture!r} does not match model type {config.model_type!r}")
    if rope_parameters(config)["rope_type"] not in ("default", "linear"):
        raise QuantError("only default and linear rotary scaling are implemented for GGUF weights")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    def linear(names: list[str], permute: dict[str, int] | None = None) -> Any:
        parts = [gguf.matrix(name) for name in names]
        if permute:
            parts = [_unpermute_rotary_rows(p, permute[n]) if n in permute else p for p, n in zip(parts, names)]
        biases = [n.removesuffix(".weight") + ".bias" for n in names]
        bias = torch.cat([gguf.vector(b) for b in biases]) if all(gguf.has(b) for b in biases) else None
        if any(gguf.has(b) for b in biases) and bias is None:
            raise QuantError(f"only some of {names} have a bias")
        if dequantized:
            weight = torch.cat([dequantize(p) for p in parts], dim=0)  # [N, K]
            return Dense(weight.t().contiguous(), bias)
        return QuantLinear(parts, bias)

    permute = None
    if gguf.architecture == "llama":
        permute = {"q": heads, "k": kv_heads}
    layers = []
    for i in range(config.num_hidden_layers):
        p = f"blk.{i}."
        qkv_names = [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
        layers.append(
            Layer(
                norm1_weight=gguf.vector(p + "attn_norm.weight"),
                norm1_bias=None,
                qkv=linear(qkv_names, None if permute is None else {qkv_names[0]: permute["q"], qkv_names[1]: permute["k"]}),
                o=linear([p + "attn_output.weight"]),
                norm2_weight=gguf.vector(p + "ffn_norm.weight"),
                norm2_bias=None,
                up=linear([p + "ffn_gate.weight", p + "ffn_up.weight"]),
                down=linear([p + "ffn_down.weight"]),
            )
        )
    embed = gguf.matrix("token_embd.weight")
    if (embed.rows, embed.cols) != (config.vocab_size, config.hidden_size):
        raise QuantError(f"token_embd is {embed.rows}x{embed.cols}, the config says {config.vocab_size}x{config.hidden_size}")
    head_name = "output.weight" if gguf.has("output.weight") else "token_embd.weight"
    cos, signed_sin = rope_tables(config, None, head_dim, max_tokens)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(gguf.weight_types().items()))
    return GgufDecoder(
        token_embd=None if dequantized else embed,
        arch=arch_of(config),
        embed=dequantize(embed) if dequantized else torch.empty(0, config.hidden_size),
        embed_transposed=False,
        layers=layers,
        final_norm_weight=gguf.vector("output_norm.weight"),
        final_norm_bias=None,
        lm_head=linear([head_name]),
        cos=cos,
        signed_sin=signed_sin,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=config.vocab_size,
        max_tokens=max_tokens,
        cache_tokens=cache_tokens,
        kv_dtype=kv_dtype,
        quantization=f"gguf dequantized to fp32 ({kinds})" if dequantized else f"gguf blocks ({kinds})",
    )

