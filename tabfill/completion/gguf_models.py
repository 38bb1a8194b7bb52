"""Models computed from their GGUF file's own blocks (quantize auto|gguf on CPU): finding the GGUF a model
spec comes from, and loading only its config and tokenizer (`GgufWeights` stands where a transformers model
would; completion.runners builds the kernels' GGUF decoder from it)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabfill.completion.atomic import move_atomic
from tabfill.completion.models import (
    DEFAULT_ALIASES, DEFAULT_MODEL, KEPT_GGUF, SPLIT_PRESETS, LoadedModel, ModelError, ProgressFn, _config,
    _gguf_cache_dir, _is_converted, _no_progress, default_model_dir, fetch_default_gguf, gguf_problem, preset_dir, preset_gguf,
    pull_default, write_manifest,
)

log = logging.getLogger(__name__)


def default_gguf(progress: ProgressFn = _no_progress) -> Path:
    """The default model's GGUF, kept by `pull_default` (fetched again for a pull that predates keeping it)."""
    target = pull_default(progress)
    kept = target / KEPT_GGUF
    if not kept.is_file():
        with tempfile.TemporaryDirectory(prefix="tabfill-pull-") as tmp:
            move_atomic(fetch_default_gguf(Path(tmp), progress), kept)
        write_manifest(target)  # the conversion now includes the kept file: record its size
    return kept


@dataclass(frozen=True)
class GgufWeights:
    """A model left in its GGUF file (what `LoadedModel.model` holds on the quantized path)."""

    config: Any
    path: Path
    converted: str | None  # a safetensors directory of the same weights, for the fp32 runners
    generation_config: Any = None  # what a transformers model would carry (the engine reads its eos ids)

    def transformers_model(self) -> Any:
        """The fp32 transformers model of the same weights (for quantize "none" or the transformers forward)."""
        import torch
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        if self.converted is None:
            raise ModelError(f"{self.path.name} has no fp32 conversion; set quantize to none to convert and load one")
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(self.config)].from_pretrained(self.converted, dtype=torch.float32).eval()


def gguf_source(spec: str, progress: ProgressFn = _no_progress) -> tuple[Path, str | None] | None:
    """The GGUF file a model spec comes from and its converted directory (None: not converted), if any."""
    spec = spec.strip() or DEFAULT_MODEL
    if spec.lower() in DEFAULT_ALIASES:
        return default_gguf(progress), str(default_model_dir())
    if spec.lower() in SPLIT_PRESETS:
        assembled = preset_gguf(spec, progress)
        converted = preset_dir(spec.lower())
        return (assembled, str(converted) if _is_converted(converted) else None) if assembled else None
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        converted = _gguf_cache_dir(path)
        return path, str(converted) if _is_converted(converted) else None
    if path.is_dir():
        if (path / KEPT_GGUF).is_file():
            return path / KEPT_GGUF, str(path) if _is_converted(path) else None
        try:
            recorded = Path(json.loads((path / "tabfill-source.json").read_text())["gguf"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if recorded.is_absolute() and recorded.is_file():
            return recorded, str(path) if _is_converted(path) else None
    return None


def load_gguf(spec: str, progress: ProgressFn) -> LoadedModel:
    from tabfill.kernels.gguf_decoder import GGUF_ARCHITECTURES
    from tabfill.kernels.quant import kernels_available

    built, why = kernels_available()
    if not built:
        raise ModelError(why)
    found = gguf_source(spec, progress)
    if found is None:
        raise ModelError(f"model {spec!r} has no GGUF file to compute from")
    gguf, converted = found
    problem = gguf_problem(gguf)
    if problem is not None:
        raise ModelError(problem)
    progress(f"mapping {gguf.name}", 0.9)
    config, import_ms = _config(converted or str(gguf), None if converted else gguf)
    if config.model_type not in GGUF_ARCHITECTURES.values():
        raise ModelError(f"model type {config.model_type!r} has no quantized runner (only {', '.join(GGUF_ARCHITECTURES)})")
    started = time.perf_counter()
    try:
        from transformers import AutoTokenizer

        if converted:
            tokenizer = AutoTokenizer.from_pretrained(converted)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer of {gguf}: {exc}") from exc
    load_ms = (time.perf_counter() - started) * 1000.0
    log.info("mapped %s (config from %s) in %.0f ms", gguf, converted or "the GGUF", load_ms)
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(converted) if converted else GenerationConfig.from_model_config(config)
    except OSError:  # a conversion without generation_config.json
        generation = GenerationConfig.from_model_config(config)
    return LoadedModel(GgufWeights(config, gguf, converted, generation), tokenizer, "cpu", "float32", str(gguf), load_ms, import_ms)
