"""bench/batch_step.py runs end to end on a tiny model (the timings themselves are the bench's business)."""

from __future__ import annotations

from pathlib import Path

from bench import batch_step
from tests.support import make_tiny_model_dir


def test_measure_reports_every_batch_size_against_the_single_row_step(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "model")
    results = batch_step.measure(model_dir, rows=(1, 2), steps=1, rounds=1, context=40, attention=True)
    single = results["single-row step ms (steps.decode_one_token)"]
    assert single > 0
    for n in (1, 2):
        assert results[f"batch {n} / single-row step"] == results[f"batch {n} step ms"] / single
        assert results[f"batch {n} ms per row"] == results[f"batch {n} step ms"] / n
    assert "attention 2 rows, one masked SDPA over a slot-range view ms/step (used)" in results
