"""The import rules of docs/DESIGN.md ("Layers and what each may import"), read from every module's imports
(module level and inside functions alike) with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tabfill"

# package -> the tabfill packages it may import (itself included)
MAY_IMPORT = {
    "lsp_server": {"lsp_server", "completion", "syntax_cache"},
    "completion": {"completion", "syntax_cache", "kernels"},
    "syntax_cache": {"syntax_cache"},
    "kernels": {"kernels"},
    "engine_server": {"engine_server", "completion", "kernels"},
}
# package -> outside modules it must never import
NEVER = {
    "lsp_server": {"torch", "transformers"},
    "completion": {"pygls", "lsprotocol"},
    "syntax_cache": {"torch", "transformers", "pygls", "lsprotocol"},
    "kernels": {"pygls", "lsprotocol", "tree_sitter"},
    "engine_server": {"pygls", "lsprotocol"},
}
LSP_LIBRARIES = {"pygls", "lsprotocol"}


def imports_of(path: Path) -> set[str]:
    """Absolute module names `path` imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            if node.module is None or module in ("tabfill", "tabfill.kernels", "tabfill.completion"):
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tabfill" and parts[1] in MAY_IMPORT else None


def test_every_module_is_read() -> None:
    found = {path.relative_to(PACKAGE).parts[0] for path in modules() if path.parent != PACKAGE}
    assert found == set(MAY_IMPORT)
    assert imports_of(PACKAGE / "completion" / "service.py") >= {"tabfill.completion.source", "tabfill.syntax_cache.context"}


def violations(own: str | None, imported: set[str]) -> list[str]:
    """The imports of a module of package `own` (None: the top, tabfill/*.py) that break a rule."""
    if own is None:  # tabfill/__init__.py, tabfill/cli.py: the top may use every layer, but knows no LSP library
        return sorted(name for name in imported if name.split(".")[0] in LSP_LIBRARIES)
    wrong = [name for name in imported if layer_of(name) is not None and layer_of(name) not in MAY_IMPORT[own]]
    above = [name for name in imported if name == "tabfill.cli" or name.startswith("tabfill.cli.")]
    never = [name for name in imported if name.split(".")[0] in NEVER[own]]
    return sorted(wrong + above + never)


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0] if path.parent != PACKAGE else None
    assert violations(own, imports_of(path)) == []


def test_a_broken_rule_is_seen() -> None:
    assert violations("syntax_cache", {"re", "tabfill.syntax_cache.tree", "tabfill.completion.types", "torch"}) == [
        "tabfill.completion.types", "torch",
    ]
    assert violations("kernels", {"torch", "tabfill.lsp_server.documents", "lsprotocol.types"}) == [
        "lsprotocol.types", "tabfill.lsp_server.documents",
    ]
    assert violations("completion", {"tabfill.cli", "tabfill.kernels.steps", "pygls.server"}) == ["pygls.server", "tabfill.cli"]
    assert violations(None, {"tabfill.lsp_server.server", "pygls"}) == ["pygls"]
