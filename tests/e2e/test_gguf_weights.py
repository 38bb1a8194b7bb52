"""The real GGUF files on the quantized path: kernels on real tensors, the GGUF decoder against the fp32
conversion, and the Runner features (rollback, KV read/write, drafts). Marked `model`; run in .ci/run."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from tabfill.completion.gguf_models import GgufWeights, default_gguf
from tabfill.completion.models import QWEN_CODER_1_5B, cache_root, default_model_dir, load_model
from tabfill.completion.runners import LeanRunner, make_runner
from tabfill.kernels import quant
from tabfill.kernels.gguf_decoder import GgufFile, decoder_from_gguf
from tabfill.kernels.quant import QuantLinear, dequantize, dequantize_rows
from tabfill.kernels.steps import decode_one_token, prefill

pytestmark = [pytest.mark.model, pytest.mark.skipif(not quant.kernels_available()[0], reason=quant.kernels_available()[1])]

QWEN = cache_root() / "models" / QWEN_CODER_1_5B.file_name  # after `tabfill model pull qwen2.5-coder-1.5b`


@pytest.fixture(scope="module")
def loaded() -> object:
    return load_model("default", "cpu", quantize="gguf")


@pytest.fixture(scope="module")
def prompt(loaded: object) -> list[int]:
    import torch.nn.modules.linear as source

    return loaded.tokenizer(inspect.getsource(source))["input_ids"][:300]  # type: ignore[attr-defined]


def _check_real_tensors(path: Path, names: list[str]) -> None:
    gguf = GgufFile(path)
    x = torch.randn(3, 1)
    for name in names:
        tensor = gguf.matrix(name)
        reference = dequantize(tensor)  # [rows, cols]
        rows = torch.arange(0, tensor.rows, max(1, tensor.rows // 64))
        torch.testing.assert_close(dequantize_rows(tensor, rows), reference[rows], rtol=1e-6, atol=1e-7)
        x = torch.randn(3, tensor.cols)
        layer = QuantLinear([tensor])
        expected = x @ reference.t()
        for tokens in (1, 3):
            torch.testing.assert_close(layer(x[:tokens]), expected[:tokens], rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_default_gguf_real_tensors_match_the_reference() -> None:
    _check_real_tensors(default_gguf(), ["blk.0.attn_q.weight", "blk.7.ffn_down.weight", "token_embd.weight"])


@pytest.mark.skipif(not QWEN.is_file(), reason=f"{QWEN} not present")
def test_qwen_k_quant_real_tensors_match_the_reference() -> None:
    types = {t.name: t.tensor_type.name for t in GgufFile(QWEN).tensors.values()}
    names = ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    assert {types[n] for n in names} == {"Q4_K", "Q6_K"}
    _check_real_tensors(QWEN, names)


def test_the_loader_maps_the_gguf_instead_of_loading_fp32(loaded: object) -> None:
    model = loaded.model  # type: ignore[attr-defined]
    assert isinstance(model, GgufWeights) and model.path.name == "model.gguf"
    assert model.converted == str(default_model_dir())
    runner = make_runner(model, torch.device("cpu"), max_tokens=512, quantize="auto")
    assert isinstance(runner, LeanRunner) and "gguf blocks" in runner.describe()["quantization"]


def test_gguf_decoder_computes_what_the_fp32_conversion_computes(loaded: object, prompt: list[int]) -> None:
    from transformers import AutoModelForCausalLM

    from tabfill.kernels.decoder import LeanDecoder

    model = AutoModelForCausalLM.from_pretrained(str(default_model_dir()), dtype=torch.float32).eval()
    fp32 = LeanDecoder.from_hf(model, max_tokens=512)
    path, config = loaded.model.path, loaded.model.config  # type: ignore[attr-defined]
    tokens = torch.tensor(prompt)
    expected = fp32.forward(tokens, 0, all_logits=True)
    # the weights: over fp32 keys and values, the GGUF's blocks compute what the conversion computes
    exact_kv = decoder_from_gguf(path, config, max_tokens=512, kv_dtype=torch.float32).forward(tokens, 0, all_logits=True)
    assert (expected - exact_kv).abs().max().item() < 1e-3
    assert (expected.argmax(-1) == exact_kv.argmax(-1)).float().mean().item() >= 0.99
    # the default keeps keys and values as fp16 (as llama.cpp does): logits move by a few 1e-2 (seen: 0.039, on
    # logits up to ~22), the choices (almost) never
    gguf = decoder_from_gguf(path, config, max_tokens=512)
    assert gguf.cache.k.dtype == gguf.cache.v.dtype == torch.float16
    actual = gguf.forward(tokens, 0, all_logits=True)  # prefill path (tiles + GEMM)
    assert 0 < (exact_kv - actual).abs().max().item() < 0.1
    assert (expected.argmax(-1) == actual.argmax(-1)).float().mean().item() >= 0.99
    # decode (one token at a time) and a draft verify (the small-GEMM kernels) agree with the prefill's rows
    prefill(gguf, prompt[:200])
    steps = torch.stack([decode_one_token(gguf, t, 200 + i) for i, t in enumerate(prompt[200:204])])
    # NOTE: decode and verify round activations to 16-bit blocks (the C step), prefill multiplies in fp32: the
    # logits differ by a few 1e-3 (seen: 3.5e-3 over fp32 keys and values; 1.2e-2 over fp16 ones, where a key
    # computed a little differently can round to a neighbouring fp16 value), the choices not.
    torch.testing.assert_close(steps, actual[200:204], rtol=1e-4, atol=2e-2)
    verify = gguf.forward(prompt[200:208], 200, all_logits=True)
    torch.testing.assert_close(verify, actual[200:208], rtol=1e-4, atol=2e-2)
    assert torch.equal(steps.argmax(-1), actual[200:204].argmax(-1)) and torch.equal(verify.argmax(-1), actual[200:208].argmax(-1))


def test_runner_rollback_and_kv_round_trip(loaded: object, prompt: list[int]) -> None:
    runner = make_runner(loaded.model, torch.device("cpu"), max_tokens=512, quantize="gguf")  # type: ignore[attr-defined]
    fresh = runner.forward(prompt[:120], 0)
    runner.forward(prompt[120:160], 120)  # more context written ...
    assert runner.keep(80) == 80
    # ... and rolled back: the same logits as before (40 tokens: the same dequantized-GEMM path as `fresh`;
    # up to KERNEL_MAX_TOKENS a forward takes the integer kernels and rounds its activations)
    again = runner.forward(prompt[80:120], 80)
    torch.testing.assert_close(again, fresh, rtol=1e-4, atol=1e-4)
    kv = runner.read_kv(0, 120)
    runner.forward(prompt[200:320], 0)  # overwrite the slot with another prompt
    runner.write_kv(0, kv)  # the prefix pool's hit
    # one token: the C decode step (16-bit activation blocks), `fresh` came from the prefill path (fp32)
    single = runner.forward(prompt[119:120], 119)
    torch.testing.assert_close(single, fresh, rtol=1e-4, atol=1e-2)
    assert int(single.argmax()) == int(fresh.argmax())


@pytest.mark.parametrize("preset", ["default", "qwen2.5-coder-1.5b"])
def test_the_converted_gguf_loads_without_transformers_and_reads_as_transformers_would(preset: str) -> None:
    """config.json, generation_config.json and tokenizer.json of the conversion, read without transformers
    (~95 MiB less resident memory in `tabfill serve`): the same config values, eos ids, prompts and texts."""
    import subprocess
    import sys

    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from tabfill.completion.tokenizer_file import FileTokenizer
    from tests.unit.completion.test_gguf_config import read_by_the_kernels

    if preset != "default" and not QWEN.is_file():
        pytest.skip(f"{QWEN} not present")
    code = (
        "import sys\nfrom tabfill.completion.models import load_model\n"
        f"loaded = load_model({preset!r}, 'cpu', quantize='gguf')\n"
        "print(type(loaded.tokenizer).__name__, type(loaded.model.config).__name__, 'transformers' in sys.modules)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert output.split() == ["FileTokenizer", "JsonConfig", "False"], output
    loaded = load_model(preset, "cpu", quantize="gguf")
    converted = loaded.model.converted  # type: ignore[attr-defined]
    assert isinstance(loaded.tokenizer, FileTokenizer)
    assert read_by_the_kernels(loaded.model.config) == read_by_the_kernels(AutoConfig.from_pretrained(converted))  # type: ignore[attr-defined]
    try:
        expected_eos = GenerationConfig.from_pretrained(converted).eos_token_id
    except OSError:
        expected_eos = AutoConfig.from_pretrained(converted).eos_token_id
    assert loaded.model.generation_config.eos_token_id == expected_eos  # type: ignore[attr-defined]
    reference = AutoTokenizer.from_pretrained(converted)
    text = Path(__file__).read_text(encoding="utf-8")
    ids = reference(text)["input_ids"]
    assert loaded.tokenizer(text)["input_ids"] == ids
    singles = [[i] for i in range(len(reference))]
    assert loaded.tokenizer.batch_decode(singles) == reference.batch_decode(singles)
    assert loaded.tokenizer.decode(ids[:500]) == reference.decode(ids[:500])
    # NOTE: the one difference: transformers lists only the named special tokens, tokenizer.json marks every
    # added control token (FIM, repository markers) special; token healing leaves all of them out
    assert set(reference.all_special_ids) <= set(loaded.tokenizer.all_special_ids)
