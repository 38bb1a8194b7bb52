"""Models computed from their GGUF file's own blocks (quantize auto|gguf on CPU): finding the GGUF a model
spec comes from, and loading only its config and tokenizer (`GgufWeights` stands where a transformers model
would; completion.runners builds the kernels' GGUF decoder from it).

A GGUF that `tabfill model pull` converted has its config.json and tokenizer.json beside the conversion: they
are read here without transformers (`JsonConfig`, tokenizer_file.FileTokenizer). NOTE: measured in `tabfill
serve`, importing transformers and resolving a config through it cost ~80 MiB of resident memory (its
config modules pull in torch.distributed, sympy and accelerate), its tokenizer ~15 MiB more than the Rust
tokenizer alone; only a GGUF never converted still reads its metadata through transformers."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
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


# What transformers' LlamaConfig / Qwen2Config default to for the fields the kernels and the engine read, when
# a config.json leaves them out (tests/unit/completion/test_gguf_config.py checks them against transformers).
CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False},
    "qwen2": {"rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False,
              "sliding_window": None, "num_key_value_heads": 32},  # (sic: Qwen2Config's default, not the head count)
}
CONFIG_REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")


class JsonConfig(SimpleNamespace):
    """A Llama/Qwen2 config.json as attributes, with transformers' defaults for what it leaves out."""

    @staticmethod
    def from_directory(directory: Path) -> JsonConfig:
        path = directory / "config.json"
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"could not read {path}: {exc}") from exc
        if not isinstance(values, dict) or values.get("model_type") not in CONFIG_DEFAULTS:
            kind = values.get("model_type") if isinstance(values, dict) else None
            raise ModelError(f"{path}: model type {kind!r} has no quantized runner (only {', '.join(CONFIG_DEFAULTS)})")
        missing = [name for name in CONFIG_REQUIRED if not isinstance(values.get(name), int)]
        if missing:
            raise ModelError(f"{path} does not give {', '.join(missing)}")
        merged = {**CONFIG_DEFAULTS[values["model_type"]], **values}
        merged.setdefault("num_key_value_heads", merged["num_attention_heads"])
        if not isinstance(merged.get("rope_parameters"), dict):  # a transformers 4 config: rope_theta, rope_scaling
            scaling = merged.get("rope_scaling") or {}
            merged["rope_parameters"] = {"rope_type": "default", **scaling, "rope_theta": float(merged.get("rope_theta", 10000.0))}
        return JsonConfig(**merged)


def json_generation(directory: Path, config: Any) -> SimpleNamespace:
    """The eos ids a transformers GenerationConfig would carry: generation_config.json's, else the config's."""
    path = directory / "generation_config.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not read {path}: {exc}") from exc
    eos = values.get("eos_token_id") if isinstance(values, dict) else None
    return SimpleNamespace(eos_token_id=eos if eos is not None else getattr(config, "eos_token_id", None))


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
        from transformers import AutoModelForCausalLM

        if self.converted is None:
            raise ModelError(f"{self.path.name} has no fp32 conversion; set quantize to none to convert and load one")
        return AutoModelForCausalLM.from_pretrained(self.converted, dtype=torch.float32).eval()


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
    if converted:  # a whole conversion has its config.json and tokenizer.json (models.CONVERTED_FILES)
        return _load_converted(gguf, Path(converted))
    return _load_through_transformers(gguf)


def _load_converted(gguf: Path, converted: Path) -> LoadedModel:
    """config.json, generation_config.json and tokenizer.json of the conversion, without transformers."""
    from tabfill.completion.tokenizer_file import FileTokenizer, TokenizerFileError

    started = time.perf_counter()
    config = JsonConfig.from_directory(converted)
    try:
        tokenizer = FileTokenizer.from_directory(converted)
    except TokenizerFileError as exc:
        raise ModelError(str(exc)) from exc
    generation = json_generation(converted, config)
    load_ms = (time.perf_counter() - started) * 1000.0
    log.info("mapped %s (config and tokenizer from %s) in %.0f ms", gguf, converted, load_ms)
    return LoadedModel(GgufWeights(config, gguf, str(converted), generation), tokenizer, "cpu", "float32", str(gguf), load_ms)


def _load_through_transformers(gguf: Path) -> LoadedModel:
    """A GGUF never converted: its config and tokenizer from its own metadata (transformers reads them)."""
    from tabfill.kernels.gguf_decoder import GGUF_ARCHITECTURES

    config, import_ms = _config(str(gguf), gguf)
    if config.model_type not in GGUF_ARCHITECTURES.values():
        raise ModelError(f"model type {config.model_type!r} has no quantized runner (only {', '.join(GGUF_ARCHITECTURES)})")
    started = time.perf_counter()
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer of {gguf}: {exc}") from exc
    load_ms = (time.perf_counter() - started) * 1000.0
    log.info("mapped %s (config from the GGUF) in %.0f ms", gguf, load_ms)
    from transformers import GenerationConfig

    generation = GenerationConfig.from_model_config(config)
    return LoadedModel(GgufWeights(config, gguf, None, generation), tokenizer, "cpu", "float32", str(gguf), load_ms, import_ms)
