"""Checks of a candidate completion against the parse of (a window of) the prefix followed by it."""

from __future__ import annotations

import logging

from tree_sitter import Node, Tree

from tabfill.syntax_cache.tree import encode, parse_source

log = logging.getLogger(__name__)

_CLOSERS = (")", "]", "}")


def _parse(grammar: str, text: str) -> tuple[Tree, bytes] | None:
    source = encode(text)
    try:
        tree = parse_source(grammar, source)
    except Exception as exc:  # never let a probe cost the completion
        log.debug("probe parse failed: %s", exc)
        return None
    return None if tree is None else (tree, source)


def _cp_index(source: bytes, start_byte: int, byte: int) -> int:
    """Code points between byte offsets start_byte and byte of `source`."""
    return len(source[start_byte:byte].decode("utf-8", "surrogatepass"))


def block_end(grammar: str, probe_prefix: str, candidate: str, next_code: str) -> int | None:
    """Where `candidate` (inserted after `probe_prefix`) leaves the syntactic block around the cursor, as a
    code-point index into `candidate`; None when the parse does not close that block inside the candidate.

    The block is the innermost node that starts before the cursor's line (a function, a class, a statement
    block, an argument list). When it ends with a closing bracket that the text after the cursor already
    starts with (`next_code`), the cut is before that bracket, else after it.
    """
    if not probe_prefix or not candidate.strip():
        return None
    parsed = _parse(grammar, probe_prefix + candidate)
    if parsed is None:
        return None
    tree, source = parsed
    cursor_byte = len(encode(probe_prefix))
    cursor_line_byte = source.rfind(b"\n", 0, cursor_byte) + 1
    first_code = cursor_byte + (len(source[cursor_byte:]) - len(source[cursor_byte:].lstrip()))
    if first_code >= len(source):
        return None
    node: Node | None = tree.root_node.descendant_for_byte_range(first_code, first_code + 1)
    while node is not None and node.parent is not None:
        if node.start_byte < cursor_line_byte:
            break
        node = node.parent
    while True:
        if node is None or node.parent is None or node.type == "ERROR" or node.is_missing:
            return None  # the cursor is at the top level, or the parse could not tell
        end_byte = node.end_byte
        if end_byte <= first_code or end_byte >= len(source) or not source[end_byte:].strip():
            return None  # the block goes on past the candidate, or nothing follows it
        last = node.children[-1] if node.children else None
        if last is not None and last.type in _CLOSERS and last.start_byte >= cursor_byte and not last.is_missing:
            if next_code == last.type:
                end_byte = last.start_byte  # the text after the cursor already closes it
                break
            # NOTE: the candidate writes the closer itself (e.g. the end of a parameter list): the construct
            # around it (the function) is what the completion finishes.
            node = node.parent
            continue
        break
    cut = _cp_index(source, cursor_byte, end_byte)
    kept = candidate[:cut]
    return cut if kept.strip() else None


def ends_incomplete(grammar: str, probe_prefix: str, candidate: str) -> bool:
    """True when the candidate's last line makes the parse fail and the candidate without it does not
    (a line cut off by the token limit or the deadline)."""
    if "\n" not in candidate.rstrip("\n"):
        return False
    whole = _parse(grammar, probe_prefix + candidate)
    if whole is None or not whole[0].root_node.has_error:
        return False
    shorter = _parse(grammar, probe_prefix + candidate.rstrip("\n").rsplit("\n", 1)[0])
    return shorter is not None and not shorter[0].root_node.has_error
