"""Prompt building: FIM templates chosen by the tokenizer's special tokens, token budgets, token healing.

`build_prompt` is pure: the same inputs give the same `Prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tabfill.completion.types import Prompt, StopRule


@dataclass(frozen=True)
class FimTemplate:
    """A family's fill-in-the-middle format. `order` "psm": prefix, suffix, then the middle marker;
    "spm": suffix first and the prefix last (the prompt then ends with the prefix, which keeps the
    part that changes per keystroke at the end and allows token healing)."""

    name: str
    prefix_marker: str
    suffix_marker: str
    middle_marker: str  # "" when the format has none (Codestral generates right after the prefix)
    order: Literal["psm", "spm"]
    stop_tokens: tuple[str, ...]
    # Text put between the prefix marker and the prefix (CodeLlama's "<PRE> {prefix}").
    prefix_lead: str = ""


TEMPLATES: tuple[FimTemplate, ...] = (
    FimTemplate(
        "deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "psm",
        ("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    ),
    FimTemplate("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", "psm", ("▁<EOT>", "</s>"), prefix_lead=" "),
    FimTemplate("codestral", "[PREFIX]", "[SUFFIX]", "", "spm", ("</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]")),
    FimTemplate(
        "codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "psm",
        ("<|file_separator|>", "<eos>", "<end_of_turn>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ),
    FimTemplate(
        "qwen2.5-coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "psm",
        ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ),
    FimTemplate(
        "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "psm",
        ("<|endoftext|>", "<file_sep>", "<fim_pad>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ),
)


def _vocabulary(tokenizer: Any) -> set[str]:
    vocabulary = set(tokenizer.get_vocab())
    vocabulary.update(str(token) for token in getattr(tokenizer, "added_tokens_decoder", {}).values())
    return vocabulary


def detect_template(tokenizer: Any) -> FimTemplate | None:
    """The FIM template whose markers the tokenizer has (by tokens, never by model name); None: prefix-only."""
    vocabulary = _vocabulary(tokenizer)
    for template in TEMPLATES:
        markers = [template.prefix_marker, template.suffix_marker] + ([template.middle_marker] if template.middle_marker else [])
        if not all(marker in vocabulary for marker in markers):
            continue
        if template.name == "codegemma" and "<|file_separator|>" not in vocabulary:
            continue  # Qwen2.5-Coder uses the same marker names; CodeGemma has its own file separator
        return template
    return None


def _ids(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _marker_id(tokenizer: Any, marker: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(marker)
    if not isinstance(token_id, int) or token_id < 0 or (token_id == tokenizer.unk_token_id and marker != tokenizer.unk_token):
        raise ValueError(f"tokenizer has no token {marker!r}")
    return token_id


def _bos(tokenizer: Any) -> list[int]:
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(with_special) > len(without) and with_special[0] == bos:
        return [bos]
    return []


def truncate_prefix(tokenizer: Any, prefix: str, budget: int) -> tuple[str, list[int]]:
    """Keep the end of `prefix` within `budget` tokens, starting at a line boundary when any whole
    line fits (else inside the cursor line, at a token boundary)."""
    ids = _ids(tokenizer, prefix)
    if len(ids) <= budget:
        return prefix, ids
    line_starts = [0] + [i + 1 for i, char in enumerate(prefix) if char == "\n"]
    # Estimate the cut from per-line token counts, then confirm with a real tokenization.
    lines = [prefix[start:end] for start, end in zip(line_starts, line_starts[1:] + [len(prefix)])]
    counts = tokenizer(lines, add_special_tokens=False)["input_ids"] if lines else []
    total = 0
    first = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        if total + len(counts[index]) > budget:
            break
        total += len(counts[index])
        first = index
    while first < len(lines):
        kept = prefix[line_starts[first] :]
        kept_ids = _ids(tokenizer, kept)
        if len(kept_ids) <= budget:
            return kept, kept_ids
        first += 1
    # Not even the cursor line fits: keep its last `budget` tokens.
    last_line = prefix[line_starts[-1] :]
    tail = tokenizer.decode(_ids(tokenizer, last_line)[-budget:]) if budget > 0 else ""
    if not last_line.endswith(tail):
        tail = ""
    tail_ids = _ids(tokenizer, tail)
    while len(tail_ids) > budget and tail:
        tail = tail[1:]
        tail_ids = _ids(tokenizer, tail)
    return tail, tail_ids


def truncate_suffix(tokenizer: Any, suffix: str, budget: int) -> tuple[str, list[int]]:
    """Keep the start of `suffix` within `budget` tokens, ending at a line boundary when one fits."""
    if budget <= 0 or not suffix:
        return "", []
    ids = _ids(tokenizer, suffix)
    if len(ids) <= budget:
        return suffix, ids
    end = len(suffix)
    while True:
        newline = suffix.rfind("\n", 0, end)
        if newline < 0:
            break
        end = newline + 1
        kept_ids = _ids(tokenizer, suffix[:end])
        if len(kept_ids) <= budget:
            return suffix[:end], kept_ids
        end = newline  # try the previous line break
    head = tokenizer.decode(ids[:budget])
    if not suffix.startswith(head):
        return "", []
    return head, _ids(tokenizer, head)


def _heal(tokenizer: Any, prefix: str, prefix_ids: list[int]) -> tuple[list[int], str]:
    """Drop the prefix's last token when it is ordinary text; return the kept ids and the dropped text."""
    if not prefix_ids or prefix_ids[-1] in set(tokenizer.all_special_ids):
        return prefix_ids, ""
    kept_ids = prefix_ids[:-1]
    kept_text = tokenizer.decode(kept_ids) if kept_ids else ""
    if not prefix.startswith(kept_text) or "\ufffd" in kept_text:
        return prefix_ids, ""
    healing = prefix[len(kept_text) :]
    if not healing or "\ufffd" in tokenizer.decode(prefix_ids[-1:]):
        return prefix_ids, ""
    return kept_ids, healing


