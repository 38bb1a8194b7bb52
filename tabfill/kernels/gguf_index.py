"""The tensors of a GGUF file, read from its header without reading its metadata values.

gguf-py's `GGUFReader` makes a numpy array for every part of every metadata value: a tokenizer stored in
the file (SmolLM2's 49,152 tokens and 48,900 merges) becomes some 400,000 arrays, ~145 MB of small objects
for the second it takes to open the file, and the heap they leave behind stays with the process. The
decoder needs only the tensors' names, types, shapes and bytes, and `general.architecture`: this index
steps over every other value, and maps the tensors' bytes as gguf-py does (a read-only memory map; the
arrays are views of it, nothing is copied).

Little-endian GGUF v2 and v3 (what llama.cpp writes); a file that is cut short or does not add up raises
`GgufError` (a ValueError) saying where.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = 0x46554747  # b"GGUF" read as a little-endian uint32
DEFAULT_ALIGNMENT = 32
# value types: uint8, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_PLAIN_DTYPES = {
    GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


class GgufError(ValueError):
    pass


@dataclass(frozen=True)
class GgufTensor:
    """One tensor as gguf-py's ReaderTensor has it: `shape` in GGML order (columns first); `data` a view of the
    mapped file, shaped rows first (quantized types: uint8 [..., bytes of a row])."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]
    n_bytes: int
    data_offset: int
    data: np.ndarray


class _Cursor:
    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer: memoryview = buffer.data  # what struct reads from (the mapped bytes, no copy)
        self.offset = 0

    def take(self, size: int) -> int:
        start = self.offset
        if size < 0 or start + size > len(self.buffer):
            raise GgufError(f"the header runs past the end of the file (byte {start:,} + {size:,} of {len(self.buffer):,})")
        self.offset = start + size
        return start

    def unpack(self, fmt: str) -> tuple[int, ...]:
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buffer, start)

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        start = self.take(length)
        return bytes(self.buffer[start : start + length]).decode("utf-8", "replace")

    def skip_string(self) -> None:
        (length,) = self.unpack("<Q")
        self.take(length)

    def skip_value(self, kind: int) -> None:
        if kind in _SCALAR_BYTES:
            self.take(_SCALAR_BYTES[kind])
        elif kind == _STRING:
            self.skip_string()
        elif kind == _ARRAY:
            item_kind, count = self.unpack("<IQ")
            if item_kind in _SCALAR_BYTES:
                self.take(_SCALAR_BYTES[item_kind] * count)
            else:
                for _ in range(count):
                    self.skip_value(item_kind)
        else:
            raise GgufError(f"unknown metadata value type {kind} at byte {self.offset:,}")


def read_index(path: str | Path) -> tuple[dict[str, object], dict[str, GgufTensor]]:
    """(the few metadata values the decoder reads: `general.architecture`, `general.alignment`; the tensors by
    name). Raises GgufError for a file that is not a whole little-endian GGUF v2/v3, OSError when unreadable."""
    mapped = np.memmap(path, mode="r", dtype=np.uint8)
    cursor = _Cursor(mapped)
    magic, version = cursor.unpack("<II")
    if magic != MAGIC:
        raise GgufError("not a GGUF file (no GGUF magic)")
    if version not in (2, 3):
        raise GgufError(f"GGUF version {version} is not supported (2 or 3, little-endian)")
    n_tensors, n_values = cursor.unpack("<QQ")
    values: dict[str, object] = {}
    for _ in range(n_values):
        key = cursor.string()
        (kind,) = cursor.unpack("<I")
        if key == "general.architecture" and kind == _STRING:
            values[key] = cursor.string()
        elif key == "general.alignment" and kind == 4:
            values[key] = cursor.unpack("<I")[0]
        else:
            cursor.skip_value(kind)
    infos = []
    for _ in range(n_tensors):
        name = cursor.string()
        (n_dims,) = cursor.unpack("<I")
        if not 1 <= n_dims <= 4:
            raise GgufError(f"tensor {name!r} has {n_dims} dimensions")
        dims = cursor.unpack(f"<{n_dims}Q")
        kind, offset = cursor.unpack("<IQ")
        infos.append((name, dims, kind, offset))
    alignment = int(values.get("general.alignment", DEFAULT_ALIGNMENT))  # type: ignore[call-overload]
    if alignment <= 0 or alignment & (alignment - 1):
        raise GgufError(f"general.alignment {alignment} is not a power of two")
    start = -(-cursor.offset // alignment) * alignment
    tensors: dict[str, GgufTensor] = {}
    for name, dims, kind, offset in infos:
        if name in tensors:
            raise GgufError(f"tensor {name!r} appears twice")
        try:
            ggml_type = GGMLQuantizationType(kind)
            block, type_bytes = GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError) as exc:
            raise GgufError(f"tensor {name!r} has unknown GGML type {kind}") from exc
        n_elements = int(np.prod(dims, dtype=np.int64))
        if dims[0] % block:
            raise GgufError(f"tensor {name!r}: {dims[0]} columns are not whole blocks of {block}")
        n_bytes = n_elements // block * type_bytes
        begin = start + offset
        if begin + n_bytes > len(mapped):
            raise GgufError(f"tensor {name!r} ends at byte {begin + n_bytes:,}, past the end of the file ({len(mapped):,} bytes)")
        rows_first = tuple(reversed(dims))
        raw = mapped[begin : begin + n_bytes]
        if ggml_type in _PLAIN_DTYPES:
            data = raw.view(_PLAIN_DTYPES[ggml_type]).reshape(rows_first)
        else:
            data = raw.reshape(*rows_first[:-1], dims[0] // block * type_bytes)
        tensors[name] = GgufTensor(name, ggml_type, tuple(int(d) for d in dims), n_bytes, begin, data)
    return values, tensors
