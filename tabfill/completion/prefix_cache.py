"""Prefix KV cache: token-id prefixes of recent prompts → their KV, in blocks of `block_tokens` tokens.

The engine keeps the KV of its last sequence in its one live slot; this store keeps the KV of *other*
recent prefixes (other documents, earlier windows), so switching files does not re-prefill.

Blocks are keyed vLLM-style by chained hashes: block i's key is `hash((key of block i-1, token ids of
block i))`, so a key names the whole prefix up to and including its block. Each block also stores its
token ids and its parent's key, and a lookup compares both: a hash collision is a miss, never wrong KV.

An optional `salt` (e.g. a tenant's name) is chained in before the first block and stored with every
block, so the same tokens under another salt are another chain: tenants never share a hit.

Blocks of fp32 KV (the lean decoder over transformers' fp32 weights) are kept in fp16, llama.cpp's default KV
type, and widened back on load: half the bytes per token, so twice the prompts in the same bound. A prefix
restored from the store therefore differs from a fresh prefill by fp16 rounding (relative 2^-11). fp16 KV (the
GGUF decoders keep theirs in fp16: kernels/gguf_decoder.py; CUDA) and bf16 KV are stored as they are, so what
such a decoder restores is bit for bit what it wrote.

Bounded in bytes (`max_bytes`, 0 disables the cache), LRU, leaves first: a block whose child is cached
is never evicted before that child, so every cached block stays reachable from the first block.

NOTE: not thread-safe. It is called from the engine worker's thread only (the thread that owns the model
and the device), so it takes no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor
import torch

# NOTE: the token axis of a KV tensor `[L, 2, Hkv, n, D]` (layers, key/value, kv heads, tokens, head dim).
TOKEN_DIM = 3

BlockKey = int


def common_prefix(one: Sequence[int], other: Sequence[int]) -> int:
    """How many leading tokens two sequences share."""
    # NOTE: a plain loop: a binary search over slices was tried and is ~2x slower at prompt sizes (each
    # slice comparison copies both slices)
    limit, common = min(len(one), len(other)), 0
    while common < limit and one[common] == other[common]:
        common += 1
    return common


def _stored_dtype(kv_dtype: torch.dtype) -> torch.dtype:
    """What the pool keeps blocks of `kv_dtype` KV as: fp32 as fp16, narrower types as they are."""
    return torch.float16 if kv_dtype == torch.float32 else kv_dtype


def _block_hash(parent_key: BlockKey | None, token_ids: tuple[int, ...]) -> BlockKey:
    """The key of a block: its parent's key chained with its own token ids (tests replace this)."""
    return hash((parent_key, token_ids))


def _root_key(salt: bytes) -> BlockKey | None:
    """What the first block of a chain is hashed with as its "parent": None unsalted, else the salt's hash."""
    return hash(("salt", salt)) if salt else None


@dataclass(frozen=True)
class PrefixMatch:
    """The longest cached prefix of a prompt, as returned by `PrefixCache.match`."""

    num_cached_tokens: int  # a multiple of block_tokens
    block_hashes: tuple[BlockKey, ...]  # the chain that matched, first block first
    # NOTE: each stored block gets an id that is never reused, so `load` can tell that a block it finds
    # under a key is still the one `match` compared tokens against (and not a later one with that key).
    block_ids: tuple[int, ...] = ()
    salt: bytes = b""


@dataclass
class PrefixCacheStats:
    hits: int = 0  # `load` returned KV
    misses: int = 0  # `load` had nothing (an empty match, or a block evicted since `match`)
    evictions: int = 0  # blocks evicted to stay within max_bytes


@dataclass
class _Block:
    block_id: int
    parent_key: BlockKey | None  # the previous block's key; None for a chain's first block
    token_ids: tuple[int, ...]
    slot: int  # its KV is `pool[slot]`: [L, 2, Hkv, block_tokens, D]
    num_bytes: int
    salt: bytes = b""
    num_children: int = 0


