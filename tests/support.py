"""Test helpers: small tokenizers trained here in well under a second, and tiny random-init models."""

from __future__ import annotations

import functools
import inspect
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# The FIM-related special tokens each family's real tokenizer has (the strings exactly as in its vocabulary).
FIM_FAMILIES: dict[str, list[str]] = {
    "starcoder": ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<file_sep>"],
    "qwen2.5-coder": [
        "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
        "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>",
    ],
    # DeepSeek-Coder: full-width bars (U+FF5C) and U+2581 "▁"; `<|EOT|>` uses ASCII bars.
    "deepseek-coder": ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>", "<|EOT|>"],
    "codellama": ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"],
    "codegemma": [
        "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>", "<start_of_turn>", "<end_of_turn>",
    ],
    # Mistral v3 / tekken control tokens; Codestral's prompt uses [SUFFIX] and [PREFIX] only.
    "codestral": ["[PREFIX]", "[SUFFIX]", "[MIDDLE]"],
}

EOS = "<|endoftext|>"

# The size of every tiny random-init model the tests build.
TINY_DIMENSIONS: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
}

_SNIPPETS = (
    textwrap.dedent(
        """\
        export function debounce(fn, wait) {
          let timer = null;
          return (...args) => {
            clearTimeout(timer);
            timer = setTimeout(() => fn(...args), wait);
          };
        }
        const total = items.reduce((sum, item) => sum + item.price, 0);
        """
    ),
    textwrap.dedent(
        """\
        interface Point { x: number; y: number }
        export class Stack<T> {
          private items: T[] = [];
          push(item: T): void { this.items.push(item); }
          pop(): T | undefined { return this.items.pop(); }
        }
        async function load(url: string): Promise<string> {
          const response = await fetch(url);
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          return response.text();
        }
        """
    ),
    "// 漢字 かな 한글 😀 🚀 é ü ñ — “quotes”\nconst greeting = '你好, 世界';\n",
)


def _corpus() -> list[str]:
    import bisect
    import fnmatch
    import string

    texts = []
    for module in (textwrap, string, fnmatch, bisect):
        source_file = inspect.getsourcefile(module)
        assert source_file is not None, module
        texts.append(Path(source_file).read_text(encoding="utf-8"))
    return texts + list(_SNIPPETS)


@functools.lru_cache(maxsize=None)
def _tokenizer_json(extra_special_tokens: tuple[str, ...], sentencepiece: bool) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if sentencepiece:
        # Like transformers 5's Llama/CodeLlama/Mistral tokenizers: Metaspace with a dummy-prefix space on the first
        # word only, BOS added by default.
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
        )
        specials = ["<unk>", "<s>", "</s>"]
        alphabet: list[str] = []
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        specials = [EOS]
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=specials + [token for token in extra_special_tokens if token not in specials],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    if sentencepiece:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
    return str(tokenizer.to_str())


def build_tiny_tokenizer(
    extra_special_tokens: list[str] | tuple[str, ...] = (), *, sentencepiece: bool = False
) -> PreTrainedTokenizerFast:
    """A deterministic ~2000-token BPE trained on a few stdlib modules and JS/TS snippets.

    Default: byte-level (like StarCoder, Qwen, DeepSeek), `<|endoftext|>` as bos/eos/unk/pad, nothing added
    by default. `sentencepiece=True`: Metaspace with a dummy-prefix space (like CodeLlama and Mistral in
    transformers 5), `<s>`/`</s>`/`<unk>`, BOS added by default. Each call returns a fresh tokenizer object
    (transformers mutates backend state), built from a per-process cache of the trained JSON.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    extra = tuple(extra_special_tokens)
    backend = Tokenizer.from_str(_tokenizer_json(extra, sentencepiece))
    if sentencepiece:
        names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
    else:
        names = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    return PreTrainedTokenizerFast(tokenizer_object=backend, additional_special_tokens=list(extra), **names)


def make_tiny_model_dir(path: Path, fim_family: str | None = None, architecture: str = "llama") -> Path:
    """Save a 2-layer random-init causal LM (seed 0) and its tiny tokenizer to `path`; returns `path`.

    `fim_family` (a key of FIM_FAMILIES) adds that family's special tokens; `architecture` is "llama" or "qwen2".
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = build_tiny_tokenizer(FIM_FAMILIES[fim_family] if fim_family else ())
    config_classes: dict[str, type[LlamaConfig] | type[Qwen2Config]] = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    config = config_classes[architecture](
        vocab_size=len(tokenizer),
        **TINY_DIMENSIONS,
        max_position_embeddings=2048,
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
