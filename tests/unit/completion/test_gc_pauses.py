"""gc_pauses in a process of its own (it freezes the whole process's objects: not in the test runner's)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gc, json, time
    from tabfill.completion import gc_pauses

    gc_pauses.after_load()  # not installed: no freeze
    before = gc.get_freeze_count()
    gc_pauses.install()
    gc_pauses.install()  # idempotent: one callback
    loaded = [[i] for i in range(200_000)]  # what a model load leaves behind (lists are always tracked)
    gc_pauses.after_load()
    frozen = gc.get_freeze_count()
    started = time.perf_counter(); gc.collect(); full_ms = (time.perf_counter() - started) * 1000
    gc_pauses.before_load()
    print(json.dumps({"before": before, "frozen": frozen, "after_unfreeze": gc.get_freeze_count(),
                      "callbacks": len(gc.callbacks), "full_ms": full_ms, "described": gc_pauses.describe()}))
    """
)


def test_after_a_load_a_full_collection_skips_what_was_frozen_and_pauses_are_counted() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(out.stdout)
    assert result["before"] == 0  # library use (not installed) never freezes
    assert result["frozen"] >= 200_000
    assert result["after_unfreeze"] == 0  # a reload unfreezes first
    assert result["callbacks"] == 1
    described = result["described"]
    assert described["installed"] is True and described["frozenObjects"] == result["frozen"]
    full = described["generation2"]
    assert full["collections"] == 1  # the one timed above: loading's own (after_load's) is not a request's pause
    assert len(described["recentFullMs"]) == 1
    assert abs(full["longestMs"] - full["totalMs"]) <= 0.1  # one collection: the longest is the total (rounded apart)
