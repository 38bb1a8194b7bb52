"""The BatchedEngine's request and event values, without torch (tabfill.completion.batch_types)."""

from __future__ import annotations

from tabfill.completion.batch_types import BackendUnavailable, BatchEvent, BatchRequest

__all__ = ["BackendUnavailable", "BatchEvent", "BatchRequest"]
