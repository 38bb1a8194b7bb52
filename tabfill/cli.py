"""Command line: `tabfill serve | complete | engine | model pull | stats | doctor`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tabfill import __version__

if TYPE_CHECKING:
    from tabfill.completion.types import Settings

ONE_SHOT_DEADLINE_MS = 600_000  # `tabfill complete` waits for the whole answer unless --deadline-ms says otherwise


def _progress(stage: str, fraction: float | None) -> None:
    percent = "" if fraction is None else f"[{fraction:4.0%}] "
    print(f"tabfill: {percent}{stage}", file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> Settings:  # Settings is imported lazily: the CLI starts fast
    from tabfill.completion.types import Settings

    overrides: dict[str, Any] = {}
    for name in ("model", "device", "max_new_tokens", "deadline_ms", "engine", "engine_model"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from tabfill.completion import gc_pauses
    from tabfill.lsp_server.server import create_server

    gc_pauses.install()
    gc_pauses.hand_over_sooner()  # NOTE: the event loop gets the GIL back within 1 ms of asking, not 5

    server = create_server(_settings(args))
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io()
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from tabfill.completion.models import ModelError
    from tabfill.completion.service import CompletionService
    from tabfill.completion.types import CompletionRequest
    from tabfill.syntax_cache.document import Document

    import_ms = (time.perf_counter() - started) * 1000
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"tabfill: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    document = Document(path.resolve().as_uri(), _language_of(path), 0, text)
    if args.line < 0 or args.col < 0:
        print("tabfill: --line and --col are 0-based and must not be negative", file=sys.stderr)
        return 2
    line = min(args.line, document.line_count - 1)
    offset = min(document.line_start(line) + args.col, document.line_end(line))

    settings = _settings(args)
    if getattr(args, "deadline_ms", None) is None:
        # NOTE: one answer and no keystrokes to follow: the whole answer, not what an editor's deadline allows
        settings = dataclasses.replace(settings, deadline_ms=ONE_SHOT_DEADLINE_MS)
    service = CompletionService(settings)
    try:
        info = service.load(_progress).result()
    except ModelError as exc:
        print(f"tabfill: {exc}", file=sys.stderr)
        return 1
    request = CompletionRequest(document.uri, document.language_id, 0, text, offset, "cli")
    completion = service.complete(request)
    service.close()
    print(completion.text)
    stages = " ".join(f"{name}={ms:.1f}ms" for name, ms in completion.timings.stages)
    print(
        f"--- model={info.source} device={info.device} dtype={info.dtype} template={info.template} "
        f"finish={completion.finish_reason or completion.source}\n"
        f"--- timings: import={import_ms + info.import_ms:.0f}ms load={info.load_ms:.0f}ms warmup={info.warmup_ms:.0f}ms {stages} "
        f"total={completion.timings.total_ms:.1f}ms",
        file=sys.stderr,
    )
    return 0


def cmd_model_pull(args: argparse.Namespace) -> int:
    from tabfill.completion.models import SPLIT_PRESETS, ModelError, pull_default, pull_split, resolve_model

    try:
        if args.model in (None, "default"):
            path = pull_default(_progress, force=args.force)
        elif args.model.lower() in SPLIT_PRESETS:
            path = pull_split(SPLIT_PRESETS[args.model.lower()], _progress, force=args.force)
        else:
            path = Path(resolve_model(args.model, _progress))
    except ModelError as exc:
        print(f"tabfill: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if getattr(args, "engine", None):
        return _doctor_engine(args)
    import torch

    from tabfill.completion.models import SPLIT_PRESETS, cache_root, default_model_dir, pick_device, preset_dir, recommend_preset
    from tabfill.kernels import select_backend, supports

    device = pick_device(getattr(args, "device", None) or "auto")
    print(f"tabfill {__version__}, python {sys.version.split()[0]}, torch {torch.__version__}")
    print(f"device: {device} (cuda available: {torch.cuda.is_available()}), threads: {torch.get_num_threads()}")
    print(f"dtype: {'bf16/fp16' if device.startswith('cuda') else 'fp32'} (no native bf16 assumed on CPU)")
    backend, why = select_backend(torch.device(device))
    print(f"attention backend: {backend} ({why})")
    print(f"cache: {cache_root()}")
    preset, why = recommend_preset(device, os.cpu_count() or 1)
    print(f"suggested preset: {preset} ({why})")
    for name in SPLIT_PRESETS:
        pulled_preset = (preset_dir(name) / "model.safetensors").is_file()
        print(f"{name}: {'converted' if pulled_preset else f'not pulled: run `tabfill model pull {name}`'}")
    pulled = (default_model_dir() / "model.safetensors").is_file()
    print(f"default model: {default_model_dir()} ({'converted' if pulled else 'not pulled: run `tabfill model pull`'})")
    if pulled:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(default_model_dir())
        forward = "lean kernels/ forward" if supports(config) else "transformers forward (no lean forward for this architecture)"
        print(f"default model forward: {forward} ({config.model_type}); prefix KV store and prompt-lookup drafts on")
    return 0


def _doctor_engine(args: argparse.Namespace) -> int:
    """`tabfill doctor --engine openai+http://…`: what the server is, which extras are on, how prompts go."""
    from tabfill.completion.openai_source import open_openai_source

    try:
        source = open_openai_source(_settings(args), _progress)
    except ValueError as exc:
        print(f"tabfill: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"tabfill {__version__}, python {sys.version.split()[0]}")
        for key, value in source.describe().items():
            print(f"engine {key}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
        print(f"engine FIM template: {source.info.template}")
        return 1 if source.health.outage is not None else 0
    finally:
        source.close()


def cmd_stats(args: argparse.Namespace) -> int:
    import json

    from tabfill.lsp_server.stats import format_table, read_stats, reset, stats_path, summary

    path = stats_path()
    if args.reset:
        reset(path)
        print(f"tabfill: cleared {path}", file=sys.stderr)
        return 0
    rows = summary(read_stats(path))
    if args.json:
        print(json.dumps({"path": str(path), "languages": rows}, indent=2))
        return 0
    if rows[-1]["requests"] == 0 and rows[-1]["shown"] == 0:
        print(f"no completions recorded yet ({path})")
        return 0
    print(format_table(rows))
    print("\nrate = accepted / shown, over the suggestions the editor reported as shown ('unknown' for an editor that "
          "reports none, e.g. VS Code); latency = the server's answer time over the last requests. "
          f"Local only: {path}")
    return 0


_LANGUAGES = {
    ".py": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascriptreact",
    ".ts": "typescript", ".tsx": "typescriptreact", ".go": "go", ".rs": "rust", ".c": "c", ".h": "c",
    ".cpp": "cpp", ".java": "java", ".lua": "lua", ".rb": "ruby", ".sh": "shellscript",
}


def _language_of(path: Path) -> str:
    return _LANGUAGES.get(path.suffix.lower(), "plaintext")


def _engine_main() -> ModuleType:  # the module, imported lazily like every command's
    from tabfill.engine_server import main

    return main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tabfill", description="Self-hosted code completion over LSP.")
    parser.add_argument("--version", action="version", version=f"tabfill {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("--log-file", help="write logs here (default: stderr)")
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", help="'default', 'qwen2.5-coder-1.5b', a Hugging Face directory, a .gguf file or a hub id")
        sub.add_argument("--device", help="auto | cpu | cuda | cuda:N")
        sub.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
        sub.add_argument("--deadline-ms", type=int, dest="deadline_ms", help="per-request deadline (0: by device; `complete` waits for the whole answer by default)")
        engine_options(sub)

    def engine_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--engine", help="where tokens come from: '' (this process), tcp(s)://HOST:PORT (a team engine; "
                         "token from the engineToken setting or TABFILL_ENGINE_TOKEN) or openai+http(s)://HOST:PORT/v1 "
                         "(vLLM, SGLang, llama.cpp server; API key from TABFILL_ENGINE_API_KEY)")
        sub.add_argument("--engine-model", dest="engine_model", help="the served model's name and/or its tokenizer here "
                         "('default', a directory, a .gguf, a cached hub id)")

    serve = commands.add_parser("serve", help="run the language server (stdio by default)")
    serve.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead (for debugging)")
    model_options(serve)
    serve.set_defaults(func=cmd_serve)

    complete = commands.add_parser("complete", help="print a completion at a position of a file")
    complete.add_argument("file")
    complete.add_argument("--line", type=int, required=True, help="0-based line")
    complete.add_argument("--col", type=int, required=True, help="0-based column in characters (code points); clamped to the line's end")
    model_options(complete)
    complete.set_defaults(func=cmd_complete)

    model = commands.add_parser("model", help="manage models")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    pull = model_commands.add_parser("pull", help="fetch, verify and convert a model: default (SmolLM2-135M) or qwen2.5-coder-1.5b")
    pull.add_argument("model", nargs="?", default="default")
    pull.add_argument("--force", action="store_true", help="convert again even if already converted")
    pull.set_defaults(func=cmd_model_pull)

    stats = commands.add_parser("stats", help="acceptance rate and latency percentiles per language (local counts)")
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")
    stats.add_argument("--reset", action="store_true", help="forget all counts")
    stats.set_defaults(func=cmd_stats)

    engine = commands.add_parser("engine", help="serve one model to many editors (the team engine; see docs/ENGINE_PROTOCOL.md)")
    _engine_main().add_arguments(engine)
    engine.set_defaults(func=lambda args: _engine_main().cmd_engine(args))

    doctor = commands.add_parser("doctor", help="print device, dtype and model state")
    doctor.add_argument("--device")
    engine_options(doctor)
    doctor.set_defaults(func=cmd_doctor)
    return parser


OMP_WAIT_POLICY = "PASSIVE"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handler: logging.Handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=level, handlers=[handler], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch is imported (libgomp reads it when it loads): torch's OpenMP threads sleep when a parallel
    # region ends instead of spinning on the cores that the quantized kernels' own thread pool wants next.
    # NOTE: measured on the 2-core AVX2 box with SmolLM2's GGUF: a forward of 4 / 8 / 32 tokens (deadline-cut
    # prefill chunks, draft checks) took 92 / 92 / 210 ms spinning and 37 / 59 / 124 ms passive; one token
    # 13.5 vs 12.4 ms; 128 tokens 399 vs 422 ms. In a typing replay 98 of 133 requests were answered before
    # the next key instead of 63. OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    from tabfill.completion import heap  # light: ctypes only

    heap.map_large_blocks()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
