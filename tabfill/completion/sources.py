"""Opening the TokenSource that `Settings.engine` names: a registry of scheme -> opener.

"" or "local": the model in this process (torch, and transformers unless the model is computed from its
converted GGUF, are imported here, when it is opened, and nowhere else on the front-end's path). Other kinds
register one line each in OPENERS (the team engine as "tcp"/"tcps", OpenAI-compatible servers as
"openai+http"/"openai+https").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tabfill.completion.models import ModelError, ProgressFn
from tabfill.completion.source import TokenSource
from tabfill.completion.types import Settings

Opener = Callable[[Settings, ProgressFn], TokenSource]

# Prefix store: KV blocks of this many tokens (the granularity at which prompts share cached prefixes).
PREFIX_BLOCK_TOKENS = 32


def open_local(settings: Settings, progress: ProgressFn) -> TokenSource:
    """Load the configured model into this process, on the lean decoder where it can, and warm it up."""
    import dataclasses

    import torch

    from tabfill.completion.engine import Engine
    from tabfill.completion.fim import detect_template
    from tabfill.completion.models import load_model
    from tabfill.completion.prefix_cache import PrefixCache
    from tabfill.completion.runners import make_runner
    from tabfill.completion.settings import kv_slot_tokens
    from tabfill.completion.types import EngineInfo

    # quantize auto/gguf: on CPU a model with a GGUF is mapped, not loaded as fp32 (models.load_model)
    loaded = load_model(settings.model, settings.device, progress, quantize=settings.quantize)
    template = detect_template(loaded.tokenizer)
    info = EngineInfo(
        loaded.source, loaded.device, loaded.dtype, loaded.load_ms, template.name if template else "prefix-only", loaded.import_ms
    )
    runner = make_runner(
        loaded.model,
        torch.device(loaded.device),
        max_tokens=kv_slot_tokens(settings),
        quantize=None if settings.quantize == "none" else settings.quantize,
        lean=settings.lean_forward,
    )
    store = PrefixCache(PREFIX_BLOCK_TOKENS, settings.prefix_cache_mb * 2**20, resident=True) if settings.prefix_cache_mb else None
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, info, runner=runner, prefix_cache=store)
    engine.info = dataclasses.replace(info, warmup_ms=engine.warm_up())
    from tabfill.completion.heap import trim

    trim()  # what loading freed (tens of MB of temporaries) goes back to the system
    return engine


# What opening the in-process source imports (seconds of work that holds the GIL).
LOCAL_MODULES = ("torch", "tabfill.completion.engine", "tabfill.completion.runners", "tabfill.kernels")


def uses_transformers(settings: Settings) -> bool:
    """Whether the in-process model will be loaded through transformers: fp32 weights (quantize none, or the
    transformers forward), or CUDA. On CPU a model with a converted GGUF (the presets, a pulled .gguf) reads
    its config and tokenizer without it (completion.gguf_models); NOTE: a model with no GGUF at all then
    imports transformers while it loads, on the loader thread."""
    from tabfill.completion.models import QUANTIZE_AUTO, pick_device

    if settings.quantize not in (QUANTIZE_AUTO, "gguf") or not settings.lean_forward:
        return True
    try:
        return pick_device(settings.device) != "cpu"  # the GGUF path is CPU only (models.load_model)
    except ModelError:  # CUDA asked for and absent: the load fails and says so; nothing to import for it
        return False


def preload(settings: Settings) -> None:
    """Import now what opening `settings.engine` will import: `tabfill serve` calls it before it reads its
    input, so that loading the model later does not stall the event loop on imports."""
    if scheme(settings.engine) in ("", "local"):
        for name in LOCAL_MODULES:
            importlib.import_module(name)
        if uses_transformers(settings):
            importlib.import_module("transformers")
    elif scheme(settings.engine) in ("openai+http", "openai+https"):
        importlib.import_module("tabfill.completion.openai_source")  # httpx and tokenizers


def open_openai(settings: Settings, progress: ProgressFn) -> TokenSource:
    """An OpenAI-compatible server (vLLM, SGLang, llama.cpp's server): completion.openai_source."""
    from tabfill.completion.openai_source import open_openai_source

    return open_openai_source(settings, progress)


def open_team(settings: Settings, progress: ProgressFn) -> TokenSource:
    """A team engine (`tabfill engine`) at tcp:// or tcps:// (completion.remote: neither torch nor transformers)."""
    from tabfill.completion.remote import open_team as open_remote_team

    return open_remote_team(settings, progress)


OPENERS: dict[str, Opener] = {
    "": open_local,
    "local": open_local,
    "tcp": open_team,
    "tcps": open_team,
    "openai+http": open_openai,
    "openai+https": open_openai,
}


def scheme(engine: str) -> str:
    """"tcp://box:7000" -> "tcp"; "local" -> "local"; "" -> ""."""
    return engine.split("://", 1)[0].lower() if "://" in engine else engine.strip().lower()


def open_source(settings: Settings, progress: ProgressFn) -> TokenSource:
    """The TokenSource `settings.engine` names; ModelError (for the user) when none can be opened."""
    opener = OPENERS.get(scheme(settings.engine))
    if opener is None:
        known = ", ".join(repr(name) for name in OPENERS if name)
        raise ModelError(f"unknown engine {settings.engine!r}: expected one of {known} (as scheme://address for a server)")
    return opener(settings, progress)
