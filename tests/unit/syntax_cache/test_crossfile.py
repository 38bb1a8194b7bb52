"""Cross-file context: imports resolved to definitions in open documents and workspace files, bounded to
the workspace; recent edits of other documents; rendering as comments within a budget."""

from __future__ import annotations

from pathlib import Path

from tabfill.syntax_cache.crossfile import CrossFileIndex, RecentEdits
from tabfill.syntax_cache.definitions import imports_of
from tabfill.syntax_cache.workspace import Snippet
from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.tree import SyntaxSnapshot, SyntaxTree


def snapshot(language: str, text: str) -> SyntaxSnapshot:
    result = SyntaxTree(language, text).snapshot(text)
    assert result is not None
    return result


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_python_imports() -> None:
    text = "import os.path as osp\nfrom .util import helper, Thing as T\nfrom pkg.mod import (a,\n  b)\nosp.join(1)\n"
    found = imports_of(snapshot("python", text))
    assert [(i.module, i.names) for i in found] == [("os.path", ("join",)), (".util", ("helper", "Thing")), ("pkg.mod", ("a", "b"))]


def test_js_imports_and_require() -> None:
    text = "import def1, { x, y as z } from './lib';\nimport * as ns from 'react';\nconst { q } = require('../q');\n"
    found = imports_of(snapshot("javascript", text))
    assert [(i.module, i.names, i.default) for i in found] == [("./lib", ("def1", "x", "y"), True), ("../q", ("q",), False)]


def test_python_definitions_from_workspace_files(tmp_path: Path) -> None:
    write(tmp_path, "pkg/__init__.py", "")
    write(
        tmp_path,
        "pkg/geometry.py",
        'import math\n\nRADIUS = 3\n\n\ndef area(r: float) -> float:\n    """Area of a circle.\n\n    More.\n    """\n'
        "    return math.pi * r * r\n\n\n@dataclass\nclass Point:\n    '''A 2-D point.'''\n\n"
        "    def __init__(self, x: int,\n                 y: int) -> None:\n        self.x = x\n\n\ndef unused():\n    pass\n",
    )
    main = write(tmp_path, "app/main.py", "from pkg.geometry import area, Point, RADIUS\n\narea(")
    index = CrossFileIndex()
    index.set_roots([tmp_path])
    snippets = index.snippets(main.as_uri(), snapshot("python", main.read_text()), {})
    assert [(s.path, s.text) for s in snippets] == [
        ("pkg/geometry.py", "def area(r: float) -> float:\n    Area of a circle."),
        ("pkg/geometry.py", "class Point:\n    def __init__(self, x: int, y: int) -> None:\n    A 2-D point."),
        ("pkg/geometry.py", "RADIUS = 3"),
    ]


def test_relative_python_import_and_open_documents_win_over_disk(tmp_path: Path) -> None:
    util = write(tmp_path, "pkg/util.py", "def helper():\n    pass\n")
    main = write(tmp_path, "pkg/main.py", "from .util import helper\n")
    open_util = Document(util.as_uri(), "python", 3, "def helper(x, y):\n    # Adds.\n    return x + y\n")
    index = CrossFileIndex()
    index.set_roots([tmp_path])
    snippets = index.snippets(main.as_uri(), snapshot("python", main.read_text()), {open_util.uri: open_util})
    assert [s.text for s in snippets] == ["def helper(x, y):"]


def test_typescript_definitions_with_comments(tmp_path: Path) -> None:
    write(
        tmp_path,
        "src/math.ts",
        "/** Adds two numbers. */\nexport function add(a: number, b: number): number {\n  return a + b;\n}\n"
        "// The answer.\nexport const answer = 42;\nexport interface Shape { area(): number }\n"
        "export default class Calc {\n  run() {}\n}\n",
    )
    main = write(tmp_path, "src/app.ts", "import Calc, { add, answer, Shape } from './math';\nadd(")
    index = CrossFileIndex()
    index.set_roots([tmp_path])
    snippets = index.snippets(main.as_uri(), snapshot("typescript", main.read_text()), {})
    assert [s.text for s in snippets] == [
        "export default class Calc",  # the default import first, then the names in import order
        "export function add(a: number, b: number): number\n    Adds two numbers.",
        "export const answer = 42;\n    The answer.",
        "export interface Shape { area(): number }",
    ]


