"""Model kernels: attention with backends and a lean decoder forward (torch only; xformers when present)."""

from tabfill.kernels.attention import BACKENDS, attention, select_backend
from tabfill.kernels.config import supports
from tabfill.kernels.decoder import KVCache, LeanDecoder, describe

__all__ = ["BACKENDS", "KVCache", "LeanDecoder", "attention", "describe", "select_backend", "supports"]
