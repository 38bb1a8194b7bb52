import pytest

from tabfill.completion.engine import stop_index
from tabfill.completion.postprocess import postprocess
from tabfill.completion.types import StopRule
from tabfill.syntax_cache.context import Mode, SyntaxContext


def ctx(mode: Mode, line_suffix: str = "", block_indent: int = 0) -> SyntaxContext:
    return SyntaxContext(mode, "test", "", line_suffix, 0, block_indent, "", False, "")


@pytest.mark.parametrize(
    "text, rule, expected",
    [
        ("x + 1", StopRule(single_line=True), None),
        ("x + 1\n    y", StopRule(single_line=True), 5),
        # multi-line: the body ends at the first line indented less than the block
        ("    if n < 2:\n        return n\n    return 1\ndef g", StopRule(False, 1, 8), None),
        ("    if n < 2:\n        return n\n    return 1\ndef g():\n", StopRule(False, 1, 8), 43),
        # two blank lines end a block
        ("    a = 1\n\n\n    b = 2\n", StopRule(False, 1, 8), 10),
        # max_lines counts complete lines
        ("a\nb\nc\nd\n", StopRule(False, 0, 2), 3),
        # the first line continues the cursor line and is not judged by indentation
        ("x\n    y\n", StopRule(False, 4, 8), None),
        # tabs count as the context measured them (TAB_WIDTH columns): a tab-indented body is not a dedent
        # (counted as one column each, the second body line would end the block at 8)
        ("\t\tx := 1\n\t\treturn x\n\t}\n", StopRule(False, 5, 8), 19),
    ],
)
def test_stop_index(text: str, rule: StopRule, expected: int | None) -> None:
    assert stop_index(text, rule) == expected


def test_single_line_cut_and_rstrip() -> None:
    assert postprocess("a + b   \nmore", ctx(Mode.SINGLE), "", "stop") == ("a + b", 0)


def test_whitespace_only_is_dropped() -> None:
    assert postprocess("   \n  ", ctx(Mode.MULTI), "", "stop") == ("", 0)


def test_repeating_the_suffix_is_dropped() -> None:
    assert postprocess("return x", ctx(Mode.SINGLE), "\n    return x\n", "stop") == ("", 0)


def test_closing_what_the_line_already_closes_is_trimmed() -> None:
    assert postprocess("n - 1)", ctx(Mode.SINGLE, line_suffix=")"), ")\n", "stop") == ("n - 1", 0)
    # plain rules (syntax off): the item replaces the rest of the line instead
    assert postprocess("n - 1)", ctx(Mode.SINGLE, line_suffix=")"), ")\n", "stop", syntax=False) == ("n - 1)", 1)


def test_multi_line_drops_trailing_blank_lines_and_spaces() -> None:
    text = "    if n < 2:  \n        return n\n\n"
    assert postprocess(text, ctx(Mode.MULTI), "", "stop") == ("    if n < 2:\n        return n", 0)


def test_deadline_cuts_back_to_a_whole_word_or_line() -> None:
    assert postprocess("foo(bar, ba", ctx(Mode.SINGLE), "", "deadline") == ("foo(bar,", 0)
    assert postprocess("    a = 1\n    b = compu", ctx(Mode.MULTI), "", "deadline") == ("    a = 1", 0)
    # a single unfinished word is kept rather than nothing
    assert postprocess("compu", ctx(Mode.SINGLE), "", "deadline") == ("compu", 0)