def test_nothing_outside_the_workspace_is_read(tmp_path: Path) -> None:
    outside = write(tmp_path, "outside/secret.py", "def secret():\n    pass\n")
    root = tmp_path / "ws"
    main = write(root, "main.py", "from ..outside.secret import secret\nfrom secret import secret\n")
    (root / "secret.py").symlink_to(outside)  # a link inside the workspace to a file outside it
    index = CrossFileIndex()
    index.set_roots([root])
    assert index.snippets(main.as_uri(), snapshot("python", main.read_text()), {}) == []


def test_unresolvable_and_package_imports_give_nothing(tmp_path: Path) -> None:
    main = write(tmp_path, "main.ts", "import React from 'react';\nimport { x } from './missing';\n")
    index = CrossFileIndex()
    index.set_roots([tmp_path])
    assert index.snippets(main.as_uri(), snapshot("typescript", main.read_text()), {}) == []


def test_recent_edits_of_other_documents_newest_first() -> None:
    a = Document("file:///a.py", "python", 1, "\n".join(f"a{i} = {i}" for i in range(20)))
    b = Document("file:///b.py", "python", 1, "x = 1\ny = 2\n")
    recent = RecentEdits()
    recent.record(a, a.line_start(10), "1")
    recent.record(a, a.line_start(11), "2")  # the same region, typed on
    recent.record(b, 0, "x")
    documents = {a.uri: a, b.uri: b}
    regions = recent.regions(documents, exclude_uri="file:///b.py")
    assert [(r.path, r.text) for r in regions] == [("/a.py", "a9 = 9\na10 = 10\na11 = 11\na12 = 12\na13 = 13")]
    assert recent.regions(documents, exclude_uri="file:///a.py")[0].text == "x = 1\ny = 2"
    # only the same language family when asked: TypeScript and JavaScript mix, Python does not
    js = Document("file:///c.js", "javascript", 1, "let c = 1;\n")
    recent.record(js, 0, "l")
    documents[js.uri] = js
    assert [r.path for r in recent.regions(documents, "file:///d.ts", language_id="typescript")] == ["/c.js"]
    assert [r.path for r in recent.regions(documents, "file:///e.py", language_id="python")] == ["/b.py", "/a.py"]


def test_js_arrow_functions_keep_their_first_body_line() -> None:
    from tabfill.syntax_cache.definitions import definitions_in

    source = (
        "const gt = (a, b, loose) => compare(a, b, loose) > 0\n"
        "export const load = async (path) => {\n  const text = await read(path)\n  return parse(text)\n}\n"
        "const noop = () => {}\n"
        "const twice = function (x) { return 2 * x }\n"
    )
    rendered = {d.name: d.render() for d in definitions_in("javascript", source.encode())}
    assert rendered["gt"] == "const gt = (a, b, loose) => compare(a, b, loose) > 0"
    assert rendered["load"] == "export const load = async (path) => {\n  const text = await read(path)\n  ...\n}"
    assert rendered["noop"] == "const noop = () => {}"
    assert rendered["twice"] == "const twice = function (x)"  # not an arrow function: its header as before


def test_a_self_import_never_shows_the_documents_own_stale_file(tmp_path: Path) -> None:
    # tools.py imports a name of its own module; the file on disk is an older copy of the open document
    tools = write(tmp_path, "tools.py", 'def helper():\n    """The stale copy on disk."""\n')
    write(tmp_path, "lib/tools.py", "def helper(path):\n    return path\n")
    text = "from tools import helper\n\ndef helper(x, y):\n    return x + y\n"
    document = Document(tools.as_uri(), "python", 1, text)
    index = CrossFileIndex()
    index.set_roots([tmp_path])
    assert index.snippets(document.uri, snapshot("python", text), {document.uri: document}) == []
    # through a symlinked path too (paths are compared resolved); another module of that name still resolves
    (tmp_path / "link").symlink_to(tmp_path)
    index.set_roots([tmp_path, tmp_path / "lib"])
    linked = Document((tmp_path / "link" / "tools.py").as_uri(), "python", 1, text)
    snippets = index.snippets(linked.uri, snapshot("python", text), {linked.uri: linked})
    assert [(s.path, s.text) for s in snippets] == [("lib/tools.py", "def helper(path):")]
