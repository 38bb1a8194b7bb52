"""The converted GGUF's config.json read without transformers (gguf_models.JsonConfig): what the kernels and
the engine read equals what transformers' config gives, defaults included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabfill.completion.gguf_models import CONFIG_DEFAULTS, JsonConfig, json_generation
from tabfill.completion.models import ModelError
from tabfill.kernels.config import arch_of, config_problem, rope_parameters, sliding_window

SHAPES = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100}


def write(directory: Path, **values: object) -> Path:
    (directory / "config.json").write_text(json.dumps(values))
    return directory


def read_by_the_kernels(config: object) -> dict[str, object]:
    """Every value the kernels and the engine take from a config."""
    return {
        "arch": arch_of(config), "rope": rope_parameters(config), "window": sliding_window(config),
        "problem": config_problem(config, 1024),
        **{name: getattr(config, name, None) for name in (
            "model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
            "vocab_size", "rms_norm_eps", "hidden_act", "tie_word_embeddings", "eos_token_id",
        )},
    }


@pytest.mark.parametrize("model_type", sorted(CONFIG_DEFAULTS))
@pytest.mark.parametrize("rope", [{}, {"rope_theta": 500000.0}, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}])
def test_a_sparse_config_reads_as_transformers_reads_it(tmp_path: Path, model_type: str, rope: dict[str, object]) -> None:
    from transformers import AutoConfig

    directory = write(tmp_path, model_type=model_type, eos_token_id=7, **SHAPES, **rope)
    assert read_by_the_kernels(JsonConfig.from_directory(directory)) == read_by_the_kernels(AutoConfig.from_pretrained(directory))


def test_a_config_the_quantized_runner_cannot_take_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model type 'gpt2' has no quantized runner"):
        JsonConfig.from_directory(write(tmp_path, model_type="gpt2", **SHAPES))
    with pytest.raises(ModelError, match="does not give vocab_size"):
        JsonConfig.from_directory(write(tmp_path, model_type="llama", **{**SHAPES, "vocab_size": None}))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="could not read"):
        JsonConfig.from_directory(tmp_path)


def test_eos_ids_come_from_generation_config_else_the_config(tmp_path: Path) -> None:
    config = JsonConfig.from_directory(write(tmp_path, model_type="llama", eos_token_id=2, **SHAPES))
    assert json_generation(tmp_path, config).eos_token_id == 2
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    assert json_generation(tmp_path, config).eos_token_id == [2, 5]