class PrefixCache:
    """Token-id prefix → KV blocks, bounded in bytes, LRU, leaves evicted first. Engine thread only."""

    def __init__(self, block_tokens: int = 32, max_bytes: int = 256 * 2**20, *, resident: bool = False) -> None:
        """`resident`: zero the whole pool at the first commit (a process's one store: its memory is then what it
        keeps from the first answers on); else its pages become resident as blocks fill them (many small stores,
        e.g. the serial team engine's one per tenant, each bounded but mostly empty)."""
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be positive, got {block_tokens}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.block_tokens = block_tokens
        self._max_bytes = max_bytes
        # NOTE: ordered least recently used first. Touching a chain moves its blocks to the end leaf
        # first and root last, so a parent is always more recent than its children and the LRU end
        # holds leaves; eviction still checks `num_children` rather than rely on that alone.
        self._blocks: OrderedDict[BlockKey, _Block] = OrderedDict()
        self._num_bytes = 0
        self._next_block_id = 0
        self._block_bytes = 0  # bytes of one block, known after the first commit (same model throughout)
        self._resident = resident
        # NOTE: blocks live in one pool of `max_bytes // block bytes` slots, allocated at the first commit:
        # a block per allocation churned the allocator (RSS crept +70 MB past the bound under a stream of
        # documents); a pool's pages are touched once and reused, so the bound holds for the process too.
        self._pool: Tensor | None = None  # [slots, L, 2, Hkv, block_tokens, D]
        self._kv_dtype: torch.dtype | None = None  # what read_kv gave and load returns (the pool may be narrower)
        self._free_slots: list[int] = []
        self.stats = PrefixCacheStats()

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()
        self._num_bytes = 0
        self._pool, self._free_slots = None, []

    def match(self, token_ids: Sequence[int], salt: bytes = b"") -> PrefixMatch:
        """The longest cached prefix of `token_ids` under `salt`, in whole blocks. Does not mutate (no LRU
        touch, no stats)."""
        keys, blocks = self._cached_chain(token_ids, len(token_ids) // self.block_tokens, salt)
        return PrefixMatch(len(keys) * self.block_tokens, tuple(keys), tuple(block.block_id for block in blocks), salt)

    def load(self, match: PrefixMatch) -> Tensor | None:
        """The KV `[L, 2, Hkv, n, D]` of a match (a new tensor), marking its blocks recently used.

        None when the match is empty or one of its blocks was evicted since `match`."""
        blocks: list[_Block] = []
        parent_key: BlockKey | None = None
        for key, block_id in zip(match.block_hashes, match.block_ids, strict=True):
            block = self._blocks.get(key)
            if block is None or block.block_id != block_id or block.parent_key != parent_key or block.salt != match.salt:
                break
            blocks.append(block)
            parent_key = key
        if not blocks or len(blocks) != len(match.block_hashes):
            self.stats.misses += 1
            return None
        self._touch(list(match.block_hashes))
        self.stats.hits += 1
        pool = self._pool
        assert pool is not None
        first = pool[blocks[0].slot]  # [L, 2, Hkv, bt, D]
        shape = (*first.shape[:TOKEN_DIM], len(blocks) * self.block_tokens, *first.shape[TOKEN_DIM + 1 :])
        # NOTE: one allocation in the KV's own dtype, each block widened as it is copied in (a cat, then a
        # conversion, made two, and the soak's heap grew with them)
        kv = torch.empty(shape, dtype=self._kv_dtype or first.dtype, device=first.device)
        for index, block in enumerate(blocks):
            kv.narrow(TOKEN_DIM, index * self.block_tokens, self.block_tokens).copy_(pool[block.slot])
        return kv

    def commit(
        self, token_ids: Sequence[int], num_verified_tokens: int, read_kv: Callable[[int, int], Tensor], salt: bytes = b""
    ) -> int:
        """Store the full blocks of `token_ids[:num_verified_tokens]` that are not cached yet (under `salt`).

        `read_kv(start, end)` returns the KV of tokens [start, end) as `[L, 2, Hkv, end - start, D]`; it is
        called once, for the missing blocks only (they are contiguous: a cached block's parent is cached).
        Returns the number of tokens newly stored. When the blocks do not all fit in `max_bytes`, the first
        ones are stored (other prefixes are evicted for them, never this prompt's own blocks).

        NOTE: only verified tokens are committed: callers pass the number of prompt/accepted tokens whose
        KV is in the slot, never draft tokens that a verification may still reject."""
        if not 0 <= num_verified_tokens <= len(token_ids):
            raise ValueError(f"num_verified_tokens {num_verified_tokens} outside [0, {len(token_ids)}]")
        if self._max_bytes == 0:
            return 0
        bt = self.block_tokens
        num_full_blocks = num_verified_tokens // bt
        keys, blocks = self._cached_chain(token_ids, num_full_blocks, salt)
        chain = list(keys)
        first_missing = len(keys)
        parent_key = keys[-1] if keys else None
        new_keys: list[BlockKey] = []
        if first_missing < num_full_blocks:
            # NOTE: a missing block whose key is taken (by a colliding block) cannot be stored, nor can any
            # block after it; check the keys before reading any KV.
            num_storable = 0
            key = parent_key if keys else _root_key(salt)
            for i in range(first_missing, num_full_blocks):
                key = _block_hash(key, tuple(token_ids[i * bt : (i + 1) * bt]))
                if key in self._blocks or key in new_keys:
                    break
                new_keys.append(key)
                num_storable += 1
            if self._block_bytes:
                # NOTE: do not read KV that could never fit next to this prompt's cached blocks.
                num_storable = min(num_storable, max(0, self._max_bytes // self._block_bytes - len(keys)))
            if num_storable:
                start, end = first_missing * bt, (first_missing + num_storable) * bt
                kv = read_kv(start, end)
                if kv.shape[TOKEN_DIM] != end - start:
                    raise ValueError(f"read_kv({start}, {end}) returned {kv.shape[TOKEN_DIM]} tokens")
                protected = set(chain)
                for j, key in enumerate(new_keys[:num_storable]):
                    block_kv = kv.narrow(TOKEN_DIM, j * bt, bt)  # [L, 2, Hkv, bt, D]
                    pool = self._pool_for(block_kv)
                    block_bytes = self._block_bytes = block_kv.numel() * _stored_dtype(block_kv.dtype).itemsize
                    if pool is None or not self._make_room(block_bytes, protected):
                        break
                    slot = self._free_slots.pop()
                    pool[slot].copy_(block_kv)
                    block_tokens = tuple(token_ids[start + j * bt : start + (j + 1) * bt])
                    self._blocks[key] = _Block(self._next_block_id, parent_key, block_tokens, slot, block_bytes, salt)
                    self._next_block_id += 1
                    self._num_bytes += block_bytes
                    if parent_key is not None:
                        self._blocks[parent_key].num_children += 1
                    chain.append(key)
                    protected.add(key)
                    parent_key = key
        self._touch(chain)
        return (len(chain) - first_missing) * bt

    def _pool_for(self, block_kv: Tensor) -> Tensor | None:
        """The slot pool for blocks shaped like `block_kv` (allocated at the first commit); None when not
        even one block fits in max_bytes."""
        if self._pool is None:
            stored = _stored_dtype(block_kv.dtype)
            num_slots = self._max_bytes // (block_kv.numel() * stored.itemsize)
            if num_slots == 0:
                return None
            # NOTE: a normal tensor even when the first commit runs under torch.inference_mode (the batched
            # engine's step): an inference tensor could not be written by a later commit outside it (a cancel).
            # Resident: zeroed, so every page of the bound is resident from the first commit on, as an inference
            # server's KV budget: the process's memory after its first answers is what it keeps. With torch.empty
            # the pages were touched as the store filled, and bench.soak's RSS grew through its first 4-6 replays
            # of 10 (+14 %, the store 26 -> 64 MB; 2026-12-07).
            with torch.inference_mode(False):
                make = torch.zeros if self._resident else torch.empty
                self._pool = make((num_slots, *block_kv.shape), dtype=stored, device=block_kv.device)
            self._kv_dtype = block_kv.dtype
            self._free_slots = list(range(num_slots - 1, -1, -1))
        return self._pool

    def _cached_chain(self, token_ids: Sequence[int], num_blocks: int, salt: bytes) -> tuple[list[BlockKey], list[_Block]]:
        bt = self.block_tokens
        keys: list[BlockKey] = []
        blocks: list[_Block] = []
        parent_key: BlockKey | None = None
        for i in range(num_blocks):
            block_token_ids = tuple(token_ids[i * bt : (i + 1) * bt])
            key = _block_hash(parent_key if i else _root_key(salt), block_token_ids)
            block = self._blocks.get(key)
            # NOTE: compare tokens, parent and salt, not only the key: a colliding key must be a miss.
            if block is None or block.parent_key != parent_key or block.token_ids != block_token_ids or block.salt != salt:
                break
            keys.append(key)
            blocks.append(block)
            parent_key = key
        return keys, blocks

    def _touch(self, chain: list[BlockKey]) -> None:
        # NOTE: leaf first, root last, so each parent ends up more recent than its children.
        for key in reversed(chain):
            self._blocks.move_to_end(key)

    def _make_room(self, num_bytes: int, protected: set[BlockKey]) -> bool:
        """Evict least recently used leaves (never `protected` ones) until `num_bytes` more fit."""
        if num_bytes > self._max_bytes:
            return False
        while self._num_bytes + num_bytes > self._max_bytes:
            victim = next(
                (key for key, block in self._blocks.items() if block.num_children == 0 and key not in protected),
                None,
            )
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _evict(self, key: BlockKey) -> None:
        block = self._blocks.pop(key)
        self._num_bytes -= block.num_bytes
        self._free_slots.append(block.slot)
        if block.parent_key is not None:
            self._blocks[block.parent_key].num_children -= 1
        self.stats.evictions += 1
