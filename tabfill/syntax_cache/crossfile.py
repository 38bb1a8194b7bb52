"""Cross-file context: the names a file imports, resolved to their definitions (signature and first
docstring/comment line) in other open documents and in files of the workspace folder, plus the most
recently edited regions of other documents.

Bounded: at most MAX_FILES files read per lookup, MAX_FILE_BYTES per file, TIME_BUDGET_MS per lookup,
and never a path outside the workspace roots. Definitions are cached per file (mtime and size) and per
open document version, so a keystroke costs a few dictionary lookups.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

from tree_sitter import Node

from tabfill.syntax_cache.document import Document
from tabfill.syntax_cache.languages import grammar_name
from tabfill.syntax_cache.tree import SyntaxSnapshot, encode, parse_source

log = logging.getLogger(__name__)

MAX_FILES = 12
MAX_FILE_BYTES = 512 * 1024
TIME_BUDGET_MS = 25.0
MAX_SNIPPETS = 16
RECENT_REGIONS = 8
RECENT_CONTEXT_LINES = 2  # lines kept on each side of an edited line
CROSS_FILE_GRAMMARS = ("python", "javascript", "typescript", "tsx")
_JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts")
_COMMENT = {"python": "#", "javascript": "//", "typescript": "//", "tsx": "//", "go": "//", "rust": "//"}


@dataclass(frozen=True)
class Snippet:
    """A piece of another file worth showing the model. `kind`: "definition" or "recent"."""

    path: str  # workspace-relative path (or the URI's path) for display
    text: str
    kind: str = "definition"


def uri_to_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    path = unquote(parsed.path)
    if os.name == "nt" and re.match(r"^/[A-Za-z]:", path):
        path = path[1:]
    return Path(path)


def comment_prefix(language_id: str) -> str:
    return _COMMENT.get(grammar_name(language_id), "")


# ---------------------------------------------------------------------------------------------- recent edits
class RecentEdits:
    """The most recently edited places (uri, line), newest last; regions are read at request time."""

    def __init__(self, capacity: int = RECENT_REGIONS * 4) -> None:
        self._places: deque[tuple[str, int]] = deque(maxlen=capacity)

    def record(self, document: Document, cp_offset: int, inserted: str) -> None:
        line = document.line_of(cp_offset)
        if self._places and self._places[-1][0] == document.uri and abs(self._places[-1][1] - line) <= RECENT_CONTEXT_LINES:
            self._places.pop()  # the same region, typed on: keep one entry, moved to the end
        self._places.append((document.uri, line + inserted.count("\n")))

    def forget(self, uri: str) -> None:
        kept = [place for place in self._places if place[0] != uri]
        self._places.clear()
        self._places.extend(kept)

    def regions(
        self, documents: dict[str, Document], exclude_uri: str, limit: int = RECENT_REGIONS, language_id: str | None = None
    ) -> list[Snippet]:
        """Recently edited regions of other open documents, newest first, non-overlapping; with `language_id`,
        only documents of the same language family (Python code does not help a Go completion)."""
        wanted = family(language_id) if language_id is not None else None
        out: list[Snippet] = []
        seen: list[tuple[str, int, int]] = []
        for uri, line in reversed(self._places):
            document = documents.get(uri)
            if uri == exclude_uri or document is None:
                continue
            if wanted is not None and family(document.language_id) != wanted:
                continue
            first, last = max(line - RECENT_CONTEXT_LINES, 0), min(line + RECENT_CONTEXT_LINES, document.line_count - 1)
            if any(u == uri and first <= b and a <= last for u, a, b in seen):
                continue
            seen.append((uri, first, last))
            text = "\n".join(document.line_text(row) for row in range(first, last + 1)).strip("\n")
            if text.strip():
                out.append(Snippet(relative_display(uri, []), text, "recent"))
            if len(out) >= limit:
                break
        return out


def family(language_id: str) -> str:
    """The language family whose files can inform each other (JavaScript, TypeScript and TSX are one)."""
    grammar = grammar_name(language_id) or language_id.lower()
    return "javascript" if grammar in ("javascript", "typescript", "tsx") else grammar


def relative_display(uri: str, roots: list[Path]) -> str:
    """How a snippet names its file: relative to the workspace root that holds it, else the full path (or URI)."""
    path = uri_to_path(uri)
    if path is None:
        return uri
    for root in roots:
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


# ---------------------------------------------------------------------------------------------- imports
@dataclass(frozen=True)
class Import:
    module: str  # "pkg.mod", ".mod" (Python relative), "./util" (JS/TS)
    names: tuple[str, ...]  # imported names; for `import mod` the attributes the file uses (mod.NAME)
    default: bool = False  # JS/TS default import


def _text(node: Node) -> str:
    return (node.text or b"").decode("utf-8", "replace")


_IMPORT_SCAN_GAP = 40  # imports sit at the top: stop after this many top-level statements without one


def imports_of(snapshot: SyntaxSnapshot, limit: int = 64) -> list[Import]:
    """Top-level imports of a Python/JavaScript/TypeScript file, in source order (the scan stops after a run
    of _IMPORT_SCAN_GAP top-level statements without an import, so a long file costs no more than its head)."""
    grammar = snapshot.grammar
    root = snapshot.root
    found: list[Import] = []
    gap = 0
    for index in range(root.named_child_count):
        if len(found) >= limit or gap > _IMPORT_SCAN_GAP:
            break
        node = root.named_child(index)
        if node is None:
            break
        if grammar == "python":
            more = _python_imports(node, snapshot.text)
        elif grammar in ("javascript", "typescript", "tsx"):
            more = _js_imports(node)
        else:
            more = []
        found.extend(more)
        gap = 0 if more or node.type == "comment" else gap + 1
    return found


def _python_imports(node: Node, text: str) -> list[Import]:
    if node.type == "import_from_statement":
        module_node = node.child_by_field_name("module_name")
        if module_node is None:
            return []
        names = []
        for child in node.children_by_field_name("name"):
            target = child.child_by_field_name("name") if child.type == "aliased_import" else child
            if target is not None:
                names.append(_text(target).split(".")[-1])
        return [Import(_text(module_node), tuple(names))] if names else []
    if node.type == "import_statement":
        out = []
        for child in node.children_by_field_name("name"):
            if child.type == "aliased_import":
                module_node, alias_node = child.child_by_field_name("name"), child.child_by_field_name("alias")
                if module_node is None:
                    continue
                module, alias = _text(module_node), _text(alias_node) if alias_node is not None else ""
            else:
                module = alias = _text(child)
            out.append(Import(module, _attributes_used(text, alias or module)))
        return out
    return []


def _attributes_used(text: str, name: str, limit: int = 16) -> tuple[str, ...]:
    """The NAME in each `name.NAME` of `text` (sorted, at most `limit`): what `import name` is used for."""
    needle = name + "."
    found: set[str] = set()
    at = text.find(needle)
    while at >= 0 and len(found) < limit:
        if at == 0 or not (text[at - 1].isalnum() or text[at - 1] in "_."):
            match = _IDENTIFIER.match(text, at + len(needle))
            if match:
                found.add(match.group())
        at = text.find(needle, at + len(needle))
    return tuple(sorted(found))


_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


def _js_imports(node: Node) -> list[Import]:
    if node.type == "import_statement":
        source = node.child_by_field_name("source")
        if source is None:
            return []
        module = _text(source).strip("'\"`")
        names: list[str] = []
        default = False
        for clause in node.named_children:
            if clause.type != "import_clause":
                continue
            for part in clause.named_children:
                if part.type == "identifier":
                    default = True
                    names.append(_text(part))
                elif part.type == "named_imports":
                    for spec in part.named_children:
                        name = spec.child_by_field_name("name")
                        if spec.type == "import_specifier" and name is not None:
                            names.append(_text(name))
        return [Import(module, tuple(names), default)] if names else []
    if node.type in ("lexical_declaration", "variable_declaration"):  # const { a, b } = require("./x")
        out = []
        for declarator in node.named_children:
            value, name = declarator.child_by_field_name("value"), declarator.child_by_field_name("name")
            if value is None or name is None or value.type != "call_expression":
                continue
            function, arguments = value.child_by_field_name("function"), value.child_by_field_name("arguments")
            if function is None or _text(function) != "require" or arguments is None or not arguments.named_children:
                continue
            module = _text(arguments.named_children[0]).strip("'\"`")
            if name.type == "object_pattern":
                names = [_text(c) for c in name.named_children if c.type == "shorthand_property_identifier_pattern"]
                out.append(Import(module, tuple(names)))
            else:
                out.append(Import(module, (_text(name),), default=True))
        return out
    return []


# ---------------------------------------------------------------------------------------------- definitions
@dataclass(frozen=True)
class Definition:
    name: str
    signature: str
    doc: str  # first docstring/comment line, "" when none
    default_export: bool = False

    def render(self) -> str:
        return self.signature if not self.doc else f"{self.signature}\n    {self.doc}"


def _first_doc_line(raw: str) -> str:
    for line in raw.splitlines():
        line = line.strip().lstrip("/*#").strip().removesuffix("*/").strip().strip("\"'").strip()
        if line:
            return line[:160]
    return ""


def _header(node: Node, body: Node | None, source: bytes, start: Node | None = None) -> str:
    """The declaration up to its body (Python: up to its ":"), whitespace runs joined when it spans lines."""
    end = body.start_byte if body is not None else node.end_byte
    colon = next((child for child in node.children if child.type == ":" and child.end_byte <= end), None)
    if colon is not None:
        end = colon.end_byte
    header = source[(start or node).start_byte : end].decode("utf-8", "replace").rstrip().rstrip("{").rstrip()
    header = " ".join(header.split()) if "\n" in header and len(header) < 400 else header
    return header[:300]


def _python_definitions(root: Node, source: bytes) -> list[Definition]:
    out: list[Definition] = []
    for node in root.named_children:
        target = node
        if node.type == "decorated_definition":
            inner = node.child_by_field_name("definition")
            if inner is None:
                continue
            target = inner
        if target.type in ("function_definition", "class_definition"):
            name_node, body = target.child_by_field_name("name"), target.child_by_field_name("body")
            if name_node is None:
                continue
            doc = ""
            if body is not None and body.named_children:
                first = body.named_children[0]
                if first.type == "expression_statement" and first.named_children and first.named_children[0].type == "string":
                    doc = _first_doc_line(_text(first.named_children[0]))
            signature = _header(target, body, source)
            if target.type == "class_definition" and body is not None:
                init = next(
                    (c for c in body.named_children if c.type == "function_definition"
                     and (n := c.child_by_field_name("name")) is not None and _text(n) == "__init__"),
                    None,
                )
                if init is not None:
                    signature += "\n    " + _header(init, init.child_by_field_name("body"), source)
            out.append(Definition(_text(name_node), signature, doc))
        elif node.type == "expression_statement" and node.named_children and node.named_children[0].type == "assignment":
            assignment = node.named_children[0]
            left = assignment.child_by_field_name("left")
            if left is not None and left.type == "identifier":
                line = _text(node).split("\n", 1)[0]
                out.append(Definition(_text(left), line[:200], ""))
    return out


_JS_DECLARATIONS = {
    "function_declaration", "generator_function_declaration", "class_declaration", "abstract_class_declaration",
    "interface_declaration", "type_alias_declaration", "enum_declaration", "lexical_declaration",
    "variable_declaration", "function_signature",
}


def _js_definitions(root: Node, source: bytes) -> list[Definition]:
    out: list[Definition] = []
    previous: Node | None = None
    for node in root.named_children:
        comment = previous if previous is not None and previous.type == "comment" and previous.end_point[0] + 1 >= node.start_point[0] else None
        previous = node
        target, default = node, False
        if node.type == "export_statement":
            declaration = node.child_by_field_name("declaration") or node.child_by_field_name("value")
            default = any(child.type == "default" for child in node.children)
            if declaration is None:
                continue
            target = declaration
        doc = _first_doc_line(_text(comment)) if comment is not None else ""
        if target.type in ("lexical_declaration", "variable_declaration"):
            for declarator in target.named_children:
                name_node = declarator.child_by_field_name("name")
                if name_node is None or name_node.type != "identifier":
                    continue
                value = declarator.child_by_field_name("value")
                body = value.child_by_field_name("body") if value is not None and value.type in ("arrow_function", "function_expression", "function") else None
                if body is not None:
                    signature = _header(target, body, source, start=node)
                else:
                    signature = _text(node).split("\n", 1)[0][:200]
                out.append(Definition(_text(name_node), signature, doc, default))
        elif target.type in _JS_DECLARATIONS:
            name_node, body = target.child_by_field_name("name"), target.child_by_field_name("body")
            if target.type in ("interface_declaration", "type_alias_declaration", "enum_declaration"):
                text = _text(target)
                signature = _text(node) if len(text) <= 400 and text.count("\n") <= 12 else _header(target, body, source, start=node)
            else:
                signature = _header(target, body, source, start=node)
            out.append(Definition(_text(name_node) if name_node is not None else "default", signature, doc, default))
        elif default:  # export default <expression>
            out.append(Definition("default", _text(node).split("\n", 1)[0][:200], doc, True))
    return out


def definitions_in(grammar: str, source: bytes) -> list[Definition]:
    """Top-level definitions of a Python/JavaScript/TypeScript source."""
    try:
        tree = parse_source(grammar, source)
    except Exception as exc:  # a parser failure on one file costs only that file's definitions
        log.debug("cross-file parse failed: %s", exc)
        return []
    if tree is None:
        return []
    root = tree.root_node
    return _python_definitions(root, source) if grammar == "python" else _js_definitions(root, source)


# ---------------------------------------------------------------------------------------------- resolution
class CrossFileIndex:
    """Resolves imports to definitions; caches per file (mtime_ns, size) and per open document version."""

    def __init__(self, max_cached_files: int = 256, resolve_ttl_s: float = 5.0) -> None:
        self.roots: list[Path] = []
        self._files: OrderedDict[tuple[str, object], list[Definition]] = OrderedDict()
        self._max_cached = max_cached_files
        # per document: (imports, open documents' versions) -> snippets, reused for `resolve_ttl_s` (files on disk
        # may change meanwhile; the open documents' versions are part of the key)
        self._resolved: dict[str, tuple[object, float, list[Snippet]]] = {}
        self._resolve_ttl_s = resolve_ttl_s

    def forget(self, uri: str) -> None:
        self._resolved.pop(uri, None)

    def set_roots(self, roots: list[Path]) -> None:
        resolved = []
        for root in roots:
            try:
                resolved.append(root.resolve())
            except OSError:
                continue
        self.roots = resolved
        self._resolved.clear()  # what was found under the old roots

    def _inside(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def snippets(self, uri: str, snapshot: SyntaxSnapshot | None, documents: dict[str, Document], budget_ms: float = TIME_BUDGET_MS) -> list[Snippet]:
        """Definitions of the names the document imports, in import order (bounded in files and time)."""
        if snapshot is None or snapshot.grammar not in CROSS_FILE_GRAMMARS or not self.roots and len(documents) < 2:
            return []
        imports = imports_of(snapshot)
        if not imports:
            return []
        key = (tuple(imports), tuple(sorted((d.uri, d.version) for d in documents.values() if d.uri != uri)))
        now = time.monotonic()
        cached = self._resolved.get(uri)
        if cached is not None and cached[0] == key and now - cached[1] < self._resolve_ttl_s:
            return cached[2]
        snippets = self._resolve(uri, snapshot.grammar, imports, documents, budget_ms)
        self._resolved[uri] = (key, now, snippets)
        return snippets

    def _resolve(self, uri: str, grammar: str, imports: list[Import], documents: dict[str, Document], budget_ms: float) -> list[Snippet]:
        deadline = time.perf_counter() + budget_ms / 1000.0
        here = uri_to_path(uri)
        open_by_path: dict[Path, Document] = {}
        for other in documents.values():
            other_path = uri_to_path(other.uri)
            if other_path is not None and other.uri != uri:
                open_by_path[normalize_path(other_path)] = other
        out: list[Snippet] = []
        files_read = 0
        for item in imports:
            if time.perf_counter() > deadline or files_read >= MAX_FILES or len(out) >= MAX_SNIPPETS:
                break
            for path in self._candidates(item.module, grammar, here):
                document = open_by_path.get(path)
                if document is None and not (self._inside(path) and path.is_file()):
                    continue
                files_read += 1
                definitions = self._definitions(path, document, grammar)
                order = {name: i for i, name in enumerate(item.names)}
                chosen = [d for d in definitions if d.name in order or (item.default and d.default_export)]
                chosen.sort(key=lambda d: order.get(d.name, -1) if not d.default_export else -1)
                for definition in chosen[: MAX_SNIPPETS - len(out)]:
                    out.append(Snippet(relative_display(path.as_uri(), self.roots), definition.render(), "definition"))
                break
        return out

    def _candidates(self, module: str, grammar: str, here: Path | None) -> list[Path]:
        out: list[Path] = []
        if grammar == "python":
            dots = len(module) - len(module.lstrip("."))
            parts = [p for p in module.lstrip(".").split(".") if p]
            bases: list[Path] = []
            if dots and here is not None:
                base = here.parent
                for _ in range(dots - 1):
                    base = base.parent
                bases = [base]
            elif not dots:
                bases = ([here.parent] if here is not None else []) + [r for root in self.roots for r in (root, root / "src")]
            for base in bases:
                stem = base.joinpath(*parts) if parts else base
                out += [stem.with_name(stem.name + ".py"), stem / "__init__.py"] if parts else [stem / "__init__.py"]
        else:
            if not module.startswith((".", "/")) or here is None:
                return []  # a package import (node_modules): not resolved
            stem = (here.parent / module) if module.startswith(".") else Path(module)
            out.append(stem)
            out += [stem.with_name(stem.name + ext) for ext in _JS_EXTENSIONS]
            out += [stem / f"index{ext}" for ext in _JS_EXTENSIONS]
        return [normalize_path(p) for p in out]

    def _definitions(self, path: Path, document: Document | None, grammar: str) -> list[Definition]:
        target_grammar = _grammar_for_path(path, grammar)
        found = cached_source(self._files, self._max_cached, path, document, lambda source: definitions_in(target_grammar, source))
        return found or []


T = TypeVar("T")


def cached_source(
    cache: OrderedDict[tuple[str, object], T], bound: int, path: Path | None, document: Document | None, parse: Callable[[bytes], T]
) -> T | None:
    """`parse` of an open document's text (cached by uri and version) or else of the file at `path` (cached by
    path, mtime and size; None when it cannot be read or is over MAX_FILE_BYTES), at most MAX_FILE_BYTES of
    it, through `cache`: least recently used first out beyond `bound` entries."""
    if document is not None:
        key: tuple[str, object] = (document.uri, document.version)
        text = document.text
        read: Callable[[], bytes] = lambda: encode(text[:MAX_FILE_BYTES])
    elif path is not None:
        try:
            stat = path.stat()
        except OSError:
            return None
        if stat.st_size > MAX_FILE_BYTES:
            return None
        key = (str(path), (stat.st_mtime_ns, stat.st_size))
        file = path
        read = lambda: file.read_bytes()[:MAX_FILE_BYTES]
    else:
        return None
    cached = cache.get(key)
    if cached is not None:
        cache.move_to_end(key)
        return cached
    try:
        source = read()
    except OSError:
        return None
    value = cache[key] = parse(source)
    while len(cache) > bound:
        cache.popitem(last=False)
    return value


def normalize_path(path: Path) -> Path:
    """The resolved path (symlinks followed), or the normalized one when it cannot be resolved."""
    try:
        return path.resolve()
    except OSError:
        return Path(os.path.normpath(path))


def _grammar_for_path(path: Path, fallback: str) -> str:
    name = path.name
    if name.endswith(".py"):
        return "python"
    if name.endswith(".tsx"):
        return "tsx"
    if name.endswith(".ts"):
        return "typescript"
    if name.endswith((".js", ".jsx", ".mjs", ".cjs")):
        return "javascript"
    return fallback


_TITLES = {"definition": "from", "similar": "compare this snippet from", "recent": "recently edited in"}
# NOTE: what fills the budget first is not what comes first: similar code earns the most exact match (see
# bench/RESULTS.md, the ablation), definitions change least and so lead the prompt, where the prefix cache keeps them.
_BUDGET_PRIORITY = {"similar": 0, "definition": 1, "recent": 2}
_PROMPT_ORDER = {"definition": 0, "similar": 1, "recent": 2}


def render_context(snippets: list[Snippet] | tuple[Snippet, ...], language_id: str, max_chars: int) -> str:
    """The snippets as comments in the file's language, within `max_chars`, whole snippets only: chosen similar
    code first, then definitions, then recent edits, each kind in its given order; written definitions first
    (stable across keystrokes), then similar code, then recent edits. "" when there is nothing or no comment
    syntax."""
    marker = comment_prefix(language_id)
    if not marker or not snippets or max_chars <= 0:
        return ""

    def title(snippet: Snippet) -> str:
        return f"{marker} {_TITLES.get(snippet.kind, 'from')} {snippet.path}:"

    def lines(snippet: Snippet) -> list[str]:
        return [f"{marker} {line}".rstrip() for line in snippet.text.splitlines()]

    chosen: list[tuple[int, int]] = []
    used = 0
    for index, snippet in sorted(enumerate(snippets), key=lambda item: (_BUDGET_PRIORITY.get(item[1].kind, 3), item[0])):
        cost = len("\n".join([title(snippet), *lines(snippet)])) + 1  # its title counted even when shared
        if used + cost <= max_chars:
            chosen.append((_PROMPT_ORDER.get(snippet.kind, 3), index))
            used += cost
    blocks: list[str] = []
    last_header = ""
    for _, index in sorted(chosen):
        snippet = snippets[index]
        header = title(snippet)
        # NOTE: definitions of one file share a title; two similar windows of one file are two places, two titles
        repeat = header == last_header and snippet.kind != "similar"
        blocks.append("\n".join(([] if repeat else [header]) + lines(snippet)) + "\n")
        last_header = header
    return "".join(blocks)
