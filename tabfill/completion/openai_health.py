"""Outages of a remote engine: one report when one starts, a backoff before the next attempt, one when over.

A keystroke during an outage is answered empty at once, without touching the network; the first request
after the backoff is the reconnect attempt, and its failure doubles the backoff (up to BACKOFF_MAX_S, or
what a 429's Retry-After asks). The user hears of an outage once, not once per keystroke.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0


class EngineOffline(Exception):
    """An HTTP answer that means the engine cannot serve (the message is for the user, never the key)."""

    def __init__(self, message: str, retry_after_s: float | None = None, outage: bool = True) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.outage = outage  # False: only this request was refused (HTTP 400/413/422); the server is fine


@dataclass(frozen=True)
class Outage:
    reason: str
    since: float
    failures: int
    retry_at: float


class Health:
    """Thread-safe outage state; `on_outage(message)` when an outage starts, `on_outage(None)` when over."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.on_outage: Callable[[str | None], None] | None = None
        self.outage: Outage | None = None
        self.outages = 0
        self.failures = 0
        self._lock = threading.Lock()

    def failed(self, reason: str, retry_after_s: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            previous = self.outage
            failures = 1 if previous is None else previous.failures + 1
            wait = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1))
            if retry_after_s is not None:
                wait = max(wait, min(retry_after_s, RETRY_AFTER_MAX_S))
            self.outage = Outage(reason, now if previous is None else previous.since, failures, now + wait)
            if previous is None:
                self.outages += 1
        log.warning("engine %s: %s (next attempt in %.1f s)", self.name, reason, wait)
        if previous is None:
            self._tell(f"engine unavailable: {reason}; retrying in the background")

    def recovered(self) -> None:
        with self._lock:
            previous, self.outage = self.outage, None
        if previous is not None:
            log.warning("engine %s is back after %.1f s", self.name, time.monotonic() - previous.since)
            self._tell(None)

    def in_backoff(self) -> bool:
        outage = self.outage
        return outage is not None and time.monotonic() < outage.retry_at

    def _tell(self, message: str | None) -> None:
        callback = self.on_outage
        if callback is not None:
            try:
                callback(message)
            except Exception:  # reporting is optional; serving goes on
                log.exception("on_outage callback failed")


async def offline_error(response: httpx.Response) -> EngineOffline:
    """An HTTP error status as EngineOffline with a message for the user (the body trimmed)."""
    try:
        detail = (await response.aread()).decode("utf-8", "replace").strip()[:200]
    except httpx.HTTPError:
        detail = ""
    status = response.status_code
    retry_after: float | None = None
    if status == 429:
        try:
            retry_after = float(response.headers.get("retry-after", ""))
        except ValueError:
            retry_after = None
    what = {401: "the engine rejected the API key", 403: "the engine refused access", 404: "no such endpoint or model",
            429: "the engine is rate-limiting"}.get(status)
    if what is None:
        what = "the engine failed" if status >= 500 else "the engine refused the request"
    outage = status in (401, 403, 404, 429) or status >= 500
    return EngineOffline(f"{what} (HTTP {status}{': ' + detail if detail else ''})", retry_after, outage)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    return str(exc) or type(exc).__name__
