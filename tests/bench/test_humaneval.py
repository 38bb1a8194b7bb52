"""bench.humaneval: tasks become documents with the cursor in the hole, answers are scored by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import humaneval
from bench.humaneval import Task, fim_prompt_text, score, select, task_document
from tabfill.completion.fim import TEMPLATES

TEST = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-1) == 1\n"
PROMPT = 'def square(x):\n    """x squared."""\n    if x < 0:\n'
SOLUTION = "        x = -x\n"
SUFFIX = "    return x * x\n"
TASK = Task("SingleLineInfilling/HumanEval/7/L1", "square", PROMPT, SUFFIX, SOLUTION, TEST)


def test_the_cursor_is_after_the_holes_indentation_on_its_own_line() -> None:
    document = task_document(TASK)
    assert document.text == PROMPT + "        \n" + SUFFIX
    assert document.text[: document.offset] == PROMPT + "        "
    assert document.text[document.offset :] == "\n" + SUFFIX
    assert document.expected == "x = -x"
    # the canonical answer typed at the cursor gives back the original file
    assert document.program(TASK, document.expected).startswith(PROMPT + SOLUTION + SUFFIX)


def test_a_hole_inside_a_line_keeps_the_cursor_there() -> None:
    task = Task("RandomSpanInfillingLight/HumanEval/7/1", "square", PROMPT + "        x = ", SUFFIX[4:], "-x\n    return", TEST)
    document = task_document(task)
    assert document.indent == "" and document.tail == ""
    assert document.text[: document.offset] == PROMPT + "        x = "
    assert document.expected == "-x\n    return"


def test_the_canonical_answer_passes_and_a_wrong_one_fails_with_exact_match_apart() -> None:
    document = task_document(TASK)
    right = score(TASK, document, "x = -x\n    print('extra line ignored for a single-line hole')", single_line=True)
    assert right["passed"] and right["exact"] and right["answer"] == "x = -x"
    equivalent = score(TASK, document, "x = abs(x)", single_line=True)
    assert equivalent["passed"] and not equivalent["exact"]
    wrong = score(TASK, document, "x = x + 1", single_line=True)
    assert not wrong["passed"] and wrong["status"] == "failed"
    empty = score(TASK, document, "", single_line=True)
    assert empty["empty"] and not empty["passed"]


def test_one_task_per_problem_then_spread_evenly() -> None:
    tasks = [Task(f"S/HumanEval/{p}/L{line}", "f", "", "", "", "") for p in range(10) for line in range(3)]
    picked = select(tasks, None, every_task=False)
    assert [t.task_id for t in picked] == [f"S/HumanEval/{p}/L1" for p in range(10)]
    assert [t.problem for t in select(tasks, 4, every_task=False)] == [0, 2, 5, 7]
    assert len(select(tasks, None, every_task=True)) == 30


def test_the_data_has_the_documented_task_counts() -> None:
    try:
        directory = humaneval.data_dir(None)
    except SystemExit:
        pytest.skip("HumanEval infilling data not present on this machine")
    counts = {subset: len(humaneval.load_tasks(subset, directory)) for subset in humaneval.SUBSETS}
    assert counts == {"single-line": 1033, "multi-line": 5815, "random-span-light": 164}
    assert len(select(humaneval.load_tasks("single-line", directory), None, every_task=False)) == 164


def test_llama_cpp_gets_the_models_fim_format_as_text() -> None:
    text = fim_prompt_text(TEMPLATES["qwen2.5-coder"], "def f():\n    ", "\n")
    assert text == "<|fim_prefix|>def f():\n    <|fim_suffix|>\n<|fim_middle|>"


@pytest.mark.model
def test_two_tasks_with_the_default_model_end_to_end(tmp_path: Path) -> None:
    try:
        humaneval.data_dir(None)
    except SystemExit:
        pytest.skip("HumanEval infilling data not present on this machine")
    code = humaneval.main(["--tasks", "2", "--systems", "tabfill,tabfill-plain", "--out", str(tmp_path)])
    assert code == 0
    run = json.loads((tmp_path / "humaneval.json").read_text())["default/single-line"]
    assert [s["name"] for s in run["systems"]] == ["tabfill", "tabfill (plain prompt)"]
    for system in run["systems"]:
        assert len(system["rows"]) == 2
        assert all(row["answered"] for row in system["rows"])
        assert all(row["status"] in ("passed", "failed", "timeout", "memory") for row in system["rows"])
    report = (tmp_path / "HUMANEVAL.md").read_text()
    assert "| tabfill |" in report and "pass@1" in report


@pytest.mark.parametrize("subset", list(humaneval.SUBSETS))
def test_the_canonical_answer_typed_at_the_cursor_passes_in_every_subset(subset: str) -> None:
    try:
        directory = humaneval.data_dir(None)
    except SystemExit:
        pytest.skip("HumanEval infilling data not present on this machine")
    for task in select(humaneval.load_tasks(subset, directory), 4, every_task=False):
        document = task_document(task)
        assert document.text[: document.offset] + document.expected + document.text[document.offset :] == (
            task.prompt + task.solution + task.suffix
        )
        result = score(task, document, document.expected, single_line=subset == "single-line")
        assert result["passed"] and result["exact"], (task.task_id, result)
