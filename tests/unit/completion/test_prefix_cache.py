import random
import subprocess
import sys

import pytest
import torch
from torch import Tensor

from tabfill.completion import prefix_cache
from tabfill.completion.prefix_cache import PrefixCache

BT = 4  # block_tokens in these tests
L, HKV, D = 2, 1, 2
BLOCK_BYTES = L * 2 * HKV * BT * D * 8  # float64: kept as it is (fp32 is kept as fp16: its own test below)


class FakeSlot:
    """KV of a sequence whose values encode (token id, position), so served KV can be checked exactly."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        self.calls: list[tuple[int, int]] = []

    def kv_of(self, start: int, end: int) -> Tensor:
        values = torch.tensor([float(t * 1000 + i) for i, t in enumerate(self.token_ids[start:end], start)], dtype=torch.float64)
        return values.view(1, 1, 1, -1, 1).expand(L, 2, HKV, end - start, D).clone()  # [L, 2, Hkv, n, D]

    def read_kv(self, start: int, end: int) -> Tensor:
        self.calls.append((start, end))
        return self.kv_of(start, end)


def commit(cache: PrefixCache, token_ids: list[int], num_verified_tokens: int | None = None) -> FakeSlot:
    slot = FakeSlot(token_ids)
    cache.commit(token_ids, len(token_ids) if num_verified_tokens is None else num_verified_tokens, slot.read_kv)
    return slot


def doc(tag: int, num_blocks: int) -> list[int]:
    """Token ids unique to `tag`, so different documents share no block."""
    return [tag * 100 + i for i in range(num_blocks * BT)]


def cached_tokens(cache: PrefixCache, token_ids: list[int]) -> int:
    return cache.match(token_ids).num_cached_tokens


def test_hit_lengths_count_whole_blocks_only() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    prompt = doc(1, 3) + [7, 7]  # 3 full blocks and 2 tokens
    assert cached_tokens(cache, prompt) == 0
    assert cache.commit(prompt, len(prompt), FakeSlot(prompt).read_kv) == 12  # the partial block is not stored
    assert cache.num_blocks == 3 and cache.num_bytes == 3 * BLOCK_BYTES
    assert cached_tokens(cache, prompt) == 12
    assert cached_tokens(cache, prompt[:12]) == 12
    assert cached_tokens(cache, prompt[:11]) == 8
    assert cached_tokens(cache, prompt[:4]) == 4
    assert cached_tokens(cache, prompt[:3]) == 0
    assert cached_tokens(cache, []) == 0
    assert cached_tokens(cache, prompt[:12] + [5] * 9) == 12


def test_only_verified_tokens_are_committed() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    prompt = doc(1, 4)
    assert cache.commit(prompt, 7, FakeSlot(prompt).read_kv) == 4  # tokens 4..7 are not all verified
    assert cached_tokens(cache, prompt) == 4
    with pytest.raises(ValueError):
        cache.commit(prompt, 17, FakeSlot(prompt).read_kv)


@pytest.mark.parametrize("num_blocks", [3, 4])
def test_a_prompt_differing_in_one_token_matches_only_the_blocks_before_it(num_blocks: int) -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    prompt = doc(1, num_blocks)
    commit(cache, prompt)
    for position in range(len(prompt)):
        other = list(prompt)
        other[position] = -1
        match = cache.match(other)
        assert match.num_cached_tokens == position // BT * BT, position
        if match.num_cached_tokens:
            kv = cache.load(match)
            assert kv is not None
            torch.testing.assert_close(kv, FakeSlot(other).kv_of(0, match.num_cached_tokens))  # KV of the same tokens
    assert cached_tokens(cache, prompt) == len(prompt)


def test_load_returns_the_kv_of_the_matched_tokens_and_counts_hits_and_misses() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    prompt = doc(1, 3)
    slot = commit(cache, prompt)
    match = cache.match(prompt[:10])
    assert match.num_cached_tokens == 8 and len(match.block_hashes) == 2
    assert cache.stats.hits == 0 and cache.stats.misses == 0  # match does not count
    kv = cache.load(match)
    assert kv is not None and kv.shape == (L, 2, HKV, 8, D)
    torch.testing.assert_close(kv, slot.kv_of(0, 8))
    assert cache.load(cache.match([9, 9, 9, 9])) is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_commit_reads_only_the_missing_blocks_in_one_call() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    prompt = doc(1, 5)
    slot = commit(cache, prompt, 9)
    assert slot.calls == [(0, 8)]
    slot = commit(cache, prompt)
    assert slot.calls == [(8, 20)]
    slot = commit(cache, prompt)
    assert slot.calls == []  # all cached: no read
    branch = prompt[:8] + [5] * 8
    slot = commit(cache, branch)
    assert slot.calls == [(8, 16)]
    assert cached_tokens(cache, branch) == 16 and cached_tokens(cache, prompt) == 20


def test_eviction_is_lru_in_bytes_and_leaves_first() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=4 * BLOCK_BYTES)
    a, b = doc(1, 2), doc(2, 2)
    commit(cache, a)
    commit(cache, b)
    assert cache.num_bytes == 4 * BLOCK_BYTES
    # LRU order now: a1, a0, b1, b0 (leaf first within a chain). One new block evicts a's leaf only.
    commit(cache, doc(3, 1))
    assert cache.stats.evictions == 1
    assert cached_tokens(cache, a) == 4 and cached_tokens(cache, b) == 8
    # Next: a0 (now a leaf), then b1, then b0: never b0 while b1 is cached.
    commit(cache, doc(4, 1))
    assert cached_tokens(cache, a) == 0 and cached_tokens(cache, b) == 8
    commit(cache, doc(5, 1))
    assert cached_tokens(cache, b) == 4
    commit(cache, doc(6, 1))
    assert cached_tokens(cache, b) == 0
    assert [cached_tokens(cache, doc(tag, 1)) for tag in (3, 4, 5, 6)] == [4, 4, 4, 4]
    assert cache.stats.evictions == 4 and cache.num_bytes == 4 * BLOCK_BYTES


def test_a_shared_parent_outlives_its_children() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=3 * BLOCK_BYTES)
    trunk = doc(1, 1)
    commit(cache, trunk + [5] * BT)
    commit(cache, trunk + [6] * BT)  # touches the trunk: LRU order 5-leaf, 6-leaf, trunk
    commit(cache, doc(2, 1))  # evicts the 5-leaf
    assert cached_tokens(cache, trunk + [5] * BT) == 4
    assert cached_tokens(cache, trunk + [6] * BT) == 8
    commit(cache, doc(3, 1))  # evicts the 6-leaf, not its parent
    assert cached_tokens(cache, trunk + [6] * BT) == 4
    commit(cache, doc(4, 1))  # now the trunk is a leaf and the least recently used
    assert cached_tokens(cache, trunk) == 0
    assert cached_tokens(cache, doc(2, 1)) == 4


def test_match_does_not_touch_and_load_does() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=2 * BLOCK_BYTES)
    a, b = doc(1, 1), doc(2, 1)
    commit(cache, a)
    commit(cache, b)
    for _ in range(3):
        assert cache.match(a).num_cached_tokens == 4  # no effect on the order: a is still the oldest
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (0, 0, 0)
    commit(cache, doc(3, 1))
    assert cached_tokens(cache, a) == 0 and cached_tokens(cache, b) == 4

    match = cache.match(b)
    commit(cache, doc(4, 1))  # evicts b (the oldest)
    assert cache.load(match) is None and cache.stats.misses == 1  # evicted meanwhile

    cache.clear()
    commit(cache, a)
    commit(cache, b)
    assert cache.load(cache.match(a)) is not None  # a becomes the most recent
    commit(cache, doc(3, 1))
    assert cached_tokens(cache, a) == 4 and cached_tokens(cache, b) == 0


def test_a_commit_bigger_than_the_bound_stores_what_fits_from_the_start() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=3 * BLOCK_BYTES)
    prompt = doc(1, 5)
    slot = FakeSlot(prompt)
    assert cache.commit(prompt, len(prompt), slot.read_kv) == 12
    assert slot.calls == [(0, 20)]  # the block size is not known before the first commit
    assert cached_tokens(cache, prompt) == 12 and cache.num_bytes == 3 * BLOCK_BYTES
    slot = commit(cache, doc(2, 5))
    assert slot.calls == [(0, 12)]  # then only what can fit is read
    assert cached_tokens(cache, doc(2, 5)) == 12 and cached_tokens(cache, prompt) == 0
    assert cache.stats.evictions == 3 and cache.num_bytes == 3 * BLOCK_BYTES
    slot = commit(cache, doc(2, 5) + doc(3, 1))
    assert slot.calls == [] and cached_tokens(cache, doc(2, 5)) == 12  # its own blocks are never evicted for it


def test_max_bytes_zero_disables_the_cache() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=0)
    slot = commit(cache, doc(1, 3))
    assert slot.calls == [] and cache.num_blocks == 0 and cache.num_bytes == 0
    assert cached_tokens(cache, doc(1, 3)) == 0
    small = PrefixCache(block_tokens=BT, max_bytes=BLOCK_BYTES - 1)  # not even one block fits
    commit(small, doc(1, 3))
    assert small.num_blocks == 0 and small.num_bytes == 0


def test_bytes_stay_within_the_bound_under_a_stream_of_random_documents() -> None:
    rng = random.Random(1234)
    max_bytes = 10 * BLOCK_BYTES + BLOCK_BYTES // 2
    cache = PrefixCache(block_tokens=BT, max_bytes=max_bytes)
    documents = [[rng.randrange(50) for _ in range(rng.randrange(1, 40))] for _ in range(20)]
    for _ in range(500):
        prompt = list(rng.choice(documents))
        cut = rng.randrange(len(prompt) + 1)
        prompt = prompt[:cut] + [rng.randrange(50) for _ in range(rng.randrange(8))]
        match = cache.match(prompt)
        if rng.random() < 0.5 and match.num_cached_tokens:
            kv = cache.load(match)
            assert kv is not None
            torch.testing.assert_close(kv, FakeSlot(prompt).kv_of(0, match.num_cached_tokens))
        commit(cache, prompt, rng.randrange(len(prompt) + 1))
        assert cache.num_bytes <= max_bytes
        assert cache.num_bytes == cache.num_blocks * BLOCK_BYTES
    assert cache.stats.evictions > 0


def test_a_hash_collision_never_serves_wrong_kv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefix_cache, "_block_hash", lambda parent_key, token_ids: 42)
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    prompt = doc(1, 3)
    commit(cache, prompt)
    assert cache.num_blocks == 1  # every block collides with the first: only it is stored
    assert cached_tokens(cache, prompt) == 4
    assert cached_tokens(cache, doc(2, 3)) == 0  # same key, other tokens: a miss
    for position in range(len(prompt)):
        other = list(prompt)
        other[position] = -1
        assert cached_tokens(cache, other) == (4 if position >= BT else 0)
    slot = commit(cache, doc(2, 3))
    assert slot.calls == [] and cached_tokens(cache, doc(2, 3)) == 0  # cannot be stored under a taken key


def test_blocks_live_in_one_pool_whose_slots_are_reused_and_served_exactly() -> None:
    cache = PrefixCache(BT, 5 * BLOCK_BYTES)
    rng = random.Random(3)
    pool = None
    for step in range(200):
        prompt = doc(rng.randint(1, 40), rng.randint(1, 4))
        slot = commit(cache, prompt)
        pool = cache._pool if pool is None else pool
        assert pool is not None and cache._pool is pool and pool.shape[0] == 5  # allocated once, never grown
        assert len(cache._free_slots) + cache.num_blocks == 5
        match = cache.match(prompt)
        loaded = cache.load(match)
        assert loaded is not None and torch.equal(loaded, slot.kv_of(0, match.num_cached_tokens)), step


def test_a_salt_is_its_own_chain_same_salt_hits_other_salt_misses() -> None:
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    prompt = doc(1, 3)
    slot = FakeSlot(prompt)
    assert cache.commit(prompt, len(prompt), slot.read_kv, salt=b"tenant-a") == 12
    assert cache.match(prompt, salt=b"tenant-a").num_cached_tokens == 12
    assert cache.match(prompt, salt=b"tenant-b").num_cached_tokens == 0
    assert cache.match(prompt).num_cached_tokens == 0  # unsalted is a tenant of its own too
    kv = cache.load(cache.match(prompt, salt=b"tenant-a"))
    assert kv is not None
    torch.testing.assert_close(kv, slot.kv_of(0, 12))
    # tenant b stores the same tokens as its own blocks (read again, not shared)
    other = FakeSlot(prompt)
    assert cache.commit(prompt, len(prompt), other.read_kv, salt=b"tenant-b") == 12
    assert other.calls == [(0, 12)] and cache.num_blocks == 6


def test_a_match_under_one_salt_does_not_load_under_another(monkeypatch: pytest.MonkeyPatch) -> None:
    # every key collides: only the stored salt tells the chains apart
    monkeypatch.setattr(prefix_cache, "_block_hash", lambda parent_key, token_ids: 42)
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    prompt = doc(1, 1)
    cache.commit(prompt, len(prompt), FakeSlot(prompt).read_kv, salt=b"a")
    assert cache.match(prompt, salt=b"a").num_cached_tokens == 4
    assert cache.match(prompt, salt=b"b").num_cached_tokens == 0
    forged = prefix_cache.PrefixMatch(4, (42,), cache.match(prompt, salt=b"a").block_ids, b"b")
    assert cache.load(forged) is None


def test_a_store_first_filled_under_inference_mode_takes_commits_outside_it() -> None:
    """The batched engine commits from its step (under torch.inference_mode) and from a cancel (outside it):
    the store's pool must accept both (it was an inference tensor, and a cancel's commit raised)."""
    cache = PrefixCache(block_tokens=BT, max_bytes=2**20)
    with torch.inference_mode():
        commit(cache, doc(1, 2))
    slot = commit(cache, doc(2, 2))  # outside: writes into the same pool
    assert cached_tokens(cache, doc(1, 2)) == 8 and cached_tokens(cache, doc(2, 2)) == 8
    hit = cache.match(doc(2, 2))
    loaded = cache.load(hit)
    assert loaded is not None and torch.equal(loaded, slot.kv_of(0, 8))


def test_common_prefix_of_token_sequences() -> None:
    from tabfill.completion.prefix_cache import common_prefix

    assert common_prefix([1, 2, 3, 4], (1, 2, 9)) == 2  # a list against a tuple compares by value
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([], [1]) == common_prefix([5], [1]) == 0
    long = list(range(1000))
    assert common_prefix(long, long[:777] + [-1]) == 777


def test_fp32_kv_is_kept_as_fp16_in_half_the_bytes_and_loaded_as_fp32() -> None:
    """The CPU decoders' fp32 KV: the pool holds fp16 (twice the blocks in the same bound), load widens it back;
    values round to fp16 (relative 2^-11), values fp16 holds come back exactly."""
    generator = torch.Generator().manual_seed(0)
    kv = torch.randn(L, 2, HKV, 3 * BT, D, generator=generator)  # [L, 2, Hkv, n, D] fp32
    kv[0, 0, 0, 0, 0] = 1.5  # fp16 holds it
    fp32_block = L * 2 * HKV * BT * D * 4
    cache = PrefixCache(block_tokens=BT, max_bytes=3 * fp32_block // 2)  # three fp16 blocks, one and a half fp32
    prompt = doc(1, 3)
    assert cache.commit(prompt, len(prompt), lambda start, end: kv[:, :, :, start:end].clone()) == 3 * BT
    assert cache.num_blocks == 3 and cache.num_bytes == 3 * fp32_block // 2
    loaded = cache.load(cache.match(prompt))
    assert loaded is not None and loaded.dtype == torch.float32 and loaded.shape == kv.shape
    assert torch.equal(loaded, kv.half().float()) and not torch.equal(loaded, kv)
    torch.testing.assert_close(loaded, kv, rtol=2**-11, atol=1e-7)
    assert loaded[0, 0, 0, 0, 0].item() == 1.5


RESIDENT_SCRIPT = """
import sys
import torch
from tabfill.completion.prefix_cache import PrefixCache

def rss_mb():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024

store = PrefixCache(32, 64 * 2**20, resident=sys.argv[1] == "resident")
kv = torch.ones(30, 2, 3, 32, 64)  # one block of SmolLM2-like fp32 KV (kept as fp16)
before = rss_mb()
store.commit(list(range(32)), 32, lambda start, end: kv)
print(rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_resident_store_holds_its_whole_bound_from_the_first_commit_a_lazy_one_what_it_uses() -> None:
    """tabfill serve's store (resident): its memory after the first answers is what it keeps; the serial team
    engine's per-tenant stores (lazy): a tenant's mostly empty store costs only the blocks it holds."""
    grown = {mode: float(subprocess.run([sys.executable, "-c", RESIDENT_SCRIPT, mode], capture_output=True, text=True,
                                        check=True).stdout) for mode in ("resident", "lazy")}
    assert grown["resident"] > 56, grown  # the 64 MiB pool, every page touched
    assert grown["lazy"] < 16, grown  # one 360 KB block and its neighbours' pages
