"""The front-end path (the language server, the completion service and what they import) starts without
torch or transformers: only the in-process TokenSource imports them, when it is opened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


HEAVY = "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"


def run(code: str, timeout: float = 120) -> str:
    """stdout of `code` in a fresh interpreter with this checkout on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, check=True)
    return result.stdout + result.stderr


def test_the_front_end_imports_neither_torch_nor_transformers() -> None:
    output = run("import sys\nimport tabfill.lsp_server.server, tabfill.completion.service, tabfill.completion.sources\n" + HEAVY)
    assert output.startswith("[]\n"), output


def test_serve_preloads_torch_for_an_in_process_model_only() -> None:
    """`tabfill serve` imports what the in-process source needs before it reads requests (so the loader
    thread does not stall the event loop on imports), and nothing of it for a server engine; transformers
    only for fp32 weights (the default GGUF path reads its config and tokenizer without it)."""
    code = (
        "import sys\n"
        "from tabfill.completion.sources import preload\n"
        "from tabfill.completion.types import Settings\n"
        "preload(Settings(engine='tcp://box:7000'))\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
        "preload(Settings(device='cpu'))\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
        "preload(Settings(device='cpu', quantize='none'))\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    output = run(code, timeout=300)
    assert output.split("\n")[:3] == ["False False", "True False", "True True"], output


def test_the_command_line_parser_imports_neither_torch_nor_transformers() -> None:
    """`tabfill serve` parses the whole command line first, `engine` included: that must stay light."""
    output = run("import sys\nfrom tabfill.cli import build_parser\nbuild_parser().parse_args(['serve'])\n" + HEAVY)
    assert output.startswith("[]\n"), output


def test_the_engine_in_front_of_an_openai_server_imports_neither_torch_nor_transformers() -> None:
    """`tabfill engine --backend openai+http://…` is a gateway: tokens, tenants and scheduling, no model."""
    code = (
        "import sys\n"
        "import tabfill.cli, tabfill.engine_server.main, tabfill.engine_server.openai_backend\n"
        "import tabfill.engine_server.server, tabfill.engine_server.scheduler\n"
    )
    output = run(code + HEAVY)
    assert output.startswith("[]\n"), output


def test_every_command_sets_passive_openmp_before_torch_loads() -> None:
    """torch's spinning OpenMP threads took the cores from the quantized kernels' pool between the two: small
    forwards (deadline-cut prefill chunks, draft checks) ran 1.7-2.5x slower. libgomp reads the policy when it
    loads, so it is set before a command imports torch; a value in the environment wins."""
    code = (
        "import os, sys\n"
        "from tabfill import cli\n"
        "cli.cmd_stats = lambda args: print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules) or 0\n"
        "cli.main(['stats'])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    for preset, expected in ((None, "PASSIVE False"), ("ACTIVE", "ACTIVE False")):
        child = {**env, "PYTHONPATH": str(ROOT), **({"OMP_WAIT_POLICY": preset} if preset else {})}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child, timeout=120, check=True)
        assert result.stdout.strip() == expected, result.stdout + result.stderr
