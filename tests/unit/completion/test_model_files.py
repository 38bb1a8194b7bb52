"""A converted model is whole or converted again (saying why); a cut or damaged model file is one clear
error naming it. Small files made here, never the real model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tabfill.completion import models
from tabfill.completion.models import (
    KEPT_GGUF, MANIFEST, ModelError, conversion_problem, gguf_problem, resolve_model, safetensors_problem, write_manifest,
)


def write_safetensors(path: Path, values: int = 64) -> Path:
    """A valid safetensors file of one float32 tensor (the format: 8-byte header size, JSON header, data)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [values], "data_offsets": [0, 4 * values]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + np.arange(values, dtype=np.float32).tobytes())
    return path


def write_gguf(path: Path) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def converted(directory: Path, gguf: bool = False) -> Path:
    """A conversion as `convert_gguf` leaves it (tiny files), manifest last."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "tokenizer.json").write_text("{}")
    write_safetensors(directory / "model.safetensors")
    if gguf:
        write_gguf(directory / KEPT_GGUF)
    write_manifest(directory)
    return directory


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_whole_conversion_passes_and_a_cut_file_says_which(tmp_path: Path) -> None:
    directory = converted(tmp_path / "m", gguf=True)
    assert json.loads((directory / MANIFEST).read_text())["files"]["model.safetensors"] == (directory / "model.safetensors").stat().st_size
    assert conversion_problem(directory) is None
    cut(directory / KEPT_GGUF)
    problem = conversion_problem(directory)
    assert problem is not None and KEPT_GGUF in problem and "the conversion wrote" in problem
    (directory / MANIFEST).write_text('{"files": ')  # a damaged manifest
    assert "damaged" in (conversion_problem(directory) or "")


def test_a_conversion_from_before_manifests_is_checked_by_its_own_headers(tmp_path: Path) -> None:
    directory = converted(tmp_path / "old", gguf=True)
    (directory / MANIFEST).unlink()
    assert conversion_problem(directory) is None and (directory / MANIFEST).is_file()  # whole: adopted
    (directory / MANIFEST).unlink()
    cut(directory / "model.safetensors", 0.9)
    assert "model.safetensors is truncated" in (conversion_problem(directory) or "")
    write_safetensors(directory / "model.safetensors")
    cut(directory / KEPT_GGUF, 0.7)
    assert f"GGUF file {directory / KEPT_GGUF} is truncated or damaged" in (conversion_problem(directory) or "")
    assert not (directory / MANIFEST).exists()


def test_safetensors_and_gguf_checks_name_the_file(tmp_path: Path) -> None:
    tensors = write_safetensors(tmp_path / "w.safetensors")
    gguf = write_gguf(tmp_path / "w.gguf")
    assert safetensors_problem(tensors) is None and gguf_problem(gguf) is None
    for keep in (0.0, 0.001, 0.5, 0.99):
        cut(tensors, keep)
        assert str(tensors) in (safetensors_problem(tensors) or "")
        write_safetensors(tensors)
        cut(gguf, keep)
        assert str(gguf) in (gguf_problem(gguf) or "")
        write_gguf(gguf)
    tensors.write_bytes((8).to_bytes(8, "little") + b"not json")
    assert "damaged" in (safetensors_problem(tensors) or "")


def test_a_cut_user_gguf_is_one_clear_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "cache"))
    gguf = write_gguf(tmp_path / "mine.gguf")
    cut(gguf)
    with pytest.raises(ModelError, match=f"GGUF file {gguf} is truncated or damaged"):
        resolve_model(str(gguf))
    with pytest.raises(ModelError, match=f"GGUF file {gguf} is truncated or damaged"):
        models.load_model(str(gguf), "cpu", quantize="auto")
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_a_conversion_cut_short_is_converted_again_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "cache"))
    gguf = write_gguf(tmp_path / "mine.gguf")
    target = converted(models._gguf_cache_dir(gguf))
    conversions: list[Path] = []
    monkeypatch.setattr(models, "convert_gguf", lambda gguf, into, progress, **_: conversions.append(into) or into)
    said: list[str] = []
    assert resolve_model(str(gguf), lambda stage, _fraction: said.append(stage)) == str(target)
    assert conversions == [] and said == []  # whole: used as it is
    cut(target / "model.safetensors")
    resolve_model(str(gguf), lambda stage, _fraction: said.append(stage))
    assert conversions == [target]
    assert len(said) == 1 and "model.safetensors" in said[0] and "converting again" in said[0]


def test_the_default_model_not_whole_says_why_and_how_to_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "cache"))
    target = converted(models.default_model_dir(), gguf=True)
    assert resolve_model("default", allow_pull=False) == str(target)
    cut(target / KEPT_GGUF)
    with pytest.raises(ModelError, match=r"model.gguf is .* bytes; the conversion wrote .*not whole: run `tabfill model pull`"):
        resolve_model("default", allow_pull=False)


def test_a_staging_folder_left_by_a_killed_conversion_is_removed_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "models" / "m"
    target.parent.mkdir(parents=True)
    old, fresh = target.with_name("m" + models.STAGING + "old"), target.with_name("m" + models.STAGING + "fresh")
    for folder in (old, fresh):
        folder.mkdir()
        write_safetensors(folder / "model.safetensors")  # the half-written files a kill leaves
    hours_ago = time.time() - 2 * models.STAGING_MAX_AGE_S
    os.utime(old, (hours_ago, hours_ago))
    models._remove_stale_staging(target)
    assert not old.exists() and fresh.exists()  # a recent one may be another process's conversion in progress
    assert conversion_problem(target) is not None  # and the target, never renamed into place, is not a conversion
