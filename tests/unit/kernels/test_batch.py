"""BatchedDecoder.forward_rows against its reference twin: each row run alone through LeanDecoder.forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tabfill.kernels import LeanDecoder, steps
from tabfill.kernels.attention import xformers_available
from tabfill.kernels.batch import BatchedDecoder, RowInput
from tests.unit.kernels.test_decoder import ATOL, _model, _prompt

ARCHS = ["llama", "qwen2", "starcoder2"]


class Twin:
    """The batched pool and, per slot, the token sequence it should hold (replayed alone for reference)."""

    def __init__(self, decoder: LeanDecoder, batch: BatchedDecoder) -> None:
        self.decoder = decoder
        self.batch = batch
        self.seqs: dict[int, list[int]] = {}

    def step(self, rows: list[RowInput]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run rows batched; returns (batched, reference) logits per row and records what each slot holds."""
        got = self.batch.forward_rows(rows)
        pairs = []
        for row, logits in zip(rows, got):
            held = self.seqs.get(row.slot, [])[: row.start_pos] + list(row.token_ids)
            self.seqs[row.slot] = held
            # the reference: the slot's whole sequence alone, in one forward
            ids = torch.tensor(held, device=self.decoder.device)
            expected = self.decoder.forward(ids, 0, all_logits=True)[row.start_pos :]
            pairs.append((logits, expected if row.all_logits else expected[-1]))
        return pairs


@pytest.fixture(scope="module", params=ARCHS)
def twin(request: pytest.FixtureRequest) -> Twin:
    decoder = LeanDecoder.from_hf(_model(request.param), max_tokens=96)
    return Twin(decoder, BatchedDecoder(decoder, slots=4, max_tokens=96))


def assert_pairs(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for got, expected in pairs:
        assert got.shape == expected.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=ATOL)


def test_mixed_prefill_decode_and_draft_rows_equal_each_row_alone(twin: Twin) -> None:
    a, b, c = _prompt(30, 1), _prompt(17, 2), _prompt(9, 3)
    # prefill rows of different lengths in one forward
    assert_pairs(twin.step([RowInput(0, a[:20], 0), RowInput(3, b[:5], 0, all_logits=True), RowInput(1, c, 0)]))
    # a decode row, a draft row (all logits), a prefill chunk continuing at an offset
    assert_pairs(twin.step([RowInput(1, [7], 9), RowInput(0, a[20:26], 20, all_logits=True), RowInput(3, b[5:], 5)]))
    # rows in another order, one slot idle
    assert_pairs(twin.step([RowInput(3, [11, 12, 13], 17, all_logits=True), RowInput(1, [8], 10)]))


def test_a_rejected_draft_is_overwritten_and_slots_are_reused(twin: Twin) -> None:
    a, b = _prompt(40, 4), _prompt(12, 5)
    assert_pairs(twin.step([RowInput(2, a, 0)]))
    assert_pairs(twin.step([RowInput(2, _prompt(6, 6), 40, all_logits=True)]))  # a draft...
    assert_pairs(twin.step([RowInput(2, [3, 4], 41, all_logits=True)]))  # ...rejected after one token
    # the slot is freed and given to a shorter sequence: stale keys beyond it must not be attended
    assert_pairs(twin.step([RowInput(2, b, 0, all_logits=True), RowInput(0, [1], 0)]))
    assert_pairs(twin.step([RowInput(2, [5], 12), RowInput(0, [2], 1)]))


