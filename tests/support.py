"""Test helpers: a small byte-level BPE tokenizer trained here, and tiny random-init models."""

from __future__ import annotations

import functools
import inspect
import textwrap
from pathlib import Path

FIM_FAMILIES: dict[str, list[str]] = {
    "starcoder": ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<file_sep>"],
    "qwen2.5-coder": ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>"],
    "deepseek-coder": ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>", "<|EOT|>"],
    "codellama": ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"],
    "codegemma": ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>", "<start_of_turn>", "<end_of_turn>"],
    "codestral": ["[PREFIX]", "[SUFFIX]", "[MIDDLE]"],
}

_JS = textwrap.dedent(
    """
    export function debounce(fn, wait) {
      let timer = null;
      return (...args) => {
        clearTimeout(timer);
        timer = setTimeout(() => fn(...args), wait);
      };
    }
    const total = items.reduce((sum, item) => sum + item.price, 0);
    interface Point { x: number; y: number }
    """
)


def _corpus() -> list[str]:
    import bisect
    import fnmatch
    import string

    texts = [inspect.getsource(module) for module in (textwrap, string, fnmatch, bisect)]
    return texts + [_JS, "漢字 かな 😀 é ü\n" * 3]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(extra: tuple[str, ...]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<|endoftext|>", *extra],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return str(tokenizer.to_str())


def build_tiny_tokenizer(extra_special_tokens: list[str] | tuple[str, ...] = ()):  # -> PreTrainedTokenizerFast
    """A deterministic ~2000-token byte-level BPE; `<|endoftext|>` is bos/eos/unk/pad."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    extra = tuple(extra_special_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(extra)),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(extra),
    )


def make_tiny_model_dir(path: Path, fim_family: str | None = None, architecture: str = "llama") -> Path:
    """Save a 2-layer random-init causal LM (seed 0) and its tokenizer to `path`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = build_tiny_tokenizer(FIM_FAMILIES[fim_family] if fim_family else ())
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
