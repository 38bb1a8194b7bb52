from tabfill.completion.settings import deadline_ms, language_enabled, parse_settings
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
    assert deadline_ms(Settings(), "cpu") == 2500
    assert deadline_ms(Settings(deadline_ms=50), "cpu") == 50
    assert language_enabled(Settings(), "anything")
    assert not language_enabled(Settings(enabled_languages=("python",)), "go")
