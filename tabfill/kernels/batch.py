"""A ragged batched forward of the lean decoder over a pool of KV slots (continuous batching's kernel).

``forward_rows`` runs every row's tokens — a decode token, a token plus its draft, a prefill chunk — as one
flattened token stream: each layer's weights are streamed once per step for the whole batch, which is what
makes a batch of decode rows cost little more than one row on a memory-bound CPU or GPU. Rope positions are
per token; K/V go into each row's slot; attention is per row over its own slot's keys.

The reference twin is ``LeanDecoder.forward`` run on each row alone (tests/unit/kernels/test_batch.py).

A decoder over GGUF blocks on CPU (the team engine's default there) runs a step's narrow rows (decode tokens,
drafts: up to ``quant.STEP_MAX_TOKENS`` tokens) in one C call instead (``DecodeStep.rows``, csrc/quant.c
tf_decode_rows), the others (prefill chunks) through the torch forward: each weight block unpacked once for all
rows, attention per (row, kv head), no torch operation per layer; a row's logits are bit for bit what it gets
alone (tests/unit/kernels/test_gguf_step.py).

Attention backends (``select_backend``): on CUDA with xformers, one ``memory_efficient_attention`` call with
a ``BlockDiagonalCausalWithOffsetPaddedKeysMask`` over the rows' slots. Elsewhere (SDPA): the short rows
(decode tokens and drafts) in one SDPA call over a view of their slot range with an explicit mask, and each
long row (a prefill chunk) in a call of its own on a view of its slot (``_ShortRows``).
NOTE: why (8 decode rows at ~400 tokens, SmolLM2's 30 layers): one SDPA call per row per layer is 240 calls
a step, and gathering the rows' slots into one tensor copies ~5 MB per layer; the view of a slot range needs
neither. ``python -m bench.batch_step --attention`` times all three; on a machine loaded 13x over its cores,
both single-call variants beat per-row calls (~1.6-2.4x) but gather vs view was not separable: re-measure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tabfill.kernels.attention import attention
from tabfill.kernels.decoder import KVCache, LeanDecoder
from tabfill.kernels.quant import STEP_MAX_TOKENS


@dataclass(frozen=True)
class RowInput:
    """One row of a batched step: ``token_ids`` written into ``slot`` at ``start_pos..``; the row attends to
    its slot's positions ``0..start_pos+len-1``. ``all_logits``: logits for every token (draft verification),
    else for the last one only."""

    slot: int
    token_ids: Sequence[int]
    start_pos: int
    all_logits: bool = False


class BatchedDecoder:
    """A ``LeanDecoder``'s weights with a pool of ``slots`` KV slots of ``max_tokens`` positions each.

    Not thread-safe: one scheduler thread calls it. The decoder's own single-sequence cache is left alone
    (its ``forward`` keeps working, e.g. as the reference twin)."""

    def __init__(self, decoder: LeanDecoder, *, slots: int, max_tokens: int | None = None) -> None:
        max_tokens = decoder.max_tokens if max_tokens is None else max_tokens
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if not 1 <= max_tokens <= decoder.max_tokens:
            raise ValueError(f"max_tokens must be in 1..{decoder.max_tokens} (the decoder's rope tables), got {max_tokens}")
        self.decoder = decoder
        self.slots = slots
        self.max_tokens = max_tokens
        self.vocab_size = decoder.vocab_size
        self.device = decoder.device
        self.attention_backend = decoder.attention_backend
        # [L, slots, Hkv, T, Dh]: each slot is one KVCache batch row
        self.pool = KVCache(
            len(decoder.layers), decoder.num_kv_heads, max_tokens, decoder.head_dim,
            dtype=decoder.kv_dtype, device=decoder.device, batch_size=slots,
        )
        # a decoder over GGUF blocks on CPU: steps of decode rows only (the steady state of a busy engine) in
        # one C call over the pool, without ~30 torch operations per layer (kernels/quant.py, DecodeStep.rows)
        make_step = getattr(decoder, "decode_step", None)
        self.c_rows = make_step(self.pool) if make_step is not None and self.device.type == "cpu" else None

    # ---- sizes --------------------------------------------------------------------------------------

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token of one slot holds (every layer)."""
        return self.pool.bytes_per_token() // self.slots

    @property
    def pool_bytes(self) -> int:
        return self.slots * self.max_tokens * self.kv_bytes_per_token()

    def describe(self) -> dict[str, object]:
        per_token = self.kv_bytes_per_token()
        return {
            "slots": self.slots,
            "slot_tokens": self.max_tokens,
            "kv_bytes_per_token": per_token,
            "kv_pool_bytes": self.pool_bytes,
            "kv_pool": f"{self.slots} slots x {self.max_tokens} tokens x {per_token} bytes = {self.pool_bytes / 2**20:.1f} MiB",
            "attention": "xformers block-diagonal, padded keys" if self.attention_backend == "xformers" else f"{self.attention_backend} per row",
        }

    # ---- the slot's KV as data (prefix cache) --------------------------------------------------------

    def read_kv(self, slot: int, start: int, end: int) -> Tensor:
        """A copy of ``slot``'s positions ``[start, end)``: [L, 2, Hkv, n, Dh] (``LeanDecoder.read_kv``'s layout)."""
        return torch.stack((self.pool.k[:, slot, :, start:end], self.pool.v[:, slot, :, start:end]), dim=1)

    def write_kv(self, slot: int, start: int, kv: Tensor) -> None:
        """Inverse of ``read_kv``: ``kv`` [L, 2, Hkv, n, Dh] into ``slot``'s positions ``[start, start+n)``."""
        end = start + kv.shape[3]
        if not 0 <= slot < self.slots or start < 0 or end > self.max_tokens:
            raise ValueError(f"slot {slot} positions {start}..{end - 1} outside the pool ({self.slots} x {self.max_tokens})")
        self.pool.k[:, slot, :, start:end] = kv[:, 0]
        self.pool.v[:, slot, :, start:end] = kv[:, 1]

    # ---- the forward --------------------------------------------------------------------------------

    def _check(self, rows: Sequence[RowInput]) -> None:
        if not rows:
            raise ValueError("forward_rows needs at least one row")
        seen: set[int] = set()
        for row in rows:
            if not 0 <= row.slot < self.slots:
                raise ValueError(f"slot {row.slot} outside 0..{self.slots - 1}")
            if row.slot in seen:
                raise ValueError(f"slot {row.slot} appears in two rows of one step")
            seen.add(row.slot)
            end = row.start_pos + len(row.token_ids)
            if not row.token_ids or row.start_pos < 0 or end > self.max_tokens:
                raise ValueError(f"row of slot {row.slot}: positions {row.start_pos}..{end - 1} outside the slot (max_tokens {self.max_tokens})")

    @torch.no_grad()
    def forward_rows(self, rows: Sequence[RowInput]) -> list[Tensor]:
        """One forward for all rows; per row fp32 logits [S, V] when ``all_logits``, else [V] for its last token."""
        self._check(rows)
        c_rows = self.c_rows
        narrow = [i for i, row in enumerate(rows) if len(row.token_ids) <= STEP_MAX_TOKENS] if c_rows is not None else []
        if c_rows is None or not narrow:
            return self._forward_torch(rows)
        # the narrow rows (decode tokens, drafts) in one C call, the others (prefill chunks) through the torch forward
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        outputs: list[int] = []
        for i in narrow:
            row, first = rows[i], len(tokens)
            tokens.extend(int(t) for t in row.token_ids)
            positions.extend(range(row.start_pos, row.start_pos + len(row.token_ids)))
            slots.extend([row.slot] * len(row.token_ids))
            outputs.extend(range(first, len(tokens)) if row.all_logits else (len(tokens) - 1,))
        logits = c_rows.rows(tokens, positions, slots, outputs)
        out: list[Tensor | None] = [None] * len(rows)
        offset = 0
        for i in narrow:
            width = len(rows[i].token_ids) if rows[i].all_logits else 1
            out[i] = logits[offset : offset + width] if rows[i].all_logits else logits[offset]
            offset += width
        rest = [i for i, logits_i in enumerate(out) if logits_i is None]
        if rest:
            for i, logits_i in zip(rest, self._forward_torch([rows[i] for i in rest])):
                out[i] = logits_i
        return out  # type: ignore[return-value]

    def _forward_torch(self, rows: Sequence[RowInput]) -> list[Tensor]:
        d = self.decoder
        hq, hkv, dh = d.num_heads, d.num_kv_heads, d.head_dim
        device = self.device
        lengths = [len(row.token_ids) for row in rows]
        n = sum(lengths)
        ids = torch.tensor([t for row in rows for t in row.token_ids], dtype=torch.long, device=device)  # [N]
        positions = torch.cat([torch.arange(r.start_pos, r.start_pos + s) for r, s in zip(rows, lengths)]).to(device)
        slot_of = torch.tensor([r.slot for r, s in zip(rows, lengths) for _ in range(s)], dtype=torch.long, device=device)
        cos = d.cos[positions, None, :]  # [N, 1, Dh]
        sin = d.signed_sin[positions, None, :]  # [N, 1, Dh]
        xformers = _XformersRows(rows, lengths, self.max_tokens) if self.attention_backend == "xformers" else None
        short = None if xformers is not None else _ShortRows.plan(rows, lengths, device)
        x = d._embed(ids)  # [N, D]
        for index, layer in enumerate(d.layers):
            h = d._norm(x, layer.norm1_weight, layer.norm1_bias)
            qkv = layer.qkv(h)  # [N, (Hq + 2 Hkv) Dh]
            qk = qkv[:, : (hq + hkv) * dh].view(n, hq + hkv, dh)
            qk = torch.addcmul(qk * cos, qk.roll(dh // 2, dims=-1), sin)  # rotary at each token's own position
            k_pool, v_pool = self.pool.k[index], self.pool.v[index]  # [slots, Hkv, T, Dh]
            k_pool[slot_of, :, positions] = qk[:, hq:].to(k_pool.dtype)  # [N, Hkv, Dh] into (slot, position) pairs
            v_pool[slot_of, :, positions] = qkv[:, (hq + hkv) * dh :].view(n, hkv, dh).to(v_pool.dtype)
            q = qk[:, :hq]  # [N, Hq, Dh]
            if xformers is not None:
                o = xformers(q, k_pool, v_pool)
            elif short is not None:
                o = short(q, k_pool, v_pool, lambda q_long: self._attend_per_row(q_long, k_pool, v_pool, short.long_rows, short.long_lengths))
            else:
                o = self._attend_per_row(q, k_pool, v_pool, rows, lengths)
            x = x + layer.o(o.reshape(n, hq * dh))
            x = x + d._mlp(layer, d._norm(x, layer.norm2_weight, layer.norm2_bias))
        picks: list[int] = []
        offset = 0
        for row, s in zip(rows, lengths):
            picks.extend(range(offset, offset + s) if row.all_logits else (offset + s - 1,))
            offset += s
        x = x[torch.tensor(picks, device=device)] if len(picks) != n else x
        logits = d.lm_head(d._norm(x, d.final_norm_weight, d.final_norm_bias)).float()  # [P, V]
        out: list[Tensor] = []
        offset = 0
        for row, s in zip(rows, lengths):
            if row.all_logits:
                out.append(logits[offset : offset + s])
                offset += s
            else:
                out.append(logits[offset])
                offset += 1
        return out

    def _attend_per_row(self, q: Tensor, k_pool: Tensor, v_pool: Tensor, rows: Sequence[RowInput], lengths: list[int]) -> Tensor:
        """Each row's queries [S, Hq, Dh] over its own slot's keys (views): [N, Hq, Dh]."""
        outs: list[Tensor] = []
        offset = 0
        for row, s in zip(rows, lengths):
            q_row = q[offset : offset + s].transpose(0, 1).unsqueeze(0)  # [1, Hq, S, Dh]
            slot = row.slot
            o = attention(
                q_row, k_pool[slot : slot + 1], v_pool[slot : slot + 1],
                q_start=row.start_pos, kv_len=row.start_pos + s, backend=self.attention_backend,
            )  # [1, Hq, S, Dh]
            outs.append(o[0].transpose(0, 1))  # [S, Hq, Dh]
            offset += s
        return outs[0] if len(outs) == 1 else torch.cat(outs)


class _ShortRows:
    """CPU/SDPA: the short rows (decode tokens and drafts) of a step in one SDPA call, the long rows (prefill
    chunks) one call each. The short rows' slots must lie in a narrow range ``lo..hi`` (slots are handed out
    lowest first, so they usually do): queries are padded to ``[hi-lo+1, Hq, S_max, Dh]`` and attend to a
    view of those slots' first ``T_max`` keys — no copy — under a mask of each row's own causal prefix.

    NOTE: slots in the range that have no short row this step compute padding, discarded; a padding query
    may see key 0 only, so no softmax runs over an empty row (NaN)."""

    MAX_QUERIES = 8  # a token plus a full draft; longer rows go alone
    MAX_SPREAD = 2  # the slot range may be at most this many times the number of short rows

    def __init__(self, rows: list[RowInput], token_index: Tensor, long_index: Tensor, lo: int, mask: Tensor, scatter: tuple[Tensor, Tensor], long_rows: list[RowInput], long_lengths: list[int]) -> None:
        self.rows = rows
        self.token_index = token_index  # [n_short] positions of the short rows' tokens in the step's stream
        self.long_index = long_index  # [n_long] the rest
        self.lo = lo
        self.mask = mask  # [R, 1, S_max, T_max]
        self.scatter = scatter  # (slot - lo, query index) per short token
        self.long_rows = long_rows
        self.long_lengths = long_lengths

    @classmethod
    def plan(cls, rows: Sequence[RowInput], lengths: list[int], device: torch.device) -> _ShortRows | None:
        short = [(r, s) for r, s in zip(rows, lengths) if s <= cls.MAX_QUERIES]
        if len(short) < 2:
            return None
        lo = min(r.slot for r, _ in short)
        span = max(r.slot for r, _ in short) - lo + 1
        if span > cls.MAX_SPREAD * len(short):
            return None
        s_max = max(s for _, s in short)
        t_max = max(r.start_pos + s for r, s in short)
        mask = torch.zeros(span, 1, s_max, t_max, dtype=torch.bool)
        mask[:, :, :, 0] = True  # padding queries: key 0 only
        token_index: list[int] = []
        long_index: list[int] = []
        slots: list[int] = []
        queries: list[int] = []
        long_rows: list[RowInput] = []
        long_lengths: list[int] = []
        offset = 0
        for row, s in zip(rows, lengths):
            if s <= cls.MAX_QUERIES:
                for i in range(s):
                    mask[row.slot - lo, 0, i, : row.start_pos + i + 1] = True
                    slots.append(row.slot - lo)
                    queries.append(i)
                token_index.extend(range(offset, offset + s))
            else:
                long_index.extend(range(offset, offset + s))
                long_rows.append(row)
                long_lengths.append(s)
            offset += s

        def index(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(
            [r for r, _ in short], index(token_index), index(long_index), lo, mask.to(device),
            (index(slots), index(queries)), long_rows, long_lengths,
        )

    def __call__(self, q: Tensor, k_pool: Tensor, v_pool: Tensor, attend_long: Callable[[Tensor], Tensor] | None) -> Tensor:  # [N, Hq, Dh] -> same
        span, _, s_max, t_max = self.mask.shape
        n, hq, dh = q.shape
        padded = q.new_zeros(span, s_max, hq, dh)
        padded[self.scatter] = q[self.token_index]
        k = k_pool[self.lo : self.lo + span, :, :t_max].to(q.dtype)  # [R, Hkv, T_max, Dh] (a view, or a widened copy)
        v = v_pool[self.lo : self.lo + span, :, :t_max].to(q.dtype)
        gqa = hq != k.shape[1]
        o = F.scaled_dot_product_attention(padded.transpose(1, 2), k, v, attn_mask=self.mask, enable_gqa=gqa)  # [R, Hq, S, Dh]
        out = q.new_empty(n, hq, dh)
        out[self.token_index] = o.transpose(1, 2)[self.scatter]
        if self.long_rows:
            assert attend_long is not None
            out[self.long_index] = attend_long(q[self.long_index])
        return out


class _XformersRows:
    """CUDA: all rows in one ``memory_efficient_attention`` call. Queries are concatenated; each row's keys
    are its slot's first ``kv_len`` positions out of a padded block of ``kv_padding`` (the longest row), and
    the row's queries are aligned to the end of its keys (causal with offset)."""

    def __init__(self, rows: Sequence[RowInput], lengths: list[int], max_tokens: int) -> None:
        import xformers.ops as xops  # optional dependency, CUDA only

        self.xops = xops
        kv_lens = [row.start_pos + s for row, s in zip(rows, lengths)]
        self.kv_padding = min(max_tokens, -(-max(kv_lens) // 8) * 8)
        self.slots = [row.slot for row in rows]
        self.bias: Any = xops.fmha.attn_bias.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
            q_seqlen=lengths, kv_padding=self.kv_padding, kv_seqlen=kv_lens
        )

    def __call__(self, q: Tensor, k_pool: Tensor, v_pool: Tensor) -> Tensor:  # [N, Hq, Dh] -> [N, Hq, Dh]
        n, hq, dh = q.shape
        hkv = k_pool.shape[1]
        groups = hq // hkv
        index = torch.tensor(self.slots, device=q.device)
        # [B, Hkv, P, Dh] -> [1, B*P, Hkv, G, Dh] (grouped-query layout: G queries per kv head)
        k = k_pool[index, :, : self.kv_padding].to(q.dtype).transpose(1, 2).reshape(1, -1, hkv, 1, dh).expand(-1, -1, -1, groups, -1)
        v = v_pool[index, :, : self.kv_padding].to(q.dtype).transpose(1, 2).reshape(1, -1, hkv, 1, dh).expand(-1, -1, -1, groups, -1)
        out: Tensor = self.xops.memory_efficient_attention(q.view(1, n, hkv, groups, dh), k, v, attn_bias=self.bias)
        return out.view(n, hq, dh)
