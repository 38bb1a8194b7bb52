"""Shared by the editor tests: a tiny model and what the server must answer at the end of SOURCE."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import make_tiny_model_dir

# The tiny model answers this with several words ("return return ..."): accept-word has something to split.
SOURCE = "import os\n\n\ndef read(path):\n    with open(path) as handle:\n        return "


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def reference_text(tiny_model: Path) -> str:
    """What the server must answer at the end of SOURCE, computed without the server or Neovim."""
    from tabfill.completion.service import CompletionService
    from tabfill.completion.types import CompletionRequest, Settings

    service = CompletionService(Settings(model=str(tiny_model), deadline_ms=60_000))
    service.load().result()
    try:
        text = SOURCE + "\n"  # Neovim sends the buffer with its final end of line
        completion = service.complete(CompletionRequest("file:///ref.py", "python", 1, text, len(SOURCE)))
    finally:
        service.close()
    assert len(completion.text.split()) >= 2 and not completion.text[0].isspace(), completion.text
    return completion.text
