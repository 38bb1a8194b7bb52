from tabfill.completion.settings import deadline_ms, kv_slot_tokens, language_enabled, parse_settings
from tabfill.completion.types import Settings


def test_camel_and_nested_keys() -> None:
    settings, problems = parse_settings({"tabfill": {"maxNewTokens": 10, "deadlineMs": 200, "enabledLanguages": ["python"]}})
    assert problems == []
    assert (settings.max_new_tokens, settings.deadline_ms, settings.enabled_languages) == (10, 200, ("python",))


def test_invalid_values_keep_the_previous_and_say_why() -> None:
    base = Settings(max_new_tokens=7)
    settings, problems = parse_settings({"max_new_tokens": -1, "device": "tpu", "bogus": 1, "multiLine": "yes"}, base)
    assert settings == base
    assert len(problems) == 4
    assert any("max_new_tokens" in p and "-1" in p for p in problems)
    assert any("bogus" in p for p in problems)


def test_not_an_object() -> None:
    settings, problems = parse_settings(["model"])
    assert settings == Settings() and "must be an object" in problems[0]


def test_none_is_no_change() -> None:
    assert parse_settings(None, Settings(model="x")) == (Settings(model="x"), [])


def test_deadline_by_device_and_languages() -> None:
    assert deadline_ms(Settings(), "cuda:0") == 100
    assert deadline_ms(Settings(), "cpu") == 80
    assert deadline_ms(Settings(deadline_ms=50), "cpu") == 50
    assert language_enabled(Settings(), "anything")
    assert not language_enabled(Settings(enabled_languages=("python",)), "go")


def test_engine_settings_are_checked() -> None:
    settings, problems = parse_settings({"quantize": "int4", "prefixCacheMb": -1, "leanForward": "yes"})
    assert settings == Settings() and len(problems) == 3
    settings, problems = parse_settings({"quantize": "gguf", "prefixCacheMb": 0, "leanForward": False})
    assert (settings.quantize, settings.prefix_cache_mb, settings.lean_forward, problems) == ("gguf", 0, False, [])
    settings, problems = parse_settings({"quantize": "int8"})  # retired: the GGUF blocks replace it
    assert settings.quantize == "auto" and "quantize" in problems[0]


def test_the_kv_slot_holds_the_longest_prompt_the_settings_allow() -> None:
    assert kv_slot_tokens(Settings()) == 1024
    big = Settings(max_prefix_tokens=4000, max_suffix_tokens=1000, max_new_tokens=200)
    assert kv_slot_tokens(big) >= 4000 + 1000 + 200 + 16 and kv_slot_tokens(big) % 256 == 0
