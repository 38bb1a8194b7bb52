"""The whole one-token decode step in C (quant.DecodeStep, what GgufDecoder.forward runs for one token)
against the torch forward of the same decoder over the same kernels, on tiny random decoders."""

from __future__ import annotations

import pytest
import torch

from tabfill.kernels import quant
from tabfill.kernels.config import Arch
from tabfill.kernels.gguf_decoder import GgufDecoder
from tabfill.kernels.packing import Layer
from tabfill.kernels.quant import QuantLinear
from tests.unit.kernels.test_quant import kernel_path, needs_kernels, random_tensor  # noqa: F401 (a fixture)

D, HEADS, KV_HEADS, HEAD_DIM, INTER, VOCAB, TOKENS = 64, 4, 2, 16, 96, 120, 48


def tiny_decoder(kind: int, *, bias: bool = False, kv_dtype: torch.dtype = torch.float32) -> GgufDecoder:
    """Weights of GGML type ``kind`` (F32: no activation rounding anywhere), Llama shapes, keys and values
    kept as ``kv_dtype``. The K-quants (rows of whole 256-value blocks) get D 256, heads of 64 and INTER 512."""
    seeds = iter(range(1000))
    kquant = kind in (quant.Q4_K, quant.Q6_K)
    dim, head_dim, inter = (256, 64, 512) if kquant else (D, HEAD_DIM, INTER)

    def linear(rows: list[int], cols: int, with_bias: bool = False) -> QuantLinear:
        parts = [random_tensor(kind, r, cols, seed=next(seeds)) for r in rows]
        return QuantLinear(parts, torch.randn(sum(rows), generator=gen) * 0.1 if with_bias else None)

    gen = torch.Generator().manual_seed(7)
    layers = [
        Layer(
            norm1_weight=1 + 0.1 * torch.randn(dim, generator=gen), norm1_bias=None,
            qkv=linear([HEADS * head_dim, KV_HEADS * head_dim, KV_HEADS * head_dim], dim, bias),
            o=linear([dim], HEADS * head_dim),
            norm2_weight=1 + 0.1 * torch.randn(dim, generator=gen), norm2_bias=None,
            up=linear([inter, inter], dim), down=linear([dim], inter),
        )
        for _ in range(2)
    ]
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(TOKENS).float(), inv_freq)  # [T, Dh/2]
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1)
    signed_sin = torch.cat((-angles.sin(), angles.sin()), dim=-1)
    embed = random_tensor(kind, VOCAB, dim, seed=999)
    return GgufDecoder(
        token_embd=embed, arch=Arch(norm="rms", gated_mlp=True, activation="silu", eps=1e-5),
        embed=torch.empty(0, dim), embed_transposed=False, layers=layers, final_norm_weight=torch.ones(dim),
        final_norm_bias=None, lm_head=linear([VOCAB], dim), cos=cos, signed_sin=signed_sin, num_heads=HEADS,
        num_kv_heads=KV_HEADS, head_dim=head_dim, vocab_size=VOCAB, max_tokens=TOKENS, quantization="test",
        kv_dtype=kv_dtype,
    )


