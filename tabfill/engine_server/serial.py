"""A one-row stand-in for the BatchedEngine: the in-process Engine behind the same add/cancel/step API.

Used when the batched engine is not available (or `--backend serial`): requests run one at a time, in
priority order, each `step` a short slice of decoding so that cancels and supersedes land between slices.
Tenancy holds as with the batched engine: each tenant salt has its own prefix store, and the live slot is
emptied when the tenant changes, so no tenant starts from another's KV. The stores together hold at most
STORES_MAX_BYTES (each counts the `prefix_cache_bytes` its pool takes), least recently used tenant out.
"""

from __future__ import annotations

from cachetools import LRUCache

from tabfill.completion.engine import Decoding, Engine
from tabfill.completion.prefix_cache import PrefixCache
from tabfill.completion.types import CancelToken, Deadline
from tabfill.engine_server.batch_api import BatchEvent, BatchRequest

SLICE_MS = 40.0  # one step decodes for about this long (each slice re-forwards its last token: not shorter)
STORES_MAX_BYTES = 2 << 30  # the tenants' prefix stores together (at least one store, however large)


def store_bytes(store: PrefixCache | None) -> int:
    """What a tenant's store costs: the pool its first commit allocates (`max_bytes`), none without a store."""
    return store.max_bytes if store is not None else 0


class SerialEngine:
    def __init__(self, engine: Engine, prefix_cache_bytes: int, block_tokens: int = 32, stores_max_bytes: int = STORES_MAX_BYTES) -> None:
        self.engine = engine
        self.prefix_cache_bytes = prefix_cache_bytes
        self.block_tokens = block_tokens
        self._waiting: dict[str, BatchRequest] = {}
        self._current: tuple[BatchRequest, Decoding] | None = None
        self._sent: dict[str, tuple[int, str]] = {}  # per request: tokens and text already reported
        self._stores: LRUCache[bytes, PrefixCache | None] = LRUCache(max(stores_max_bytes, prefix_cache_bytes), getsizeof=store_bytes)
        self._salt: bytes | None = None

    @property
    def idle(self) -> bool:
        return self._current is None and not self._waiting

    def add(self, request: BatchRequest) -> None:
        runner = self.engine.runner
        needed = len(request.prompt.token_ids) + request.prompt.max_new_tokens + 8
        if needed > runner.max_tokens:
            raise ValueError(f"prompt and answer need {needed} positions, a slot has {runner.max_tokens}")
        self._waiting[request.id] = request

    def cancel(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)
        self._sent.pop(request_id, None)
        if self._current is not None and self._current[0].id == request_id:
            self._current = None

    def _use_tenant(self, salt: bytes) -> None:
        """Switch the engine to `salt`'s prefix store; the live slot (another tenant's KV) is kept in the
        previous tenant's store and emptied."""
        if salt == self._salt:
            return
        engine = self.engine
        store = engine.prefix_cache
        if store is not None and engine._live:
            store.commit(engine._live, len(engine._live), engine.runner.read_kv)
        engine._live, engine._owner = [], None
        if salt in self._stores:
            store = self._stores[salt]  # NOTE: a read marks it most recently used
        else:
            store = PrefixCache(self.block_tokens, self.prefix_cache_bytes) if self.prefix_cache_bytes and engine.runner.kv_bytes_per_token else None
            self._stores[salt] = store
        engine.prefix_cache, self._salt = store, salt

    def step(self) -> list[BatchEvent]:
        if self._current is None:
            if not self._waiting:
                return []
            request = min(self._waiting.values(), key=lambda r: r.priority)
            del self._waiting[request.id]
            self._use_tenant(request.salt)
            self._current = (request, self.engine.start(request.prompt, request.corpus))
            self._sent[request.id] = (0, "")
        request, state = self._current
        result = self.engine.resume(state, CancelToken(), Deadline.after_ms(SLICE_MS))
        sent_tokens, sent_text = self._sent[request.id]
        text = result.text
        finish = None if result.finish_reason == "deadline" else result.finish_reason
        if finish is None:
            text = text.rstrip("\ufffd")  # a character whose bytes are not all decoded yet
        new_text = text[len(sent_text) :] if text.startswith(sent_text) else ""
        if not text.startswith(sent_text):
            text = sent_text  # the decoded text changed behind what was sent: keep the sent part
        event = BatchEvent(request.id, result.token_ids[sent_tokens:], new_text, finish, result.cached_tokens, result.prompt_tokens)
        self._sent[request.id] = (len(result.token_ids), text)
        if finish is not None:
            self._current = None
            del self._sent[request.id]
        return [event]