def build_prompt(
    prefix: str,
    suffix: str,
    template: FimTemplate | None,
    tokenizer: Any,
    *,
    max_prefix_tokens: int,
    max_suffix_tokens: int,
    max_new_tokens: int,
    stop: StopRule,
    heal: bool = True,
) -> Prompt:
    """Tokenize a prompt for `template` (None: prefix-only) within the token budgets."""
    kept_prefix, prefix_ids = truncate_prefix(tokenizer, prefix, max_prefix_tokens)
    bos = _bos(tokenizer)
    stop_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    healing = ""
    if template is None:
        if heal:
            prefix_ids, healing = _heal(tokenizer, kept_prefix, prefix_ids)
        return Prompt(
            tuple(bos + prefix_ids), max_new_tokens, stop, frozenset(stop_ids), healing, "prefix-only", len(kept_prefix), 0
        )
    kept_suffix, suffix_ids = truncate_suffix(tokenizer, suffix, max_suffix_tokens)
    vocabulary = _vocabulary(tokenizer)
    stop_ids |= {_marker_id(tokenizer, token) for token in template.stop_tokens if token in vocabulary}
    prefix_marker = [_marker_id(tokenizer, template.prefix_marker)]
    suffix_marker = [_marker_id(tokenizer, template.suffix_marker)]
    middle_marker = [_marker_id(tokenizer, template.middle_marker)] if template.middle_marker else []
    if template.prefix_lead:
        # NOTE: the lead is tokenized with the prefix (CodeLlama's "<PRE> " + prefix), as the family was trained.
        prefix_ids = _ids(tokenizer, template.prefix_lead + kept_prefix)
    if template.order == "spm":
        if heal and not middle_marker:  # the prompt ends with the prefix: its last token can be healed
            prefix_ids, healing = _heal(tokenizer, template.prefix_lead + kept_prefix, prefix_ids)
        token_ids = bos + suffix_marker + suffix_ids + prefix_marker + prefix_ids + middle_marker
    else:
        token_ids = bos + prefix_marker + prefix_ids + suffix_marker + suffix_ids + middle_marker
    return Prompt(
        tuple(token_ids), max_new_tokens, stop, frozenset(stop_ids), healing, template.name, len(kept_prefix), len(kept_suffix)
    )