def _steps_both_ways(
    decoder: GgufDecoder, prompt: list[int], steps: list[int], tol: float = 1e-4
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(C step logits, torch forward logits) at each step after the same prefill; the caches compared too."""
    step = decoder.step
    assert step is not None
    out = []
    decoder.step = None
    decoder.forward(prompt, 0)  # the prefill through the torch forward
    decoder.step = step
    for i, token in enumerate(steps):
        pos = len(prompt) + i
        decoder.step = None
        expected = decoder.forward([token], pos)
        k, v = decoder.cache.k.clone(), decoder.cache.v.clone()
        decoder.step = step
        actual = decoder.forward([token], pos)
        assert actual.shape == (VOCAB,)
        torch.testing.assert_close(decoder.cache.k, k, rtol=tol, atol=tol)
        torch.testing.assert_close(decoder.cache.v, v, rtol=tol, atol=tol)
        out.append((actual, expected))
    return out


@needs_kernels
def test_c_step_equals_the_torch_forward_on_fp32_weights() -> None:
    decoder = tiny_decoder(quant.F32, bias=True)
    for actual, expected in _steps_both_ways(decoder, [3, 17, 42, 99, 5], [8, 64, 119, 0, 33]):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@needs_kernels
def test_c_step_over_fp16_keys_and_values_equals_the_torch_forward_over_them(kernel_path: str) -> None:
    """Both write keys and values rounded to fp16 (C: F16C or the portable rounding; torch: .half()) and attend
    over them widened to fp32: the same caches (up to a key that fp32 order moves across a rounding step) and
    the same logits; and those differ from an fp32 cache's by the rounding."""
    decoder = tiny_decoder(quant.F32, bias=True, kv_dtype=torch.float16)
    assert decoder.cache.k.dtype == torch.float16 and decoder.step is not None
    prompt, steps = [3, 17, 42, 99, 5], [8, 64, 119, 0, 33]
    for actual, expected in _steps_both_ways(decoder, prompt, steps, tol=1e-3):
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    wide = tiny_decoder(quant.F32, bias=True)
    wide.forward(prompt, 0)
    for i, token in enumerate(steps):
        exact = wide.forward([token], len(prompt) + i)
    assert not torch.equal(exact, actual)  # the rounding reaches the logits (on random weights, by up to ~3 %)
    # the first layer's keys and values (from the embeddings alone) are the fp32 cache's, each rounded once
    assert torch.equal(decoder.cache.k[0], wide.cache.k[0].half()) and torch.equal(decoder.cache.v[0], wide.cache.v[0].half())


@needs_kernels
def test_c_step_follows_the_torch_forward_on_quantized_weights() -> None:
    """Same kernels, same activation rounding; only fp32 order in norms and attention differs (which may move
    an activation across a rounding step of max|x|/32767: a small difference)."""
    for kind in (quant.Q4_1, quant.Q8_0, quant.Q4_0, quant.Q4_K, quant.Q6_K):
        decoder = tiny_decoder(kind)
        for actual, expected in _steps_both_ways(decoder, list(range(10, 30)), [1, 2, 3], tol=2e-3):
            assert (actual - expected).abs().max() <= 2e-3 * expected.abs().max()
            assert actual.argmax() == expected.argmax()


@needs_kernels
def test_decoder_without_quantized_matrices_has_no_c_step() -> None:
    decoder = tiny_decoder(quant.F32)
    assert decoder.step is not None
    decoder.layers[0].o = lambda x: x  # type: ignore[assignment]
    assert decoder.decode_step(decoder.cache) is None


@needs_kernels
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_decode_rows_of_a_slot_pool_equal_each_row_alone_bit_for_bit(kv_dtype: torch.dtype) -> None:
    """tf_decode_rows (the team engine's steady state: one decode token for each of several slots) gives a
    row what it gets in a call of its own, and writes its K/V into its own slot only; over fp32 and fp16 pools."""
    from tabfill.kernels.batch import BatchedDecoder, RowInput

    decoder = tiny_decoder(quant.Q8_0, kv_dtype=kv_dtype)
    batch = BatchedDecoder(decoder, slots=4, max_tokens=TOKENS)
    assert batch.c_rows is not None and batch.pool.k.dtype == kv_dtype
    prompts = {0: [3, 1, 4, 1, 5], 2: [9, 2, 6, 5, 3, 5, 8, 9, 7], 3: [2, 7]}
    batch.forward_rows([RowInput(slot, ids, 0) for slot, ids in prompts.items()])  # prefill: the torch forward
    tokens, positions, slots = [11, 12, 13], [len(p) for p in prompts.values()], list(prompts)
    together = batch.c_rows.rows(tokens, positions, slots)
    pool_after = batch.pool.k.clone()
    alone = torch.stack([batch.c_rows.rows([t], [p], [s])[0] for t, p, s in zip(tokens, positions, slots)])
    assert torch.equal(together, alone)
    assert torch.equal(batch.pool.k, pool_after)  # the same keys written again
    assert not batch.pool.k[:, 1].any()  # slot 1 was never used
    # through forward_rows: decode-only steps take the C call
    out = batch.forward_rows([RowInput(s, [t], p) for t, p, s in zip(tokens, positions, slots)])
    assert all(torch.equal(o, a) for o, a in zip(out, alone))


@needs_kernels
def test_decode_rows_reject_repeated_slots_and_positions_outside() -> None:
    from tabfill.kernels.batch import BatchedDecoder

    batch = BatchedDecoder(tiny_decoder(quant.Q4_1), slots=2, max_tokens=TOKENS)
    assert batch.c_rows is not None
    for tokens, positions, slots in (([1, 2], [0, 0], [1, 1]), ([1], [TOKENS], [0]), ([1], [0], [2]), ([], [], [])):
        with pytest.raises(ValueError):
            batch.c_rows.rows(tokens, positions, slots)


@needs_kernels
def test_several_tokens_of_one_slot_in_one_c_call_equal_one_step_each_bit_for_bit() -> None:
    """A draft's verification (or a short prefill) in one C call is the causal forward of its tokens: each
    attends to the keys the call wrote before it, and gets what single-token steps give, bit for bit."""
    for kind in (quant.Q4_1, quant.Q4_K):
        decoder = tiny_decoder(kind)
        prompt, tokens = [5, 9, 2, 7, 7, 1], [11, 3, 3, 40, 8]
        decoder.forward(prompt, 0)
        start = len(prompt)
        together = decoder.forward(tokens, start, all_logits=True)  # [5, V], one C call
        k_together, v_together = decoder.cache.k.clone(), decoder.cache.v.clone()
        last = decoder.forward(tokens, start)  # the last row's logits only
        alone = torch.stack([decoder.forward([t], start + i) for i, t in enumerate(tokens)])
        assert together.shape == (len(tokens), VOCAB)
        assert torch.equal(together, alone)
        assert torch.equal(last, alone[-1])
        assert torch.equal(decoder.cache.k, k_together) and torch.equal(decoder.cache.v, v_together)
        # the torch forward of the same tokens agrees (its attention sums in another order)
        step, decoder.step = decoder.step, None
        expected = decoder.forward(tokens, start, all_logits=True)
        decoder.step = step
        assert (together - expected).abs().max() <= 2e-3 * expected.abs().max()
        assert torch.equal(together.argmax(-1), expected.argmax(-1))


@needs_kernels
def test_c_rows_return_the_logits_of_the_rows_asked_for() -> None:
    decoder = tiny_decoder(quant.Q8_0)
    step = decoder.step
    assert step is not None
    decoder.forward([4, 4, 4], 0)
    every = step.rows([7, 8, 9], [3, 4, 5], [0, 0, 0])
    assert torch.equal(step.rows([7, 8, 9], [3, 4, 5], [0, 0, 0], [2, 0]), every[[2, 0]])
    for outputs in ([], [3], [-1]):
        with pytest.raises(ValueError):
            step.rows([7, 8, 9], [3, 4, 5], [0, 0, 0], outputs)


@needs_kernels
def test_a_batch_step_with_draft_rows_runs_them_in_the_c_call_and_equals_each_row_alone() -> None:
    """forward_rows sends decode and draft rows (narrow) to the C call; a row's logits are what it gets alone."""
    from tabfill.kernels.batch import BatchedDecoder, RowInput

    batch = BatchedDecoder(tiny_decoder(quant.Q4_1), slots=3, max_tokens=TOKENS)
    prompts = {0: [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3], 1: [2, 7, 1, 8], 2: [6, 6]}
    batch.forward_rows([RowInput(slot, ids, 0) for slot, ids in prompts.items()])  # 18 tokens: torch for slot 0
    rows = [RowInput(0, [11, 12, 13], 18, all_logits=True), RowInput(1, [14], 4), RowInput(2, [15, 16], 2)]
    calls: list[int] = []
    real = batch._forward_torch
    batch._forward_torch = lambda rs: calls.append(len(rs)) or real(rs)  # type: ignore[method-assign]
    together = batch.forward_rows(rows)
    assert not calls  # no torch forward in this step
    alone = [batch.forward_rows([row])[0] for row in rows]
    assert together[0].shape == (3, VOCAB) and together[1].shape == (VOCAB,) and together[2].shape == (VOCAB,)
    assert all(torch.equal(a, b) for a, b in zip(together, alone))
