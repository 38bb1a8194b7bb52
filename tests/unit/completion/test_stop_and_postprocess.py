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


# ---------------------------------------------------------------------------------------------- with the tree
from tabfill.syntax_cache.context import context_at  # noqa: E402
from tabfill.syntax_cache.document import Document  # noqa: E402
from tabfill.syntax_cache.tree import SyntaxTree  # noqa: E402


def run(language: str, source: str, candidate: str, finish_reason: str = "stop", syntax: bool = True) -> tuple[str, int]:
    """Post-process `candidate` at the "|" of `source`, with the context its syntax tree gives."""
    offset = source.index("|")
    text = source.replace("|", "", 1)
    context = context_at(Document("file:///t", language, 0, text), offset, SyntaxTree(language, text).snapshot(text))
    return postprocess(candidate, context, text[offset:], finish_reason, prefix=text[:offset], syntax=syntax)


@pytest.mark.parametrize(
    "language, source, candidate, expected",
    [
        # Python: the function body ends where the parse says, not at a stop word
        ("python", "import os\n\ndef fib(n):\n    |", "if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\nprint(fib(10))\n",
         "if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)"),
        # ... even without a blank line or a dedent to column 0 before the next statement
        ("python", "class A:\n    def f(self):\n        |\n", "return 1\n    def g(self):\n        return 2",
         "return 1"),
        # JavaScript: the suffix already has the closing brace: stop before the candidate's
        ("javascript", "function f(a) {\n  |\n}\n", "return a + 1;\n}\n\nfunction g() {\n  return 2;\n}", "return a + 1;"),
        # ... it does not: the candidate's brace ends the function and is kept
        ("javascript", "function f(a) {\n  |", "return a + 1;\n}\n\nfunction g() {}", "return a + 1;\n}"),
        # a multi-line argument list closed by the next line
        ("python", "x = foo(\n    |\n)\n", "a,\n    b,\n)\ny = 2", "a,\n    b,"),
        # the candidate finishes a signature: the whole function is the block
        ("python", "def f(a,\n      |", "b):\n    return a + b\n\nx = 1", "b):\n    return a + b"),
        ("go", "func main() {\n\t|\n}\n", "fmt.Println(1)\n}\n\nfunc g() {\n}", "fmt.Println(1)"),
        ("rust", "fn main() {\n    |\n}\n", "let x = 1;\n    println!(\"{}\", x);\n}\n\nfn g() {}", "let x = 1;\n    println!(\"{}\", x);"),
        ("typescript", "class A {\n  m(): number {\n    |\n  }\n}\n", "return 1;\n  }\n  n() {}\n}", "return 1;"),
    ],
)
def test_multi_line_stops_at_the_end_of_the_block_by_the_parse(language: str, source: str, candidate: str, expected: str) -> None:
    assert run(language, source, candidate) == (expected, 0)


def test_a_last_line_broken_by_the_token_limit_is_dropped() -> None:
    assert run("python", "def f():\n    |", "x = 1\n    y = foo(1,", "length") == ("x = 1", 0)
    assert run("python", "def f():\n    |", "x = 1\n    y = foo(1,", "stop") == ("x = 1\n    y = foo(1,", 0)  # a real stop


@pytest.mark.parametrize(
    "language, source, candidate, expected",
    [
        ("python", "x = foo(a, |)\n", "b)", ("b", 0)),  # trimmed: the line already closes it
        ("python", "x = foo(a, |)\n", "b) + 1", ("b) + 1", 1)),  # goes on after it: the item replaces ")"
        ("python", "x = foo(bar(|))\n", "1), 2)", ("1), 2)", 2)),  # both closers replaced: foo(bar(1), 2)
        ("python", "x = foo(bar(|)\n", "1))", ("1))", 1)),  # the line closes one of two: foo(bar(1))
        ("python", 'print("hel|")\n', 'lo world")', ("lo world", 0)),  # the quote and the paren
        ("python", "x = [1, |]\n", "2)", ("2", 0)),  # a closer the line does not have the same way: cut before it
        ("typescript", "const s = `x${a}|`;\n", "y`;", ("y`;", 2)),  # the rest of the line is repeated: replace it
        ("python", "x = foo(a, |)\n", "(b, c))", ("(b, c)", 0)),  # inner brackets are the candidate's own
        ("python", "x = foo(|)  # note\n", "1)", ("1", 0)),
        ("javascript", "if (ready(|)) {\n", "x)) {", ("x)) {", 4)),  # replaces ")) {": ready(x)) {
    ],
)
def test_closers_in_the_suffix_are_never_duplicated(language: str, source: str, candidate: str, expected: tuple[str, int]) -> None:
    assert run(language, source, candidate) == expected
    text, replace = expected
    offset = source.index("|")
    line = source[: source.find("\n")]
    result = line[:offset] + text + line[offset + 1 + replace :]
    # the line as the editor shows it afterwards never closes more than it opens (it may close what was open)
    assert result.count(")") <= result.count("(") and result.count("]") <= result.count("[")


@pytest.mark.parametrize(
    "source, candidate, expected",
    [
        ("def f():\n    |\n    return x\n", "return x", ""),  # only the next line again
        ("def f():\n    |\n    y = 2\n    return y\n", "x = 1\n    y = 2\n    return y", "x = 1"),  # new line, then repeats
        ("def f():\n    x = |\n    return x\n", "1", "1"),  # the first line completes the cursor line: not a repeat
        ("def f():\n    return |\n    return x\n", "x", ""),  # "return x" is the next line
    ],
)
def test_lines_that_repeat_what_follows_are_dropped(source: str, candidate: str, expected: str) -> None:
    assert run("python", source, candidate)[0] == expected


def test_whitespace_only_and_text_rules_without_a_grammar() -> None:
    assert run("python", "def f():\n    |", "\n   \n\t") == ("", 0)
    document = Document("file:///t.txt", "plaintext", 0, "call(x, ")
    context = context_at(document, len(document.text) - 0)
    assert postprocess("y)\nmore", context, "", "stop") == ("y)", 0)  # no suffix closers: nothing to trim


def test_syntax_off_gives_the_plain_rules_for_ab_comparison() -> None:
    source = "function f(a) {\n  |\n}\n"
    candidate = "return a + 1;\n}\n\nfunction g() {\n  return 2;\n}"
    assert run("javascript", source, candidate, syntax=False) == (candidate.rstrip(), 0)
    assert run("python", "x = foo(a, |)\n", "b)", syntax=False) == ("b)", 1)
    assert postprocess("return x", ctx(Mode.SINGLE), "\n    return x\n", "stop", syntax=False) == ("", 0)
