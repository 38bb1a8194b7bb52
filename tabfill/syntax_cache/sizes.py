"""What a cache entry costs in bytes, so that every cache can be bounded by bytes rather than by entries.

One estimate for all of them (cachetools' size-weighted caches take it as `getsizeof`): `sys.getsizeof` of the
value and of everything it holds — items of lists, tuples, sets and dicts, fields of dataclasses and slotted
objects (a window's text and word set, a definition's signature, a path's parts). Each object is counted once
per entry, except numbers, counted wherever they occur (so that an entry's size does not change when one of
its fields takes another field's value), and True, False and None, which are shared singletons and cost nothing.
Objects of other kinds (enums, classes, native handles) count their own size only.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Hashable, MutableMapping
from typing import TypeVar

_SEQUENCES = (list, tuple, set, frozenset)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_FIELDS: dict[type, tuple[str, ...]] = {}  # per class: what approx_bytes follows in its objects (see _fields)


def approx_bytes(value: object) -> int:
    """Bytes `value` keeps alive: itself and, recursively, what its containers and fields hold."""
    # NOTE: written for speed (about a microsecond an object): windows of a large file are some 60,000 objects
    seen: set[int] = set()
    total = 0
    stack = [value]
    pop, extend, getsizeof = stack.pop, stack.extend, sys.getsizeof
    while stack:
        item = pop()
        kind = type(item)
        if kind is int or kind is float:
            total += getsizeof(item)
            continue
        if item is None or kind is bool or id(item) in seen:
            continue
        seen.add(id(item))
        total += getsizeof(item)
        if kind is str or kind is bytes:
            continue
        if isinstance(item, _SEQUENCES):
            extend(item)
        elif isinstance(item, dict):
            extend(item.keys())
            extend(item.values())
        else:
            names = _FIELDS.get(kind)
            if names is None:
                names = _FIELDS[kind] = _fields(kind)
            extend(getattr(item, name) for name in names if hasattr(item, name))
    return total


def _fields(kind: type) -> tuple[str, ...]:
    """What approx_bytes follows in an object of class `kind`: its slots, and a dataclass's __dict__; nothing
    in objects of other classes (enums, classes, native handles)."""
    names: list[str] = []
    for cls in kind.__mro__:
        declared = cls.__dict__.get("__slots__", ())
        names += [declared] if isinstance(declared, str) else [name for name in declared if name not in ("__dict__", "__weakref__")]
    if dataclasses.is_dataclass(kind) and "__slots__" not in kind.__dict__:
        names.append("__dict__")  # a dataclass without slots keeps its fields there
    return tuple(names)


def keep(cache: MutableMapping[K, V], key: K, value: V) -> V:
    """`cache[key] = value` for a size-weighted cache, except that a value larger than the whole bound is
    returned without being kept (cachetools refuses it with ValueError)."""
    try:
        cache[key] = value
    except ValueError:
        pass
    return value
