"""The real server: the syntax tree, cursor context and cross-file context reach the request path."""

from __future__ import annotations

from pathlib import Path

from lsprotocol import types

from tests.lsp.conftest import change_document, field, inline, lsp_session, open_document, status


def server_args(tiny_model: Path) -> list[str]:
    return ["--model", str(tiny_model), "--deadline-ms", "60000"]


async def test_tree_context_and_cross_file_context_reach_the_request(tiny_model: Path, tmp_path: Path) -> None:
    # the workspace is tmp_path alone: nothing else on this machine is similar code for the prompt
    (tmp_path / "geo.py").write_text('def area(r):\n    """Area of a circle."""\n    return 3.14 * r * r\n')
    uri = (tmp_path / "main.py").as_uri()
    line = "    return area(r1) - area("
    async with lsp_session(server_args(tiny_model), root_uri=tmp_path.as_uri()) as lsp:
        open_document(lsp, uri, "from geo import area\n\ndef ring(r1, r2):\n" + line + ")\n")
        # edits after open keep the tree in step: type "r2, " before the closer
        change_document(lsp, uri, 2, (3, len(line)), (3, len(line)), "r2, ")
        await inline(lsp, uri, 3, len(line) + 4)
        current = await status(lsp)
        context = field(current, "lastContext")
        assert field(context, "source") == "tree" and field(context, "language") == "python"
        assert field(context, "scope") == "def ring(r1, r2):" and field(context, "closers_in_suffix") == ")"
        assert field(context, "line_prefix") == line + "r2, " and field(context, "node_type") == "argument_list"
        assert field(current, "lastCrossFile") == "# from geo.py:\n# def area(r):\n#     Area of a circle.\n"

        # a language without a grammar: text rules, no exception
        open_document(lsp, "file:///tmp/job.cob", "PROCEDURE DIVISION.\n    DISPLAY ", language_id="cobol")
        await inline(lsp, "file:///tmp/job.cob", 1, 12)
        context = field(await status(lsp), "lastContext")
        assert field(context, "source") == "text" and field(context, "language") == ""


async def test_binary_text_and_an_edit_past_the_end_do_not_break_the_server(tiny_model: Path) -> None:
    async with lsp_session(server_args(tiny_model)) as lsp:
        uri = "file:///tmp/bin.py"
        open_document(lsp, uri, "\x00\x01\ufffd def f(:\n\x7f😀")
        change_document(lsp, uri, 2, (1, 1), (40, 0), "\ndef g():\n    ")
        result = await inline(lsp, uri, 3, 4)  # the document is "...\n\x7f\ndef g():\n    " after the clamped edit
        assert isinstance(result, types.InlineCompletionList)
        context = field(await status(lsp), "lastContext")
        assert field(context, "source") == "tree" and field(context, "scope") == "def g():" and field(context, "mode") == "multi"


async def test_workspace_folders_changed_by_the_client_are_what_cross_file_context_reads(tiny_model: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    (second / "geo.py").write_text('def area(r):\n    """Area of a circle."""\n    return 3.14 * r * r\n')
    uri = (second / "main.py").as_uri()
    text = "from geo import area\n\nprint(area("
    async with lsp_session(server_args(tiny_model), root_uri=first.as_uri()) as lsp:
        open_document(lsp, uri, text)
        await inline(lsp, uri, 2, 11)
        assert field(await status(lsp), "lastCrossFile") == ""  # geo.py is outside the workspace
        lsp.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(types.WorkspaceFoldersChangeEvent(
            added=[types.WorkspaceFolder(second.as_uri(), "second")], removed=[types.WorkspaceFolder(first.as_uri(), "first")],
        )))
        await inline(lsp, uri, 2, 11)
        assert field(await status(lsp), "lastCrossFile") == "# from geo.py:\n# def area(r):\n#     Area of a circle.\n"
