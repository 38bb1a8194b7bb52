"""GGUF-quantized weights kept in their blocks: the torch reference twin and the C kernels' wrapper.

A `QuantTensor` is one GGUF matrix as its file stores it ([rows, row_bytes] uint8, usually a view of the
memory-mapped file): nothing is dequantized at load. `QuantLinear` is a linear layer over one or more of them
(q|k|v or gate|up fused by concatenating rows, even when the parts have different block types):
- a few tokens (decode, draft verification, the decode rows of a batch, small prefill chunks): as llama.cpp
  does, each token's activations are quantized once per call to integer blocks (d = max|x| / 32767 per 32
  values, per 256 for the K-quants; q = round(x / d), 16-bit where llama.cpp uses 8: see csrc/quant.c), and
  the C kernels (csrc/quant.c) multiply them with the weight blocks in integers (AVX2 madd), streaming the
  compact weights once per call and unpacking each weight block once for up to 8 tokens: the product of the
  dequantized matrix with the rounded activations q * d, the same for a token whatever else shares the call;
- many tokens (prefill) over the 32-value types: rows are dequantized tile by tile into fp32 and multiplied
  with torch's GEMM (fp32 activations); products over K-quant matrices only stay in the kernels at any token
  count (faster than that GEMM on Qwen2.5-Coder's matrices: KQUANT_KERNEL_MAX_TOKENS).
F32/F16 matrices always take the fp32 activations.

`dequantize` and `quantize_activations` are the reference twins in torch, written from ggml's
dequantize_row_* definitions and the kernels' rounding; the tests check the first against gguf-py's numpy
dequantizer, the kernels' activation blocks bit for bit against the second, and the products against
`reference_linear`.

NOTE: measured on the 2-core AVX2 box, SmolLM2-135M Q4_1 (see `python -m bench.decode_step`).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# GGML type id -> (elements per block, bytes per block)
F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K = 0, 1, 2, 3, 8, 12, 14
BLOCKS: dict[int, tuple[int, int]] = {
    F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210),
}
TYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q8_0: "Q8_0", Q4_K: "Q4_K", Q6_K: "Q6_K"}
# Up to this many tokens a product runs in the C kernels; beyond it, dequantized tiles and torch's GEMM.
# NOTE: measured on SmolLM2's matrices, 2 threads: the kernels (8 tokens per tile) win up to ~32 tokens on the
# layers' matrices (up 2.7 vs 4.0 ms at 32) and up to 64 on the Q8_0 head (/work/runs/kb3.py, 2026-12-06).
KERNEL_MAX_TOKENS = 32
# Products over K-quant matrices only run in the kernels at any token count: their tiles sum a super-block in
# integers and beat the dequantized GEMM on Qwen2.5-Coder-1.5B's Q4_K matrices at 64-384 tokens (up: 130 vs
# 157 ms at 384 tokens) and match it on its Q6_K ffn_down (85 vs 77-80 ms; 2 threads, /work/runs/kbqw.py).
KQUANT_KERNEL_MAX_TOKENS = 1 << 30
# Forwards of up to this many tokens (a decode step, a draft's verification, a short prefill) run whole in the C
# step; wider ones through the torch forward (its attention reads the keys once for all the queries).
# NOTE: measured on SmolLM2-135M's Q4_1 GGUF at ~400 positions, 2 threads (/work/runs/verifyprobe.py): the C
# step took 5.5 / 7.3 / 12.5 / 24 / 51 ms for 1 / 2 / 4 / 8 / 16 tokens, the torch forward 13.7 / 16.4 / 20 /
# 30 / 55 ms.
STEP_MAX_TOKENS = 16
TILE_BYTES = 8 << 20  # fp32 bytes of one dequantized weight tile in the GEMM path


class QuantError(ValueError):
    """A tensor type or shape the kernels do not implement, or the kernels are not built."""


@dataclass(frozen=True)
class QuantTensor:
    """A [rows, cols] matrix in GGML blocks along cols: ``data`` [rows, row_bytes] uint8."""

    type: int
    rows: int
    cols: int
    data: Tensor

    def __post_init__(self) -> None:
        if self.type not in BLOCKS:
            raise QuantError(f"GGML type {self.type} is not supported (supported: {', '.join(TYPE_NAMES.values())})")
        elems, nbytes = BLOCKS[self.type]
        if self.cols % elems:
            raise QuantError(f"{TYPE_NAMES[self.type]} rows of {self.cols} values are not whole blocks of {elems}")
        expected = (self.rows, self.cols // elems * nbytes)
        if tuple(self.data.shape) != expected or self.data.dtype != torch.uint8 or not self.data.is_contiguous():
            raise QuantError(f"{TYPE_NAMES[self.type]} data {tuple(self.data.shape)} {self.data.dtype} is not {expected} uint8")

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def select_rows(self, index: Tensor) -> QuantTensor:
        """The rows ``index`` in that order (a copy of their blocks; used to undo GGUF's q/k row order)."""
        return QuantTensor(self.type, index.numel(), self.cols, self.data[index].contiguous())


# ---- the reference twin ------------------------------------------------------------------------------


def _half(blocks: Tensor, offset: int) -> Tensor:  # [..., B] uint8 -> [..., 1] fp32
    return blocks[..., offset : offset + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: Tensor) -> Tensor:  # [..., n] -> [..., 2n]: low nibbles, then high nibbles
    return torch.cat((qs & 0x0F, qs >> 4), dim=-1)


def _k4_scales(scales: Tensor) -> tuple[Tensor, Tensor]:  # [..., 12] -> scale, min [..., 8] (6-bit each)
    s = scales.to(torch.int32)
    low = torch.cat((s[..., 0:4] & 63, (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)), dim=-1)
    mins = torch.cat((s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)), dim=-1)
    return low.float(), mins.float()


