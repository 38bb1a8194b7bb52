"""The front-end path (the language server, the completion service and what they import) starts without
torch or transformers: only the in-process TokenSource imports them, when it is opened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_front_end_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "import tabfill.lsp_server.server, tabfill.completion.service, tabfill.completion.sources\n"
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
