from pathlib import Path

import pytest

from tabfill.completion.models import ModelError, cache_root, default_model_dir, resolve_model


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
