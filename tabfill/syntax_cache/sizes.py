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

_TEXTS = (str, bytes)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def approx_bytes(value: object) -> int:
    """Bytes `value` keeps alive: itself and, recursively, what its containers and fields hold."""
    seen: set[int] = set()
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, (int, float)):
            total += sys.getsizeof(item)
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, _TEXTS) or isinstance(item, type):
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and hasattr(item, "__dict__"):
            stack.append(vars(item))
        else:
            for cls in type(item).__mro__:
                slots = getattr(cls, "__slots__", ())
                for name in (slots,) if isinstance(slots, str) else slots:
                    if name not in ("__dict__", "__weakref__") and hasattr(item, name):
                        stack.append(getattr(item, name))
    return total


def keep(cache: MutableMapping[K, V], key: K, value: V) -> V:
    """`cache[key] = value` for a size-weighted cache, except that a value larger than the whole bound is
    returned without being kept (cachetools refuses it with ValueError)."""
    try:
        cache[key] = value
    except ValueError:
        pass
    return value
