"""`tabfill/status` describes the engine from EngineInfo's fields: camelCase, milliseconds rounded."""

from __future__ import annotations

from tabfill.completion.types import EngineInfo
from tabfill.lsp_server.server import _describe_info


def test_engine_info_fields_before_and_after_a_load() -> None:
    assert _describe_info(None, "default") == {
        "model": "default", "device": "", "dtype": "", "template": "", "loadMs": None, "importMs": None, "warmupMs": None,
    }
    info = EngineInfo("/models/smollm2", "cpu", "float32", 812.345, "prefix-only", import_ms=1500.04, warmup_ms=90.26)
    assert _describe_info(info, "default") == {
        "model": "/models/smollm2", "device": "cpu", "dtype": "float32", "template": "prefix-only",
        "loadMs": 812.3, "importMs": 1500.0, "warmupMs": 90.3,
    }
