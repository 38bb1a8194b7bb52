import json
from pathlib import Path

import pytest

from tabfill.completion.models import ModelError, cache_root, default_model_dir, resolve_model
from tests.unit.completion.test_model_files import write_safetensors


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TABFILL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tabfill"
    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"
    assert default_model_dir() == tmp_path / "explicit" / "models" / "smollm2-135m"


def test_specs_that_cannot_work_say_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="not usable"):
        resolve_model("./no/such/dir")
    with pytest.raises(ModelError, match="tabfill model pull"):
        resolve_model("default", allow_pull=False)


def test_directories_and_hub_ids_pass_through(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("bigcode/starcoder2-3b") == "bigcode/starcoder2-3b"


def test_doctor_suggests_the_code_model_on_cuda_and_the_default_on_a_small_cpu() -> None:
    from tabfill.completion.models import recommend_preset

    preset, why = recommend_preset("cuda", 8)
    assert preset == "qwen2.5-coder-1.5b" and "FIM" in why
    preset, why = recommend_preset("cpu", 2)
    assert preset == "default" and "2 CPU core" in why and "qwen2.5-coder-1.5b" in why


def test_the_qwen_preset_is_known_by_name_and_says_how_to_pull_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelError, match="tabfill model pull qwen2.5-coder-1.5b"):
        resolve_model("qwen2.5-coder-1.5b", allow_pull=False)
    (tmp_path / "models" / "qwen2.5-coder-1.5b").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / "models" / "qwen2.5-coder-1.5b" / name).write_text("{}")
    write_safetensors(tmp_path / "models" / "qwen2.5-coder-1.5b" / "model.safetensors")
    assert resolve_model("Qwen2.5-Coder-1.5B", allow_pull=False) == str(tmp_path / "models" / "qwen2.5-coder-1.5b")


def test_the_gguf_a_model_comes_from_is_found(tmp_path: Path) -> None:
    from tabfill.completion.gguf_models import gguf_source
    from tabfill.completion.models import KEPT_GGUF

    converted = tmp_path / "converted"
    converted.mkdir()
    assert gguf_source(str(converted)) is None  # a plain directory: fp32 only
    user_file = tmp_path / "user.gguf"
    user_file.write_bytes(b"GGUF")
    (converted / "tabfill-source.json").write_text(json.dumps({"gguf": str(user_file)}))
    assert gguf_source(str(converted)) == (user_file, None)  # not a complete conversion: no fp32 twin
    (converted / "tabfill-source.json").write_text(json.dumps({"gguf": "relative/member.gguf"}))
    assert gguf_source(str(converted)) is None  # the default model's record names a wheel member
    (converted / KEPT_GGUF).write_bytes(b"GGUF")
    assert gguf_source(str(converted)) == (converted / KEPT_GGUF, None)
    assert gguf_source(str(user_file)) == (user_file, None)


def test_quantize_gguf_says_why_it_cannot_and_auto_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tabfill.completion import models

    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "cache"))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no GGUF file"):
        models.load_model(str(plain), "cpu", quantize="gguf")
    seen: list[str] = []
    monkeypatch.setattr(models, "resolve_model", lambda spec, progress: seen.append(spec) or "/nonexistent/dir")
    with pytest.raises(ModelError, match="could not read the configuration"):
        models.load_model(str(plain), "cpu", quantize="auto")  # fell back to the fp32 path
    assert seen == [str(plain)]
