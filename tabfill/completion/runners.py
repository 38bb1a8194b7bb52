"""The model behind the engine: one live KV sequence that forwards append to (or overwrite from) a position.

Two runners with the same small surface:
- `LeanRunner`: the kernels/ decoder (preallocated KV cache, fused weights, our attention backends), for
  the architectures it supports (Llama, Qwen2, StarCoder2); on CPU over a GGUF's own quantized blocks
  (kernels/gguf_decoder.py) when the model came from one.
- `TransformersRunner`: the transformers model itself with a DynamicCache cropped to the reuse point; the
  fallback for every other architecture and the reference twin in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:  # imported when the lean runner is made (make_runner)
    from tabfill.kernels.decoder import LeanDecoder

log = logging.getLogger(__name__)


class Runner(Protocol):
    max_tokens: int
    # bytes of KV one token holds; 0 when the runner cannot copy KV out (no prefix store then)
    kv_bytes_per_token: int

    def forward(self, token_ids: Sequence[int], start_pos: int, *, all_logits: bool = False) -> torch.Tensor:
        """Write `token_ids` at positions start_pos.. (dropping whatever was at or after start_pos) and
        return fp32 logits: [S, V] with `all_logits`, else [V] for the last position."""
        ...

    def keep(self, num_tokens: int) -> int:
        """Keep the KV of the first `num_tokens` positions for the next forward; returns how many it could
        keep (fewer when the cache cannot roll back that far, e.g. past a sliding window)."""
        ...

    def read_kv(self, start: int, end: int) -> torch.Tensor: ...

    def write_kv(self, start: int, kv: torch.Tensor) -> None: ...

    def describe(self) -> dict[str, str]: ...


class TransformersRunner:
    """transformers' own forward with a DynamicCache (cropped on rollback)."""

    kv_bytes_per_token = 0

    def __init__(self, model: Any, device: torch.device) -> None:
        from transformers import DynamicCache

        self.model = model
        self.device = device
        self.max_tokens = int(getattr(model.config, "max_position_embeddings", 0) or 32_768)
        self._cache = DynamicCache()

    def keep(self, num_tokens: int) -> int:
        from transformers import DynamicCache

        length: int = self._cache.get_seq_length()
        if num_tokens == 0:
            self._cache = DynamicCache()
        elif length > num_tokens:
            try:
                self._cache.crop(num_tokens - length)  # NOTE: transformers 5 takes the (negative) count to remove
            except (RuntimeError, ValueError) as exc:
                log.debug("cache cannot roll back to %d tokens (%s); starting over", num_tokens, exc)
                self._cache = DynamicCache()
                return 0
        return min(num_tokens, length)

    def forward(self, token_ids: Sequence[int], start_pos: int, *, all_logits: bool = False) -> torch.Tensor:
        if self.keep(start_pos) != start_pos:
            raise ValueError(f"forward at position {start_pos} but the cache holds {self._cache.get_seq_length()} tokens")
        input_ids = torch.tensor([list(token_ids)], device=self.device)  # [1, S]
        out = self.model(input_ids=input_ids, past_key_values=self._cache, use_cache=True, logits_to_keep=0 if all_logits else 1)
        self._cache = out.past_key_values
        logits: torch.Tensor = out.logits[0].float()  # [S, V]
        return logits if all_logits else logits[-1]

    def read_kv(self, start: int, end: int) -> torch.Tensor:
        raise NotImplementedError("the transformers runner does not export KV")

    def write_kv(self, start: int, kv: torch.Tensor) -> None:
        raise NotImplementedError("the transformers runner does not import KV")

    def describe(self) -> dict[str, str]:
        return {"runner": "transformers", "attention": "transformers' own", "quantization": "none"}


class LeanRunner:
    """The kernels/ decoder: preallocated KV slot of `max_tokens` positions."""

    def __init__(self, decoder: LeanDecoder) -> None:
        self.decoder = decoder
        self.max_tokens = int(decoder.max_tokens)
        self.kv_bytes_per_token = int(decoder.kv_bytes_per_token())

    def forward(self, token_ids: Sequence[int], start_pos: int, *, all_logits: bool = False) -> torch.Tensor:
        # the decoder checks the positions against its slot (ValueError) and returns fp32 logits
        return self.decoder.forward(token_ids, start_pos, all_logits=all_logits)

    def keep(self, num_tokens: int) -> int:
        return num_tokens  # positions past the written length are never attended

    def read_kv(self, start: int, end: int) -> torch.Tensor:
        return self.decoder.read_kv(start, end)

    def write_kv(self, start: int, kv: torch.Tensor) -> None:
        self.decoder.write_kv(start, kv)

    def describe(self) -> dict[str, str]:
        from tabfill.kernels import describe

        return {"runner": "lean", **describe(self.decoder)}


def make_runner(model: Any, device: torch.device, *, max_tokens: int, quantize: str | None, lean: bool = True) -> Runner:
    """The lean decoder when the architecture is supported (and it builds), else transformers.

    `model` is a transformers model, or a `GgufWeights` (models.load_model's quantized path): then the lean
    decoder computes from the GGUF's blocks, unless quantize "none" or the transformers forward asks for the
    fp32 model (loaded then from the GGUF's conversion). The fbgemm int8 mode is retired (its greedy answers
    differed on ~13 % of positions): the GGUF path is both faster and exact."""
    from tabfill.completion.gguf_models import GgufWeights

    if isinstance(model, GgufWeights):
        if lean and quantize not in (None, "none"):
            from tabfill.kernels.gguf_decoder import decoder_from_gguf

            return LeanRunner(decoder_from_gguf(model.path, model.config, max_tokens=max_tokens))
        model = model.transformers_model()
    if lean:
        try:
            from tabfill.kernels import LeanDecoder, supports

            if supports(model.config):
                return LeanRunner(LeanDecoder.from_hf(model, max_tokens=max_tokens))
            log.info("model type %r has no lean forward; using transformers", getattr(model.config, "model_type", "?"))
        except (ImportError, ValueError, NotImplementedError) as exc:
            log.warning("lean forward unavailable (%s); using transformers", exc)
    return TransformersRunner(model, device)
