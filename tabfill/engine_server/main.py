"""`tabfill engine`: load the model once, start the scheduler thread and serve front-ends over TCP (+TLS)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from tabfill.completion import wire
from tabfill.engine_server.tokens import TokenFileError, TokenStore, add_tenant

if TYPE_CHECKING:  # NOTE: imported when serving: the scheduler's values come with torch, and `tabfill` parses
    from tabfill.engine_server.scheduler import StepEngine  # its command line (this module) for every command
    from tabfill.engine_server.server import EngineServer, ModelCard

log = logging.getLogger(__name__)

PREFIX_BLOCK_TOKENS = 32


def add_arguments(engine: argparse.ArgumentParser) -> None:
    engine.add_argument("--listen", default="127.0.0.1:7420", metavar="HOST:PORT", help="where to listen (default 127.0.0.1:7420)")
    engine.add_argument("--tokens", type=Path, help="the token file (`tabfill engine token add` writes it)")
    engine.add_argument("--model", default="default", help="'default', a Hugging Face directory or a .gguf file")
    engine.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    engine.add_argument("--quantize", default="auto", choices=("auto", "gguf", "none"),
                        help="on CPU, compute from a GGUF model's own quantized blocks (auto: when the model has a GGUF; "
                        "none: fp32 weights)")
    engine.add_argument("--tls-cert", type=Path, help="PEM certificate: serve TLS (front-ends use tcps://)")
    engine.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    engine.add_argument("--max-frame-bytes", type=int, default=wire.DEFAULT_MAX_FRAME_BYTES, help="largest frame accepted (default 1 MiB)")
    engine.add_argument("--slots", type=int, default=8, help="generations decoded together (KV slots)")
    engine.add_argument("--kv-tokens", type=int, default=1024, help="positions per KV slot (prompt + answer)")
    engine.add_argument("--prefill-step-ms", type=float, default=60.0,
                        help="size prefill chunks so a step takes about this long (how long a cold prompt delays the others' next "
                        "token; 0: fixed chunks of 128 tokens)")
    engine.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering busy")
    engine.add_argument("--prefix-cache-mb", type=int, default=128, help="prefix KV store (per tenant with the serial backend)")
    engine.add_argument("--backend", default="auto", type=_backend,
                        help="batched: continuous batching over --slots KV slots; serial: one generation at a time; auto: batched when "
                        "built in; openai+http(s)://HOST:PORT/v1: forward generation to an OpenAI-compatible server (vLLM, SGLang, "
                        "llama.cpp) with --slots streams at once, keeping tokens, tenants, limits and scheduling here")
    engine.add_argument("--backend-model", default="", metavar="NAME",
                        help="with an openai+ backend: the served model's name and/or where its tokenizer is here (default: the server's)")
    engine.add_argument("--backend-api-key", default="", metavar="KEY",
                        help="with an openai+ backend: its API key (default: $TABFILL_ENGINE_API_KEY)")
    engine.add_argument("--log-prompts", action="store_true", help="log prompt token ids (source code!); off by default")
    commands = engine.add_subparsers(dest="engine_command")
    token = commands.add_parser("token", help="manage tenant tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    add = token_commands.add_parser("add", help="create (or replace) a tenant and print its new token once")
    add.add_argument("name")
    add.add_argument("--tokens", type=Path, dest="token_file", help="the token file (default: the engine's --tokens)")
    add.add_argument("--concurrent", type=int, default=0, help="at most this many generations at once (0: no limit)")
    add.add_argument("--rpm", type=int, default=0, help="at most this many requests per minute (0: no limit)")


def _backend(value: str) -> str:
    if value in ("auto", "batched", "serial") or value.startswith(("openai+http://", "openai+https://")):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: expected auto, batched, serial or openai+http(s)://HOST:PORT/v1")


def cmd_engine(args: argparse.Namespace) -> int:
    if getattr(args, "engine_command", None) == "token":
        return _token_add(args)
    if args.tokens is None:
        print("tabfill: --tokens FILE is required (create one with `tabfill engine token add NAME --tokens FILE`)", file=sys.stderr)
        return 2
    try:
        tokens = TokenStore(args.tokens)
    except (OSError, TokenFileError) as exc:
        print(f"tabfill: cannot read {args.tokens}: {exc}", file=sys.stderr)
        return 2
    if not len(tokens):
        print(f"tabfill: {args.tokens} has no tokens; add one with `tabfill engine token add NAME --tokens {args.tokens}`", file=sys.stderr)
        return 2
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            print("tabfill: --tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    from tabfill.engine_server.scheduler import Scheduler
    from tabfill.engine_server.server import EngineConfig, EngineServer

    from tabfill.completion import gc_pauses

    host, _, port = args.listen.rpartition(":")
    gc_pauses.install()
    with gc_pauses.loading():  # NOTE: before serving: the model's objects out of every later full collection
        card, engine, slots = open_backend(args)
    scheduler = Scheduler(engine, slots=slots, max_queue=args.max_queue)
    config = EngineConfig(max_frame_bytes=args.max_frame_bytes, log_prompts=args.log_prompts, max_new_tokens=min(512, args.kv_tokens // 2))
    server = EngineServer(card, scheduler, tokens, config)
    scheduler.start()
    try:
        asyncio.run(_serve(server, host or "127.0.0.1", int(port), context))
    finally:
        scheduler.close()
        close = getattr(engine, "close", None)
        if callable(close):
            close()
    return 0


async def _serve(server: EngineServer, host: str, port: int, context: ssl.SSLContext | None) -> None:
    listener = await server.listen(host, port, context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    where = ", ".join(str(sock.getsockname()[:2]) for sock in listener.sockets)
    # NOTE: this line is what scripts and tests wait for.
    print(f"tabfill engine: listening on {where} ({'tls' if context else 'plain tcp'}), model {server.card.name}", file=sys.stderr, flush=True)
    async with listener:
        await stop.wait()


def _token_add(args: argparse.Namespace) -> int:
    path = args.token_file or args.tokens
    if path is None:
        print("tabfill: give the token file with --tokens FILE", file=sys.stderr)
        return 2
    try:
        token = add_tenant(path, args.name, args.concurrent, args.rpm)
    except (OSError, TokenFileError) as exc:
        print(f"tabfill: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"tabfill: tenant {args.name!r} written to {path}; the token is shown only now", file=sys.stderr)
    return 0


def open_backend(args: argparse.Namespace) -> tuple[ModelCard, StepEngine, int]:
    """Load the model and build the batched engine (or the serial fallback, or connect to an OpenAI-compatible
    server); returns its slot count too."""
    if args.backend.startswith("openai+"):
        from tabfill.engine_server.openai_backend import open_openai_backend

        card, backend = open_openai_backend(args.backend, args.backend_model, args.backend_api_key, slots=args.slots, kv_tokens=args.kv_tokens)
        return card, backend, args.slots
    import torch

    from tabfill.completion.engine import Engine
    from tabfill.engine_server.server import ModelCard
    from tabfill.completion.models import load_model
    from tabfill.completion.prefix_cache import PrefixCache
    from tabfill.completion.runners import make_runner
    from tabfill.completion.types import EngineInfo

    def progress(stage: str, fraction: float | None) -> None:
        print(f"tabfill engine: {stage}", file=sys.stderr, flush=True)

    loaded = load_model(args.model, args.device, progress, quantize=args.quantize)
    tokenizer = loaded.tokenizer
    special: dict[str, Any] = {}
    for name in ("bos", "eos", "unk", "pad"):
        value = getattr(tokenizer, f"{name}_token", None)
        special[f"{name}_token"] = str(value) if value else None
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        special[f"{name}_token_id"] = token_id if isinstance(token_id, int) else None
    vocab_size = int(loaded.model.config.vocab_size)
    card = ModelCard(loaded.source, vocab_size, tokenizer.backend_tokenizer.to_str().encode(), special, args.kv_tokens)
    store_bytes = args.prefix_cache_mb * 2**20
    if args.backend in ("auto", "batched"):
        try:
            from tabfill.completion.batch_types import BatchRequest
            from tabfill.completion.batching import BatchedEngine, generate_all
        except ImportError:  # NOTE: a build without the batched engine
            if args.backend == "batched":
                raise SystemExit("tabfill: this build has no batched engine; use --backend serial") from None
        else:
            from tabfill.completion.types import Prompt, StopRule

            store = PrefixCache(PREFIX_BLOCK_TOKENS, store_bytes, resident=True) if store_bytes else None
            batched = BatchedEngine(
                loaded, tokenizer, loaded.device, slots=args.slots, max_tokens=args.kv_tokens, prefix_cache=store,
                prefill_budget_ms=args.prefill_step_ms or None,
            )
            # NOTE: one tiny generation first, so the first editor does not pay for kernel initialisation
            generate_all(batched, [BatchRequest("warm-up", Prompt((0, 0, 0, 0), 2, StopRule()), b"warm-up", 0.0)])
            return card, batched, args.slots
    from tabfill.engine_server.serial import SerialEngine

    runner = make_runner(loaded.model, torch.device(loaded.device), max_tokens=args.kv_tokens, quantize=args.quantize, lean=True)
    info = EngineInfo(loaded.source, loaded.device, loaded.dtype, loaded.load_ms, "engine", loaded.import_ms)
    engine = Engine(loaded.model, tokenizer, loaded.device, info, runner=runner)
    engine.warm_up()
    log.warning("serving with the serial backend: one generation at a time")
    return card, SerialEngine(engine, store_bytes, PREFIX_BLOCK_TOKENS), 1