def test_greedy_tokens_of_a_batch_equal_single_stream() -> None:
    decoder = LeanDecoder.from_hf(_model("llama"), max_tokens=64)
    batch = BatchedDecoder(decoder, slots=3, max_tokens=64)
    prompts = [_prompt(n, seed) for n, seed in ((5, 1), (19, 2), (33, 3))]
    outputs = batch.forward_rows([RowInput(i, p, 0) for i, p in enumerate(prompts)])
    tokens: list[list[int]] = [[int(o.argmax())] for o in outputs]
    for step in range(12):
        rows = [RowInput(i, [tokens[i][-1]], len(p) + step) for i, p in enumerate(prompts)]
        for i, out in enumerate(batch.forward_rows(rows)):
            tokens[i].append(int(out.argmax()))
    ties = 0
    for i, p in enumerate(prompts):
        logits = steps.prefill(decoder, p)
        for step in range(13):
            top2 = logits.topk(2).values
            if int(logits.argmax()) != tokens[i][step]:
                # a float tie on a random model: allowed only when the top two logits are equal to ~1e-5
                assert float(top2[0] - top2[1]) < 1e-4, f"row {i} step {step} diverged without a tie"
                ties += 1
                break
            if step < 12:
                logits = steps.decode_one_token(decoder, tokens[i][step], len(p) + step)
    assert ties <= 1


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_K"])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_a_gguf_decoder_batches_like_each_row_alone(kind: str, kv_dtype: torch.dtype) -> None:
    """The team engine's CPU path: a decoder over GGUF blocks in the slot pool. Decode rows of several slots
    in one call get each token's products as alone (the kernels' tiles); prefill chunks of more than
    KERNEL_MAX_TOKENS tokens take the dequantized GEMM over Q4_1 (fp32 activations: the reference rounds
    them) and stay in the kernels over the K-quants. Over an fp32 pool and an fp16 one (the default for GGUF
    weights: the C call and the torch forward both round keys and values to it)."""
    from tabfill.kernels import quant
    from tests.unit.kernels.test_gguf_step import TOKENS, VOCAB, tiny_decoder

    decoder = tiny_decoder(getattr(quant, kind), kv_dtype=kv_dtype)
    twin = Twin(decoder, BatchedDecoder(decoder, slots=3, max_tokens=TOKENS))
    assert twin.batch.pool.k.dtype == twin.decoder.cache.k.dtype == kv_dtype
    prompts = [torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (5, 9, 40)]

    def check(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        # attention sums in another order move the activations a little, and with them their 16-bit rounding
        # (a value across a rounding step: a change in proportion to the logits' scale, ~400 for the K-quants)
        for got, expected in pairs:
            assert got.shape == expected.shape
            scale = float(expected.abs().max()) if kind == "Q4_K" else 1.0
            torch.testing.assert_close(got, expected, atol=2e-3 * scale, rtol=2e-3)

    check(twin.step([RowInput(0, prompts[0], 0), RowInput(1, prompts[1], 0)]))  # 14 tokens: the kernels
    check(twin.step([RowInput(2, prompts[2], 0, all_logits=True)]))  # 40 tokens: GEMM (Q4_1) or the kernels
    for step in range(3):  # three decode rows in one call, then two
        check(twin.step([RowInput(i, [step + i], len(p) + step) for i, p in enumerate(prompts) if i < 3 - (step == 2)]))
    # decode rows (the C call) beside a draft row (the torch forward) in one step: split, then merged in order
    check(twin.step([RowInput(0, [4, 5, 6], len(prompts[0]) + 3, all_logits=True), RowInput(1, [7], len(prompts[1]) + 3),
                     RowInput(2, [8], len(prompts[2]) + 2, all_logits=True)]))


def test_bad_rows_raise_before_anything_is_written(twin: Twin) -> None:
    batch = twin.batch
    before = batch.pool.k.clone()
    with pytest.raises(ValueError, match="outside the slot"):
        batch.forward_rows([RowInput(0, [1, 2, 3], batch.max_tokens - 2)])
    with pytest.raises(ValueError, match="two rows"):
        batch.forward_rows([RowInput(1, [1], 0), RowInput(1, [2], 1)])
    with pytest.raises(ValueError, match="slot 4"):
        batch.forward_rows([RowInput(4, [1], 0)])
    with pytest.raises(ValueError, match="outside the slot"):
        batch.forward_rows([RowInput(0, [], 0)])
    with pytest.raises(ValueError, match="at least one row"):
        batch.forward_rows([])
    assert torch.equal(batch.pool.k, before)


def test_pool_size_read_write_kv_and_describe() -> None:
    decoder = LeanDecoder.from_hf(_model("qwen2"), max_tokens=64)
    batch = BatchedDecoder(decoder, slots=5, max_tokens=48)
    per_token = decoder.kv_bytes_per_token()
    assert batch.kv_bytes_per_token() == per_token
    assert batch.pool_bytes == 5 * 48 * per_token == batch.pool.k.numel() * 4 * 2
    info = batch.describe()
    assert info["kv_pool_bytes"] == batch.pool_bytes and info["slots"] == 5 and info["slot_tokens"] == 48
    prompt = _prompt(20, 8)
    batch.forward_rows([RowInput(1, prompt, 0)])
    kv = batch.read_kv(1, 0, 20)
    assert kv.shape == (2, 2, 2, 20, 16)
    batch.write_kv(3, 0, kv)  # another slot now holds the same prefix
    assert torch.equal(batch.read_kv(3, 0, 20), kv)  # copied bit for bit
    got = batch.forward_rows([RowInput(3, [9], 20), RowInput(1, [9], 20)])
    # NOTE: the two rows sit at different places of one batched product, so the BLAS may sum them in another
    # order (seen: 7e-8 apart on an AMD EPYC, bit-equal on an Intel Xeon): equal up to float order.
    torch.testing.assert_close(got[0], got[1], atol=1e-6, rtol=1e-5)
    assert int(got[0].argmax()) == int(got[1].argmax())
    with pytest.raises(ValueError):
        BatchedDecoder(decoder, slots=1, max_tokens=65)  # beyond the decoder's rope tables
    with pytest.raises(ValueError):
        batch.write_kv(0, 40, kv)


@pytest.mark.skipif(not torch.cuda.is_available() or not xformers_available(), reason="xformers block-diagonal attention needs CUDA and xformers")
def test_xformers_rows_equal_each_row_alone_on_cuda() -> None:  # pragma: no cover - no GPU here
    model: Any = _model("qwen2").to("cuda")
    decoder = LeanDecoder.from_hf(model, max_tokens=96)
    batch = BatchedDecoder(decoder, slots=3, max_tokens=96)
    assert batch.attention_backend == "xformers"
    twin = Twin(decoder, batch)
    a, b = _prompt(30, 1), _prompt(17, 2)
    assert_pairs(twin.step([RowInput(0, a[:20], 0), RowInput(2, b, 0, all_logits=True)]))
    assert_pairs(twin.step([RowInput(2, [7], 17), RowInput(0, a[20:], 20, all_logits=True)]))



def test_a_decoder_for_the_pool_keeps_no_cache_of_its_own() -> None:
    model = _model("llama")
    shared = LeanDecoder.from_hf(model, max_tokens=64)
    decoder = LeanDecoder.from_hf(model, max_tokens=64, cache_tokens=0)
    assert decoder.cache.k.numel() == 0 and decoder.kv_bytes_per_token() == shared.kv_bytes_per_token()
    with pytest.raises(ValueError, match="outside the cache"):
        decoder.forward([1, 2], 0)
    batch = BatchedDecoder(decoder, slots=2, max_tokens=64)
    prompt = _prompt(10, 3)
    torch.testing.assert_close(batch.forward_rows([RowInput(1, prompt, 0)])[0], shared.forward(prompt, 0), atol=ATOL, rtol=ATOL)
