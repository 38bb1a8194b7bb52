"""The serial backend's per-tenant prefix stores are bounded by bytes (each counts the pool it allocates)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tabfill.completion.prefix_cache import PrefixCache
from tabfill.engine_server.serial import SerialEngine, store_bytes


def test_tenant_stores_stay_within_their_byte_bound_and_the_recent_tenant_keeps_its_store() -> None:
    engine: Any = SimpleNamespace(prefix_cache=None, _live=[], _owner=None, runner=SimpleNamespace(kv_bytes_per_token=64, read_kv=None))
    store_size = 8 << 20
    serial = SerialEngine(engine, store_size, stores_max_bytes=5 * store_size)
    stores: dict[bytes, PrefixCache] = {}
    for tenant in range(1000):
        salt = tenant.to_bytes(16, "big")
        serial._use_tenant(salt)
        stores[salt] = engine.prefix_cache
        assert isinstance(engine.prefix_cache, PrefixCache) and engine.prefix_cache.max_bytes == store_size
        assert serial._stores.currsize <= 5 * store_size
        if tenant % 2:  # the first tenant keeps coming back: never the least recently used
            serial._use_tenant(bytes(16))
    assert sum(map(store_bytes, serial._stores.values())) <= 5 * store_size
    assert len(serial._stores) == 5
    serial._use_tenant(bytes(16))
    assert engine.prefix_cache is stores[bytes(16)]  # its store (and its KV) survived 1,000 tenants
    serial._use_tenant((999).to_bytes(16, "big"))
    assert engine.prefix_cache is stores[(999).to_bytes(16, "big")]
    serial._use_tenant((500).to_bytes(16, "big"))
    assert engine.prefix_cache is not stores[(500).to_bytes(16, "big")]  # long gone: a new, empty store


def test_a_store_larger_than_the_bound_is_still_kept_alone() -> None:
    engine: Any = SimpleNamespace(prefix_cache=None, _live=[], _owner=None, runner=SimpleNamespace(kv_bytes_per_token=64, read_kv=None))
    serial = SerialEngine(engine, 64 << 20, stores_max_bytes=1 << 20)
    for tenant in range(3):
        serial._use_tenant(bytes([tenant]))
        assert isinstance(engine.prefix_cache, PrefixCache) and len(serial._stores) == 1