def dequantize(tensor: QuantTensor) -> Tensor:
    """fp32 [rows, cols] exactly as ggml's dequantize_row_* computes it (the reference twin)."""
    rows, cols, kind = tensor.rows, tensor.cols, tensor.type
    elems, nbytes = BLOCKS[kind]
    if kind == F32:
        return tensor.data.view(torch.float32).clone()
    if kind == F16:
        return tensor.data.view(torch.float16).float()
    b = tensor.data.view(rows, cols // elems, nbytes)  # [R, nb, bytes]
    if kind in (Q4_0, Q4_1):
        d = _half(b, 0)
        qs_at = 2 if kind == Q4_0 else 4
        q = _nibbles(b[..., qs_at : qs_at + 16]).float()  # [R, nb, 32]
        out = d * (q - 8.0) if kind == Q4_0 else d * q + _half(b, 2)
    elif kind == Q8_0:
        out = _half(b, 0) * b[..., 2:34].contiguous().view(torch.int8).float()
    elif kind == Q4_K:
        d, dmin = _half(b, 0), _half(b, 2)  # [R, nb, 1]
        sc, mn = _k4_scales(b[..., 4:16])  # [R, nb, 8]
        qs = b[..., 16:144].reshape(rows, -1, 4, 32)  # 4 chunks of 32 bytes: low nibbles, then high
        q = torch.stack((qs & 0x0F, qs >> 4), dim=-2).reshape(rows, -1, 8, 32).float()  # [R, nb, 8, 32]
        out = (d * sc)[..., None] * q - (dmin * mn)[..., None]
    elif kind == Q6_K:
        ql = b[..., 0:128].reshape(rows, -1, 2, 2, 32).to(torch.int32)  # [R, nb, half, ql 0..31|32..63, l]
        qh = b[..., 128:192].reshape(rows, -1, 2, 1, 32).to(torch.int32)  # [R, nb, half, 1, l]
        low = torch.cat((ql & 0x0F, ql >> 4), dim=-2)  # [R, nb, half, 4, 32]: q1, q2, q3, q4 low bits
        high = torch.cat(((qh >> 0) & 3, (qh >> 2) & 3, (qh >> 4) & 3, (qh >> 6) & 3), dim=-2)
        q = ((low | (high << 4)) - 32).float().reshape(rows, -1, 16, 16)  # [R, nb, 16 groups, 16]
        sc = b[..., 192:208].contiguous().view(torch.int8).float()  # [R, nb, 16]
        out = (_half(b, 208)[..., None] * sc[..., None]) * q
    else:  # pragma: no cover - __post_init__ rejects other types
        raise QuantError(f"type {kind}")
    return out.reshape(rows, cols)


ACT_BLOCK = 32  # activation values per integer block (one scale each for the 32-value types)
KQUANT_ACT_BLOCK = 256  # the K-quants' activations: one scale per super-block (its blocks' integer sums add up)
ACT_MAX = 32767.0  # 16-bit activations


def activation_block(kind: int) -> int:
    """How many activation values share one scale when they multiply a matrix of this GGML type."""
    return KQUANT_ACT_BLOCK if kind in (Q4_K, Q6_K) else ACT_BLOCK


def quantize_activations(x: Tensor, block: int = ACT_BLOCK) -> tuple[Tensor, Tensor]:
    """x [S, K] fp32 -> (q [S, K] int16, d [S, K / 32] fp32) as the kernels round them: per `block` values
    (32, or 256 for the K-quants), d = max|x| / 32767 and q = round-half-even(x * (1 / d)) (0 for an
    all-zero block); d is given per 32 values (repeated over a block of 256). x ~ q * d."""
    blocks = x.float().reshape(x.shape[0], -1, block)  # [S, nb, block]
    d = blocks.abs().amax(dim=-1, keepdim=True) / ACT_MAX  # [S, nb, 1]
    inverse = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(blocks * inverse)
    return q.to(torch.int16).reshape(x.shape), d.squeeze(-1).repeat_interleave(block // ACT_BLOCK, dim=1)


def rounded_activations(x: Tensor, block: int = ACT_BLOCK) -> Tensor:
    """fp32 [S, K]: x after the kernels' rounding (q * d)."""
    q, d = quantize_activations(x, block)
    return (q.float().reshape(x.shape[0], -1, ACT_BLOCK) * d[..., None]).reshape(x.shape)


# ---- the C kernels -----------------------------------------------------------------------------------


class _Part(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int32), ("rows", ctypes.c_int32), ("data", ctypes.c_void_p), ("row_bytes", ctypes.c_int64)]


_lib_lock = threading.Lock()
_lib_state: list[ctypes.CDLL | str] = []


def _library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_quant{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _lib() -> ctypes.CDLL:
    """The built kernels; QuantError saying why when they are not there."""
    with _lib_lock:
        if not _lib_state:
            path = _library_path()
            if path is None:
                _lib_state.append(
                    "the C kernels (tabfill/kernels/_quant) are not built: reinstall with a C compiler "
                    "(`pip install -e .`), or in a checkout run `python setup.py build_ext --inplace`"
                )
            else:
                try:
                    _lib_state.append(_declare(ctypes.CDLL(str(path))))
                except AttributeError as exc:  # NOTE: a checkout updated without rebuilding its extension
                    _lib_state.append(
                        f"the C kernels at {path} are older than this source ({exc}): rebuild them "
                        "(`pip install -e .`, or in a checkout `python setup.py build_ext --inplace`)"
                    )
        state = _lib_state[0]
    if isinstance(state, str):
        raise QuantError(state)
    return state


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """`lib` with its entry points' argument and result types set; AttributeError naming a missing one."""
    c_ptr, c_int, c_i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.tf_matmul.argtypes = [ctypes.POINTER(_Part), c_int, c_int, c_ptr, c_int, c_ptr, c_i64, c_int]
    lib.tf_dequant.argtypes = [c_int, c_ptr, c_i64, c_int, c_ptr, c_int, c_ptr, c_int]
    lib.tf_quantize_act.argtypes = [c_ptr, c_int, c_int, c_int, c_ptr, c_ptr, c_ptr]
    lib.tf_decode_rows.argtypes = [c_ptr, c_int, c_ptr, c_ptr, c_ptr, c_int, c_ptr, c_ptr, c_int]
    lib.tf_decode_rows.restype = c_int
    lib.tf_force_portable.argtypes = lib.tf_force_avx2.argtypes = [c_int]
    lib.tf_force_portable.restype = lib.tf_force_avx2.restype = None
    lib.tf_has_avx512.restype = c_int
    lib.tf_to_half.argtypes = [c_ptr, c_int, c_ptr]
    lib.tf_to_half.restype = None
    lib.tf_matmul.restype = lib.tf_dequant.restype = lib.tf_has_avx2.restype = lib.tf_quantize_act.restype = c_int
    return lib


def to_half(x: Tensor) -> Tensor:
    """fp16 bits (as int16) of ``x`` as the C decode step writes keys and values (tests: the same as torch's
    ``.half()``, on the F16C and the portable path)."""
    x = x.to(device="cpu", dtype=torch.float32).contiguous()
    out = torch.empty(x.shape, dtype=torch.int16)
    _lib().tf_to_half(x.data_ptr(), x.numel(), out.data_ptr())
    return out


def kernels_available() -> tuple[bool, str]:
    """(usable, what): whether the C kernels load, and with which instruction set."""
    try:
        lib = _lib()
    except (QuantError, OSError) as exc:
        return False, str(exc)
    if not lib.tf_has_avx2():
        return True, "portable C (no AVX2)"
    return True, "AVX-512 VNNI tiles" if lib.tf_has_avx512() else "AVX2+FMA"


def _threads() -> int:
    return max(1, torch.get_num_threads())


def dequantize_rows(tensor: QuantTensor, index: Tensor | None = None) -> Tensor:
    """fp32 [n, cols] of the rows ``index`` (all rows when None), by the C kernels."""
    rows = None if index is None else index.to(device="cpu", dtype=torch.int64).contiguous()
    count = tensor.rows if rows is None else rows.numel()
    if rows is not None and count and (int(rows.min()) < 0 or int(rows.max()) >= tensor.rows):
        raise IndexError(f"row index out of range for a matrix of {tensor.rows} rows")
    out = torch.empty(count, tensor.cols, dtype=torch.float32)
    _dequant(tensor, tensor.data.data_ptr(), None if rows is None else rows.data_ptr(), count, out)
    return out


def _dequantize_into(tensor: QuantTensor, start: int, stop: int, out: Tensor) -> None:
    """Rows ``start:stop`` of ``tensor`` into ``out`` [stop - start, cols] (contiguous fp32)."""
    _dequant(tensor, tensor.data[start].data_ptr(), None, stop - start, out)


def _dequant(tensor: QuantTensor, data: int, rows: int | None, count: int, out: Tensor) -> None:
    status = _lib().tf_dequant(tensor.type, data, tensor.data.shape[1], tensor.cols, rows, count, out.data_ptr(), _threads())
    if status:
        raise QuantError(f"{TYPE_NAMES[tensor.type]} rows of {tensor.cols} cannot be dequantized")


def kernel_activations(x: Tensor, block: int = ACT_BLOCK) -> tuple[Tensor, Tensor, Tensor]:
    """The C kernels' integer blocks of x [S, K], one scale per `block` values (32 or 256): (q [S, K] int16,
    d [S, K / 32], d * sum(q) [S, K / 32], both per 32 values)."""
    x = x.float().contiguous()
    tokens, cols = x.shape
    q = torch.empty(tokens, cols, dtype=torch.int16)
    d = torch.empty(tokens, cols // ACT_BLOCK)
    ds = torch.empty(tokens, cols // ACT_BLOCK)
    if _lib().tf_quantize_act(x.data_ptr(), tokens, cols, block // ACT_BLOCK, q.data_ptr(), d.data_ptr(), ds.data_ptr()):
        raise QuantError(f"{cols} values are not whole blocks of {block}")
    return q, d, ds


class QuantLinear:
    """``x @ W.T + bias`` for W = the parts' rows concatenated ([N, K]); x [S, K] fp32 -> [S, N] fp32."""

    def __init__(self, parts: list[QuantTensor], bias: Tensor | None = None) -> None:
        if not parts or len({p.cols for p in parts}) != 1:
            raise QuantError("a fused linear needs parts with the same number of columns")
        self.parts = parts
        self.in_features = parts[0].cols
        self.out_features = sum(p.rows for p in parts)
        if self.in_features % ACT_BLOCK:
            raise QuantError(f"in_features {self.in_features} is not a multiple of {ACT_BLOCK}")
        if bias is not None and bias.shape != (self.out_features,):
            raise QuantError(f"bias {tuple(bias.shape)} does not match {self.out_features} outputs")
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self._lib = _lib()
        self.kernel_max_tokens = kernel_max_tokens(parts)
        self._parts = (_Part * len(parts))(*[_Part(p.type, p.rows, p.data.data_ptr(), p.data.shape[1]) for p in parts])

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __call__(self, x: Tensor) -> Tensor:  # [S, K] -> [S, N]
        x = x.float().contiguous()
        tokens = x.shape[0]
        if tokens <= self.kernel_max_tokens:
            out = torch.empty(tokens, self.out_features, dtype=torch.float32)
            status = self._lib.tf_matmul(
                self._parts, len(self.parts), self.in_features, x.data_ptr(), tokens, out.data_ptr(),
                self.out_features, _threads(),
            )
            if status:
                raise QuantError("the kernels rejected this matrix")
        else:
            out = self._tiled_gemm(x)
        return out if self.bias is None else out.add_(self.bias)

    def _tiled_gemm(self, x: Tensor) -> Tensor:
        """Many tokens: dequantize tiles of rows into one fp32 buffer and let torch's GEMM multiply them. A
        matrix of at most TILE_BYTES (SmolLM2's largest is 7 MB) is one tile: its product is the output, no
        copy. NOTE: measured per 128-token chunk on SmolLM2 (1 thread): dequantizing every matrix costs ~30
        ms beside ~440 ms of GEMM; tiles small enough for L2 (256 KB-1 MB) slowed the GEMM by 10-15 %."""
        cols = self.in_features
        tile_rows = max(64, TILE_BYTES // (4 * cols))
        if self.out_features <= tile_rows:
            weight = _scratch(self.out_features, cols)
            offset = 0
            for part in self.parts:
                _dequantize_into(part, 0, part.rows, weight[offset : offset + part.rows])
                offset += part.rows
            return torch.mm(x, weight.t())
        out = torch.empty(x.shape[0], self.out_features)
        tile = _scratch(tile_rows, cols)
        offset = 0
        for part in self.parts:
            for start in range(0, part.rows, tile_rows):
                stop = min(part.rows, start + tile_rows)
                rows = tile[: stop - start]
                _dequantize_into(part, start, stop, rows)
                out[:, offset + start : offset + stop] = torch.mm(x, rows.t())
            offset += part.rows
        return out


_scratch_local = threading.local()


def _scratch(rows: int, cols: int) -> Tensor:
    """An fp32 [rows, cols] view of this thread's buffer for dequantized weight tiles, kept between calls.
    NOTE: a fresh tensor per call (up to 7 MB on SmolLM2) went to and from the allocator for every matrix of a
    prefill chunk; where large blocks are mapped each time (tabfill.completion.heap sets glibc's threshold),
    that cost page faults, and where they came from the heap they left it fragmented."""
    need = rows * cols
    buffer: Tensor | None = getattr(_scratch_local, "buffer", None)
    if buffer is None or buffer.numel() < need:
        buffer = torch.empty(max(need, TILE_BYTES // 4))
        _scratch_local.buffer = buffer
    return buffer[:need].view(rows, cols)


class _Linear(ctypes.Structure):
    _fields_ = [("parts", ctypes.POINTER(_Part)), ("nparts", ctypes.c_int), ("rows", ctypes.c_int), ("bias", ctypes.c_void_p)]


class _Layer(ctypes.Structure):
    _fields_ = [("norm1", ctypes.c_void_p), ("norm2", ctypes.c_void_p), ("qkv", _Linear), ("o", _Linear), ("up", _Linear), ("down", _Linear)]


class _Model(ctypes.Structure):
    _fields_ = [
        ("layers", ctypes.c_int), ("dim", ctypes.c_int), ("heads", ctypes.c_int), ("kv_heads", ctypes.c_int),
        ("head_dim", ctypes.c_int), ("inter", ctypes.c_int), ("cache_tokens", ctypes.c_int), ("eps", ctypes.c_float),
        ("layer", ctypes.POINTER(_Layer)), ("final_norm", ctypes.c_void_p), ("head", _Linear), ("embed", _Part),
        ("cos", ctypes.c_void_p), ("signed_sin", ctypes.c_void_p), ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p),
        ("slots", ctypes.c_int), ("kv_half", ctypes.c_int),
    ]


@dataclass(frozen=True)
class StepLayer:
    """One layer as the C decode step reads it (fp32 contiguous norm weights)."""

    norm1: Tensor
    norm2: Tensor
    qkv: QuantLinear
    o: QuantLinear
    up: QuantLinear  # gate rows, then up rows
    down: QuantLinear


class DecodeStep:
    """A whole one-token decode step of a Llama/Qwen2 decoder in one C call (csrc/quant.c, tf_decode_rows):
    RMS norms, q|k|v, rotate-half rotary from the decoder's tables, grouped-query attention over its KV cache
    [L, B, Hkv, T, Dh] (fp16 or fp32; fp16 keys and values are rounded to nearest even once, when written, as
    torch's ``.half()`` rounds them), SiLU-gated MLP, head. The products are QuantLinear's kernels; what the call saves
    is a Python call per operation (~30 per layer). ``rows`` runs the decode rows of B sequences (a batch's
    slot pool) in one call (tf_decode_rows). Holds references to every tensor it points at."""

    def __init__(
        self, *, layers: list[StepLayer], final_norm: Tensor, head: QuantLinear, embed: QuantTensor, heads: int,
        kv_heads: int, head_dim: int, eps: float, cos: Tensor, signed_sin: Tensor, k_cache: Tensor, v_cache: Tensor,
    ) -> None:
        dim = embed.cols
        tensors = [final_norm, cos, signed_sin] + [t for layer in layers for t in (layer.norm1, layer.norm2)]
        if any(t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu" for t in tensors):
            raise QuantError("the C decode step needs contiguous fp32 CPU tensors")
        if k_cache.dtype != v_cache.dtype or k_cache.dtype not in (torch.float16, torch.float32) or not (
            k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.device.type == v_cache.device.type == "cpu"
        ):
            raise QuantError("the C decode step needs a contiguous fp16 or fp32 KV cache on the CPU")
        if head_dim % 2 or head_dim > 512 or heads % kv_heads:
            raise QuantError(f"head_dim {head_dim} / {heads} heads over {kv_heads} kv heads is not supported")
        inter = layers[0].down.in_features
        for layer in layers:
            shapes = ((layer.qkv.in_features, layer.qkv.out_features), (layer.o.in_features, layer.o.out_features),
                      (layer.up.in_features, layer.up.out_features), (layer.down.in_features, layer.down.out_features))
            if shapes != ((dim, (heads + 2 * kv_heads) * head_dim), (heads * head_dim, dim), (dim, 2 * inter), (inter, dim)):
                raise QuantError(f"layer shapes {shapes} do not match a Llama/Qwen2 decoder")
        self._keep: list[object] = [layers, final_norm, head, embed, cos, signed_sin, k_cache, v_cache]
        self._layers = (_Layer * len(layers))(*[
            _Layer(layer.norm1.data_ptr(), layer.norm2.data_ptr(), self._linear(layer.qkv), self._linear(layer.o),
                   self._linear(layer.up), self._linear(layer.down))
            for layer in layers
        ])
        if k_cache.shape != v_cache.shape or k_cache.dim() != 5 or tuple(k_cache.shape[2:3] + k_cache.shape[4:]) != (kv_heads, head_dim):
            raise QuantError(f"the KV cache {tuple(k_cache.shape)} is not [L, B, {kv_heads}, T, {head_dim}]")
        self.slots = k_cache.shape[1]
        self._model = _Model(
            len(layers), dim, heads, kv_heads, head_dim, inter, k_cache.shape[-2], eps, self._layers,
            final_norm.data_ptr(), self._linear(head), _Part(embed.type, embed.rows, embed.data.data_ptr(), embed.data.shape[1]),
            cos.data_ptr(), signed_sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), self.slots,
            int(k_cache.dtype == torch.float16),
        )
        self.vocab = head.out_features
        self.max_tokens = min(k_cache.shape[-2], cos.shape[0])
        self._lib = _lib()

    def _linear(self, linear: QuantLinear) -> _Linear:
        bias = linear.bias
        return _Linear(linear._parts, len(linear.parts), linear.out_features, None if bias is None else bias.data_ptr())

    def rows(
        self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int], outputs: Sequence[int] | None = None
    ) -> Tensor:
        """Logits [len(outputs), V] of the rows listed in ``outputs`` (default: every row, in order): row i writes
        ``tokens[i]`` at ``positions[i]`` of slot ``slots[i]``. Rows of one slot at distinct positions are a
        causal forward of those tokens (each attends to its slot up to its own position)."""
        n = len(tokens)
        if not n or len(positions) != n or len(slots) != n:
            raise ValueError("rows needs as many tokens, positions and slots, at least one")
        written = set(zip(slots, positions))
        if len(written) != n or not all(0 <= s < self.slots for s in slots) or not all(0 <= p < self.max_tokens for p in positions):
            raise ValueError(f"slots {list(slots)} / positions {list(positions)} outside the cache ({self.slots} x {self.max_tokens}) or a position written twice")
        if outputs is not None and (not outputs or not all(0 <= i < n for i in outputs)):
            raise ValueError(f"output rows {list(outputs)} not among the {n} rows")
        ints = ctypes.c_int * n
        wanted = None if outputs is None else (ctypes.c_int * len(outputs))(*outputs)
        logits = torch.empty(n if outputs is None else len(outputs), self.vocab)
        status = self._lib.tf_decode_rows(
            ctypes.byref(self._model), n, ints(*tokens), ints(*positions), ints(*slots), logits.shape[0], wanted,
            logits.data_ptr(), _threads(),
        )
        if status:
            raise QuantError(f"the C decode rows failed ({status})")
        return logits


def kernel_max_tokens(parts: Sequence[QuantTensor]) -> int:
    """Up to how many tokens a product over these parts runs in the C kernels (beyond: the dequantized GEMM)."""
    return KQUANT_KERNEL_MAX_TOKENS if all(p.type in (Q4_K, Q6_K) for p in parts) else KERNEL_MAX_TOKENS


def reference_linear(parts: list[QuantTensor], bias: Tensor | None, x: Tensor) -> Tensor:
    """What a QuantLinear computes, with the reference twins and fp32 matmuls (for tests): up to
    `kernel_max_tokens` tokens, the quantized parts multiply the activations rounded as for their type."""
    x = x.float()
    kernels = x.shape[0] <= kernel_max_tokens(parts)
    outs = [
        (x if p.type in (F32, F16) or not kernels else rounded_activations(x, activation_block(p.type))) @ dequantize(p).t()
        for p in parts
    ]  # [S, N_i]
    out = torch.cat(outs, dim=1)
    return out if bias is None else out + bias.float()
