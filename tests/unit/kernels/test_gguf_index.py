"""gguf_index reads the same tensors as gguf-py's reader, without making the metadata values into objects."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from tabfill.kernels.gguf_decoder import GgufFile
from tabfill.kernels.gguf_index import GgufError, read_index
from tabfill.kernels.quant import QuantError

TOKENS = 50_000  # a tokenizer's worth of strings in the metadata, as a real model file has


def write(path: Path, tokens: int = 16) -> Path:
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(2048)
    writer.add_rope_freq_base(10_000.0)
    writer.add_token_list([f"token{i}" for i in range(tokens)])
    writer.add_token_scores([0.5] * tokens)
    writer.add_array("tokenizer.ggml.merges", ["a b", "c d"])
    writer.add_bool("general.some_flag", True)
    writer.add_tensor("output_norm.weight", np.linspace(-1, 1, 64, dtype=np.float32))
    writer.add_tensor("half.weight", np.linspace(-1, 1, 128, dtype=np.float16).reshape(2, 64))
    q4_1 = np.random.default_rng(0).integers(0, 256, size=(3, 2 * 20), dtype=np.uint8)  # 3 rows of 64 values
    writer.add_tensor("blk.0.attn_q.weight", q4_1, raw_shape=(3, 40), raw_dtype=GGMLQuantizationType.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_index_has_gguf_pys_tensors(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf")
    values, tensors = read_index(path)
    assert values["general.architecture"] == "llama"
    reader = GGUFReader(str(path), "r")
    assert sorted(tensors) == sorted(t.name for t in reader.tensors)
    for expected in reader.tensors:
        got = tensors[expected.name]
        assert got.tensor_type == expected.tensor_type
        assert got.shape == tuple(int(d) for d in expected.shape)
        assert (got.data_offset, got.n_bytes) == (expected.data_offset, expected.n_bytes)
        assert got.data.dtype == expected.data.dtype and got.data.shape == expected.data.shape
        assert np.array_equal(np.asarray(got.data), np.asarray(expected.data))


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.3, 0.99])
def test_a_cut_file_raises(tmp_path: Path, keep: float) -> None:
    path = write(tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises((GgufError, ValueError)):
        read_index(path)


def test_opening_a_model_file_does_not_make_its_tokenizer_into_objects(tmp_path: Path) -> None:
    """gguf-py's reader made a numpy array of every part of every string: ~145 MB for SmolLM2's GGUF."""
    path = write(tmp_path / "m.gguf", tokens=TOKENS)
    tracemalloc.start()
    try:
        gguf = GgufFile(path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gguf.architecture == "llama" and gguf.matrix("blk.0.attn_q.weight").rows == 3
    assert peak < 2 << 20, f"opening the file allocated {peak:,} bytes at its peak for {TOKENS:,} tokens of metadata"
    with pytest.raises(QuantError):
        GgufFile(tmp_path / "missing.gguf")
