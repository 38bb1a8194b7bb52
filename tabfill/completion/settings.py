"""Typed settings from untyped client input: invalid values produce a message and keep the default."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tabfill.completion.pace import typing_deadline_ms
from tabfill.completion.types import Settings

# Deadline when the user sets none: inside the 100 ms budget. What is complete by then is answered (cut at a
# clean boundary) and the rest is generated in the background for type-through (service.CONTINUE_*).
DEFAULT_DEADLINE_MS = {"cuda": 100, "cpu": 80}

QUANTIZE_CHOICES = ("auto", "gguf", "none")

_INT_LIMITS = {
    "max_new_tokens": (1, 512),
    "single_line_max_new_tokens": (1, 256),
    "deadline_ms": (0, 600_000),
    "max_prefix_tokens": (16, 32_768),
    "max_suffix_tokens": (0, 32_768),
    "cross_file_tokens": (0, 8_192),
    "prefix_cache_mb": (0, 65_536),
    "confidence_percent": (0, 100),
}


def _snake(name: str) -> str:
    return "".join("_" + char.lower() if char.isupper() else char for char in name)


def parse_settings(raw: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Overlay `raw` (camelCase or snake_case keys, optionally nested under "tabfill") on `base`."""
    base = base or Settings()
    if raw is None:
        return base, []
    if not isinstance(raw, Mapping):
        return base, [f"settings must be an object, got {type(raw).__name__}; using defaults"]
    if isinstance(raw.get("tabfill"), Mapping):
        raw = raw["tabfill"]
    fields = {field.name for field in dataclasses.fields(Settings)}
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = _snake(str(key))
        if name not in fields:
            problems.append(f"unknown setting {key!r} ignored")
            continue
        if name in _INT_LIMITS:
            low, high = _INT_LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(f"setting {key!r} must be an integer in [{low}, {high}], got {value!r}; keeping {getattr(base, name)!r}")
                continue
            changes[name] = value
        elif name in ("multi_line", "syntax_postprocess", "cross_file_context", "lean_forward"):
            if not isinstance(value, bool):
                problems.append(f"setting {key!r} must be true or false, got {value!r}")
                continue
            changes[name] = value
        elif name == "enabled_languages":
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                problems.append(f"setting {key!r} must be a list of language ids, got {value!r}")
                continue
            changes[name] = tuple(value)
        elif name == "quantize":
            if value not in QUANTIZE_CHOICES:
                problems.append(f"setting {key!r} must be one of {', '.join(QUANTIZE_CHOICES)}, got {value!r}")
                continue
            changes[name] = value
        elif name in ("engine", "engine_token", "engine_model", "engine_api_key"):
            # engine: "" (this process) or scheme://address; completion.sources checks the scheme.
            if not isinstance(value, str):
                problems.append(f"setting {key!r} must be a string, got {type(value).__name__}")  # never the value: a key
                continue
            changes[name] = value.strip()
        else:  # model, device
            if not isinstance(value, str) or not value.strip():
                problems.append(f"setting {key!r} must be a non-empty string, got {value!r}")
                continue
            if name == "device" and not (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
                problems.append(f"setting 'device' must be auto, cpu, cuda or cuda:N, got {value!r}")
                continue
            changes[name] = value.strip()
    return dataclasses.replace(base, **changes), problems


def deadline_ms(settings: Settings, device: str, key_interval_ms: float | None = None) -> float:
    """The deadline a setting fixes; else the device's default, shortened while the user types fast
    (pace.typing_deadline_ms)."""
    if settings.deadline_ms > 0:
        return settings.deadline_ms
    return typing_deadline_ms(DEFAULT_DEADLINE_MS["cuda" if device.startswith("cuda") else "cpu"], key_interval_ms)


def language_enabled(settings: Settings, language_id: str) -> bool:
    return "*" in settings.enabled_languages or language_id in settings.enabled_languages


def kv_slot_tokens(settings: Settings) -> int:
    """Positions the engine's live KV slot needs for the longest prompt these settings allow, plus the
    answer and a draft (fim markers and BOS included), rounded up; at least 1,024 (47 MB of KV with the default
    model; the default budgets need ~620)."""
    needed = settings.max_prefix_tokens + settings.max_suffix_tokens + max(settings.max_new_tokens, settings.single_line_max_new_tokens) + 64
    return max(1024, -(-needed // 256) * 256)
