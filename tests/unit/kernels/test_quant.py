"""The GGUF block kernels: the torch reference twin against gguf-py's dequantizer, the kernels' integer
activation blocks bit for bit against their twin, the C kernels against the reference (random blocks of
every supported type, fused parts of mixed types, 1..32 tokens and the GEMM path, AVX2 and portable C), and
the integer path's distance from the fp32 product bounded by the activations' rounding."""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from tabfill.kernels import quant
from tabfill.kernels.quant import (
    QuantError, QuantLinear, QuantTensor, dequantize, dequantize_rows, kernel_activations, quantize_activations,
    reference_linear,
)

TYPES = [quant.F32, quant.F16, quant.Q4_0, quant.Q4_1, quant.Q8_0, quant.Q4_K, quant.Q6_K]
# offsets of the fp16 fields in each block (random bytes there could be inf/nan)
_HALF_FIELDS = {quant.Q4_0: (0,), quant.Q4_1: (0, 2), quant.Q8_0: (0,), quant.Q4_K: (0, 2), quant.Q6_K: (208,)}

built, why_not = quant.kernels_available()
needs_kernels = pytest.mark.skipif(not built, reason=why_not)


@pytest.fixture(params=["native", "portable"])
def kernel_path(request: pytest.FixtureRequest) -> object:
    """Each kernel test twice: the instruction set this machine has, and the portable C (no AVX2)."""
    if not built:
        pytest.skip(why_not)
    lib = quant._lib()
    lib.tf_force_portable(int(request.param == "portable"))
    yield request.param
    lib.tf_force_portable(0)


