"""What a source file imports and what it defines, from its tree-sitter parse (Python, JavaScript/TypeScript):
the names cross-file context looks up, and the signature and first doc line each definition shows."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tree_sitter import Node

from tabfill.syntax_cache.languages import IDENTIFIER
from tabfill.syntax_cache.tree import SyntaxSnapshot, parse_source

log = logging.getLogger(__name__)


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
            match = IDENTIFIER.match(text, at + len(needle))
            if match:
                found.add(match.group())
        at = text.find(needle, at + len(needle))
    return tuple(sorted(found))


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


@dataclass(frozen=True, slots=True)  # NOTE: thousands per file in the caches: no __dict__ each
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


def _first_body_line(body: Node) -> str:
    """An arrow function's first body line, so `const gt = (a, b) => compare(a, b) > 0` keeps what it does:
    an expression body after the arrow, a block's first statement on the next line (then "...")."""
    if body.type != "statement_block":
        return " " + _text(body).split("\n", 1)[0].strip()[:200]
    statements = [child for child in body.named_children if child.type != "comment"]
    if not statements:
        return " {}"
    first = _text(statements[0]).split("\n", 1)[0].strip()[:200]
    return " {\n  " + first + ("\n  ..." if len(statements) > 1 or "\n" in _text(statements[0]) else "") + "\n}"


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
                    if value is not None and value.type == "arrow_function":
                        signature += _first_body_line(body)
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