def random_tensor(kind: int, rows: int, cols: int, seed: int = 0) -> QuantTensor:
    """Random blocks of ``kind``: random payload bits, scales drawn like a trained model's (small, signed)."""
    gen = np.random.default_rng(seed)
    elems, nbytes = quant.BLOCKS[kind]
    if kind in (quant.F32, quant.F16):
        values = gen.standard_normal((rows, cols)).astype(np.float32 if kind == quant.F32 else np.float16)
        return QuantTensor(kind, rows, cols, torch.from_numpy(values.view(np.uint8).copy()))
    blocks = gen.integers(0, 256, (rows, cols // elems, nbytes), dtype=np.uint8)
    for offset in _HALF_FIELDS[kind]:
        halves = (gen.standard_normal((rows, cols // elems)) * 0.02).astype(np.float16)
        blocks[..., offset : offset + 2] = halves.view(np.uint8).reshape(rows, cols // elems, 2)
    return QuantTensor(kind, rows, cols, torch.from_numpy(blocks.reshape(rows, -1).copy()))


@pytest.mark.parametrize("kind", TYPES, ids=lambda k: quant.TYPE_NAMES[k])
def test_reference_dequantize_matches_gguf_py(kind: int) -> None:
    tensor = random_tensor(kind, 7, 512, seed=kind)
    expected = gguf_dequantize(tensor.data.numpy(), GGMLQuantizationType(kind)).astype(np.float32)
    actual = dequantize(tensor)
    assert actual.shape == (7, 512)
    # same formulas; only fp32 rounding of d * scale * q may differ by an ulp
    torch.testing.assert_close(actual, torch.from_numpy(expected.reshape(7, 512)), rtol=1e-6, atol=1e-7)


@needs_kernels
@pytest.mark.parametrize("kind", TYPES, ids=lambda k: quant.TYPE_NAMES[k])
def test_c_dequantize_matches_reference(kind: int) -> None:
    tensor = random_tensor(kind, 37, 768, seed=10 + kind)
    expected = dequantize(tensor)
    torch.testing.assert_close(dequantize_rows(tensor), expected, rtol=1e-6, atol=1e-7)
    index = torch.tensor([36, 0, 5, 5])
    torch.testing.assert_close(dequantize_rows(tensor, index), expected[index], rtol=1e-6, atol=1e-7)
    with pytest.raises(IndexError):
        dequantize_rows(tensor, torch.tensor([37]))


def _activations(tokens: int, cols: int, seed: int) -> torch.Tensor:
    """Activations like a decoder's: mostly small, a few outlier channels, an all-zero block, exact halves."""
    x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(seed))
    x[:, 7] *= 40.0
    x[:, 32:64] = 0.0
    x[0, 96] = 32767 / 1024  # d = 2^-10 exactly: the block's other values are exact halves (ties) of the step
    x[0, 97:128] = (torch.arange(31) - 14.5) / 1024
    return x


def test_activation_twin_rounds_half_to_even() -> None:
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 2] = 32767.0, 0.5, 1.5  # d = 1: 0.5 -> 0, 1.5 -> 2
    q, d = quantize_activations(x)
    assert q[0, :3].tolist() == [32767, 0, 2] and d.tolist() == [[1.0]]
    assert quantize_activations(torch.zeros(2, 64))[0].abs().sum() == 0


@pytest.mark.parametrize("block", [32, 256])
@pytest.mark.parametrize("tokens", [1, 5])
def test_kernel_activations_equal_the_twin_bit_for_bit(kernel_path: object, tokens: int, block: int) -> None:
    x = _activations(tokens, 1536, seed=tokens)
    q, d, ds = kernel_activations(x, block)
    q_ref, d_ref = quantize_activations(x, block)
    assert torch.equal(q, q_ref) and torch.equal(d, d_ref)
    torch.testing.assert_close(ds, d_ref * q_ref.view(tokens, -1, 32).sum(-1).float(), rtol=0, atol=0)


def test_k_quant_activations_share_one_scale_per_super_block() -> None:
    """Per 256 values one scale, set by the largest of them: the outlier channel 7 sets the scale of values
    0..255, not only of 0..31; the all-zero block 1 is 0 either way."""
    x = _activations(1, 512, seed=1)
    q32, d32 = quantize_activations(x, 32)
    q256, d256 = quantize_activations(x, 256)
    assert d256.shape == d32.shape == (1, 16)
    assert torch.equal(d256[0, :8], d256[0, :1].expand(8)) and torch.equal(d256[0, 8:], d256[0, 8:9].expand(8))
    assert torch.equal(d256[0, 0], x[0, :256].abs().max() / quant.ACT_MAX) and float(d256[0, 0]) > float(d32[0, 2])
    assert torch.equal(q256[0, 32:64], q32[0, 32:64]) and not q256[0, 32:64].any()
    assert int(q256[0, :256].abs().max()) == 32767


@pytest.mark.parametrize("kind", TYPES, ids=lambda k: quant.TYPE_NAMES[k])
@pytest.mark.parametrize("tokens", [1, 2, 3, 8, 11, 16, 32, 40])
def test_matmul_matches_reference(kernel_path: object, kind: int, tokens: int) -> None:
    # 203 rows: the kernels' tiles of 4 and 2 rows leave rows over in every block of 16
    weight = random_tensor(kind, 203, 512, seed=kind * 100 + tokens)
    x = _activations(tokens, 512, seed=tokens)
    actual = QuantLinear([weight])(x)
    expected = reference_linear([weight], None, x)
    assert actual.shape == (tokens, 203)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("kind", [k for k in TYPES if k not in (quant.F32, quant.F16)], ids=lambda k: quant.TYPE_NAMES[k])
def test_integer_path_stays_within_the_activation_rounding_of_fp32(kernel_path: object, kind: int) -> None:
    """|W x_rounded - W x| <= |W| |x_rounded - x| <= |W| (d / 2): what the integer activations may cost at most."""
    weight = random_tensor(kind, 300, 1024, seed=kind)
    x = _activations(2, 1024, seed=kind)
    actual = QuantLinear([weight])(x)
    dense = dequantize(weight)
    exact = x @ dense.t()
    _, d = quantize_activations(x, quant.activation_block(kind))
    half_step = (d / 2).repeat_interleave(32, dim=1)  # [S, K]
    bound = half_step @ dense.abs().t()  # [S, N]
    slack = 1e-4 * (x.abs() @ dense.abs().t())  # fp32 summation order
    assert ((actual - exact).abs() <= bound + slack).all()
    assert (actual - exact).abs().max() > 0  # the rounding is there: this is not the fp32 product


@pytest.mark.parametrize("tail", [quant.Q6_K, quant.Q8_0], ids=["k-quants", "k-quants-and-q8_0"])
@pytest.mark.parametrize("tile_bytes", [quant.TILE_BYTES, 64 * 4 * 1024], ids=["one-tile", "tiles-of-64-rows"])
@pytest.mark.parametrize("tokens", [1, 5, 33])
def test_fused_parts_of_mixed_types_with_bias(kernel_path: object, tokens: int, tile_bytes: int, tail: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """33 tokens: K-quant parts alone still take the kernels (each rounds the activations per 256 values);
    with a Q8_0 part the product takes the dequantized GEMM tiles."""
    monkeypatch.setattr(quant, "TILE_BYTES", tile_bytes)
    parts = [random_tensor(quant.Q4_K, 96, 1024, 1), random_tensor(quant.Q4_K, 32, 1024, 2), random_tensor(tail, 40, 1024, 3)]
    assert quant.kernel_max_tokens(parts) == (quant.KERNEL_MAX_TOKENS if tail == quant.Q8_0 else quant.KQUANT_KERNEL_MAX_TOKENS)
    bias = torch.randn(168)
    x = _activations(tokens, 1024, seed=3)
    expected = reference_linear(parts, bias, x)
    torch.testing.assert_close(QuantLinear(parts, bias)(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("cols", [512, 2304], ids=["short-rows", "rows-in-pairs"])
@pytest.mark.parametrize("kind", [k for k in TYPES if k not in (quant.F32, quant.F16)], ids=lambda k: quant.TYPE_NAMES[k])
def test_a_tokens_product_does_not_depend_on_the_others_in_the_call(kernel_path: object, kind: int, cols: int) -> None:
    """A row of a batch (decode rows of many editors) gets bit for bit what it gets alone, whatever tile
    shape the kernels take for 1, 2, 3, 4, 7 or 8 tokens, and in the later tiles of 9 and 17 (a second group
    of 8, a tile of one). Rows of more than 2,048 values go through the 8-token K-quant tiles in pairs where
    AVX-512 runs (67 rows: 33 pairs and one alone)."""
    weight = random_tensor(kind, 67, cols, seed=kind)
    layer = QuantLinear([weight])
    x = _activations(17, cols, seed=kind)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(17)])
    for tokens in (2, 3, 4, 7, 8, 9, 17):
        assert torch.equal(layer(x[:tokens]), alone[:tokens]), tokens


@needs_kernels
@pytest.mark.parametrize(("kind", "cols"), [(quant.Q4_1, 576), (quant.Q4_K, 512)])
def test_threads_split_rows_the_same(monkeypatch: pytest.MonkeyPatch, kind: int, cols: int) -> None:
    """Rows go out in pieces sized by the thread count (1000 rows: a last piece cut short); a thread
    count of 0 or beyond the pool's limit is clamped, not a division by zero."""
    weight = random_tensor(kind, 1000, cols, 4)
    x = torch.randn(3, cols)
    layer = QuantLinear([weight])
    monkeypatch.setattr(quant, "_threads", lambda: 1)
    one = layer(x)
    for threads in (2, 3, 0, 100):
        monkeypatch.setattr(quant, "_threads", lambda threads=threads: threads)
        assert torch.equal(layer(x), one), threads  # each row is computed by one thread in the same order


def test_bad_shapes_are_typed_errors() -> None:
    with pytest.raises(QuantError, match="whole blocks"):
        QuantTensor(quant.Q4_K, 2, 100, torch.zeros(2, 100, dtype=torch.uint8))
    with pytest.raises(QuantError, match="not supported"):
        QuantTensor(99, 2, 32, torch.zeros(2, 32, dtype=torch.uint8))
    with pytest.raises(QuantError, match="is not"):
        QuantTensor(quant.Q8_0, 2, 64, torch.zeros(2, 60, dtype=torch.uint8))


@needs_kernels
@pytest.mark.parametrize("cols", [512, 2304], ids=["short-rows", "rows-in-pairs"])
@pytest.mark.parametrize("kind", [k for k in TYPES if k not in (quant.F32, quant.F16)], ids=lambda k: quant.TYPE_NAMES[k])
def test_avx512_tiles_equal_the_avx2_tiles_bit_for_bit(kind: int, cols: int) -> None:
    """The AVX-512 VNNI build of the tiles (32 registers, fused madds, K-quant rows of more than 2,048 values
    in pairs at 8 tokens) is the AVX2 one's twin: the same integers and fp32 operations, so the same bits, for
    one token (decode) and tiles of several (batch, verify, prefill)."""
    lib = quant._lib()
    if not lib.tf_has_avx2() or not lib.tf_has_avx512():
        pytest.skip("this machine has no AVX-512 VNNI: only the AVX2 tiles run here")
    weight = random_tensor(kind, 67, cols, seed=kind + 1)
    layer = QuantLinear([weight])
    x = _activations(17, cols, seed=kind + 1)
    fast = [layer(x[:tokens]) for tokens in (1, 2, 8, 17)]
    lib.tf_force_avx2(1)
    try:
        assert lib.tf_has_avx512() == 0
        avx2 = [layer(x[:tokens]) for tokens in (1, 2, 8, 17)]
    finally:
        lib.tf_force_avx2(0)
    for tokens, a, b in zip((1, 2, 8, 17), fast, avx2):
        assert torch.equal(a, b), tokens
    assert quant.kernels_available() == (True, "AVX-512 VNNI tiles")


def test_kernels_built_from_older_source_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout updated without rebuilding its extension: the library lacks an entry point this source calls.
    That is a QuantError naming the file and saying to rebuild (GGUF models fall back to fp32), not a crash."""
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to stand in for an old build")
    monkeypatch.setattr(quant, "_lib_state", [])
    monkeypatch.setattr(quant, "_library_path", lambda: Path(libm))
    with pytest.raises(quant.QuantError, match="older than this source.*tf_matmul.*rebuild"):
        quant._lib()
    assert quant.kernels_available()[0] is False


def test_keys_and_values_round_to_fp16_as_torch_rounds_them(kernel_path: str) -> None:
    """The decode step's fp16 keys and values (F16C, or the portable rounding): torch's .half() bit for bit,
    ties to even, fp16 subnormals, overflow to infinity included."""
    gen = torch.Generator().manual_seed(3)
    spread = torch.randn(4000, generator=gen) * torch.exp2(torch.randint(-30, 18, (4000,), generator=gen).float())
    ulp = torch.tensor([1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 2.0**-24 * 1.5, 2.0**-24 * 2.5, 2.0**-25, 2.0**-25 * 1.0001, 2.0**-26])
    edges = torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, float("inf"), float("-inf"), 6.1e-5, 6.0e-8, 1e-9])
    x = torch.cat((spread, ulp, -ulp, edges, torch.arange(-1000, 1000) * 0.0137))
    assert torch.equal(quant.to_half(x), x.half().view(torch.int16))
