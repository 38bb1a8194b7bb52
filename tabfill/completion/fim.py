"""Prompt building: FIM templates chosen by the tokenizer's special tokens, token budgets, token healing.

`build_prompt` is pure: the same inputs give the same `Prompt`, and nothing is cached between calls.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from tabfill.completion.repo_context import RepoContext, encode_repo_header
from tabfill.completion.source import TokenizerLike
from tabfill.completion.types import Prompt, StopRule

# NOTE: only bounds how much text is tokenized per keystroke (a 1 MB document is never tokenized whole);
# code averages 3-4 characters per token, so the budget, not this cap, decides what is kept.
MAX_CHARS_PER_TOKEN = 12

Offsets = list[tuple[int, int]]
PrefixSpace = Literal["none", "always", "tokenizer"]


@dataclass(frozen=True)
class FimTemplate:
    """One family's fill-in-the-middle format.

    `order` "psm": marker, prefix, marker, suffix, middle marker. "spm": the suffix comes first and the prompt
    ends with the prefix (Codestral's `[SUFFIX]{suffix}[PREFIX]{prefix}`); then the part that changes per
    keystroke is at the end and the prefix's last token can be healed.
    `prefix_space`: what precedes the prefix text after its marker. "none"; "always" one space (CodeLlama's
    `<PRE> {prefix}`, so the prefix is tokenized as " " + prefix, e.g. "▁def"); "tokenizer" one space only when
    the tokenizer adds a SentencePiece dummy-prefix space itself (Mistral's v3 tokenizer: `[PREFIX] {prefix}`;
    none with tekken). The suffix never gets a dummy-prefix space.
    `stop_tokens`: tokens that end the middle (end of text/turn, file separators, the markers themselves);
    those the tokenizer lacks are ignored.
    `repo_marker`/`file_marker`: the repository format's tokens (Qwen2.5-Coder's `<|repo_name|>`, `<|file_sep|>`).
    """

    name: str
    prefix_marker: str
    suffix_marker: str
    middle_marker: str  # "" when generation follows the prefix directly (Codestral)
    order: Literal["psm", "spm"]
    stop_tokens: tuple[str, ...]
    prefix_space: PrefixSpace = "none"
    repo_marker: str = ""
    file_marker: str = ""

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(m for m in (self.prefix_marker, self.suffix_marker, self.middle_marker) if m)

    @property
    def prefix_ends_prompt(self) -> bool:
        return self.order == "spm" and not self.middle_marker


def _psm(name: str, prefix: str, suffix: str, middle: str, stops: tuple[str, ...], space: PrefixSpace = "none") -> FimTemplate:
    return FimTemplate(name, prefix, suffix, middle, "psm", stops + (prefix, suffix, middle), space)


TEMPLATES: Mapping[str, FimTemplate] = {
    t.name: t
    for t in (
        # StarCoder (`<filename>` separates files) and StarCoder2 (`<file_sep>`, `<repo_name>`).
        _psm("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
             ("<|endoftext|>", "<file_sep>", "<fim_pad>", "<filename>", "<repo_name>")),
        replace(_psm("qwen2.5-coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
                     ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_start|>", "<|im_end|>")),
                repo_marker="<|repo_name|>", file_marker="<|file_sep|>"),
        _psm("deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", ("<｜end▁of▁sentence｜>", "<|EOT|>")),
        # "▁<PRE> {prefix}▁<SUF>{suffix}▁<MID>": the ▁ of each marker is the space before it, and the prefix
        # starts with one more space; decoded by SentencePiece this reads "<PRE> {prefix} <SUF>{suffix} <MID>".
        _psm("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", ("▁<EOT>", "</s>"), space="always"),
        _psm("codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
             ("<|file_separator|>", "<eos>", "<start_of_turn>", "<end_of_turn>")),
        FimTemplate("codestral", "[PREFIX]", "[SUFFIX]", "", "spm", ("</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"), "tokenizer"),
    )
}


def detect_template(tokenizer: TokenizerLike) -> FimTemplate | None:
    """The FIM template whose special tokens the tokenizer has (never judged by model name); None: prefix-only."""

    # NOTE: token by token, not against the whole vocabulary: get_vocab builds a dict of every token (~80 ms
    # for SmolLM2's 49k on a slow core, part of a team front-end's start-up)
    def has(*tokens: str) -> bool:
        return all(_token_id(tokenizer, token) is not None for token in tokens)

    for name in ("deepseek-coder", "codellama", "starcoder"):
        if has(*TEMPLATES[name].markers):
            return TEMPLATES[name]
    if has("[PREFIX]", "[SUFFIX]"):
        return TEMPLATES["codestral"]
    if has("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"):
        # Same marker names: CodeGemma separates files with <|file_separator|>, Qwen2.5-Coder with <|file_sep|>.
        qwen_only = ("<|fim_pad|>", "<|file_sep|>", "<|repo_name|>")
        if has("<|file_separator|>") and not any(has(token) for token in qwen_only):
            return TEMPLATES["codegemma"]
        return TEMPLATES["qwen2.5-coder"]
    return None


def _token_id(tokenizer: TokenizerLike, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if isinstance(token_id, int) and token_id >= 0 and tokenizer.convert_ids_to_tokens(token_id) == token:
        return token_id
    return None


@dataclass(frozen=True)
class _Codec:
    """Encodes document text as plain text: a special token's spelling in the document never becomes that token."""

    tokenizer: TokenizerLike
    forbidden: frozenset[int]  # ids plain text must not produce: special tokens, markers, stop tokens
    # SentencePiece-style tokenizers put a dummy "▁" before the first word; text after a marker must not get it,
    # so it is encoded after this anchor (a special token) and the anchor dropped — like mistral-common's
    # `_encode_infilling` and CodeLlama's `encode_infilling`.
    dummy_prefix: bool
    anchor: str

    @staticmethod
    def create(tokenizer: TokenizerLike, extra_forbidden: Iterable[int]) -> _Codec:
        added = tokenizer.added_tokens_decoder
        forbidden = frozenset(extra_forbidden) | {i for i, token in added.items() if token.special}
        first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"][:1])
        dummy_prefix = bool(first) and first[0] in ("▁", "▁a")
        anchor = next((str(t) for t in (tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token) if t), "")
        return _Codec(tokenizer, forbidden, dummy_prefix and bool(anchor), anchor)

    def _plain(self, text: str, after_marker: bool) -> tuple[list[int], Offsets]:
        if after_marker and self.dummy_prefix:
            encoded = self.tokenizer(self.anchor + text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
            shift = len(self.anchor)
            # the anchor must stay one token and leave the text whole, with no dummy space before its first word
            if len(ids) > 1 and offsets[0][1] == shift and offsets[1][0] == shift:
                first = str(self.tokenizer.convert_ids_to_tokens(ids[1]))
                if text.startswith(" ") or not first.startswith("▁"):
                    return ids[1:], [(a - shift, b - shift) for a, b in offsets[1:]]
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), list(encoded["offset_mapping"])

    def encode(self, text: str, *, after_marker: bool) -> tuple[list[int], Offsets]:
        """Ids and character offsets into `text`. `after_marker`: no dummy-prefix space before the first word."""
        if not text:
            return [], []
        ids, offsets = self._plain(text, after_marker)
        spellings: set[str] = set()
        for _ in range(3):
            found = self.forbidden.intersection(ids)
            if not found:
                break
            # Rare: the text spells a special token. Break each spelling before its last character and encode
            # the pieces separately, so it stays text.
            spellings |= {str(self.tokenizer.convert_ids_to_tokens(i)) for i in found}
            cuts = sorted({at + len(s) - 1 for s in spellings if len(s) > 1 for at in _find_all(text, s)})
            ids, offsets = [], []
            for start, end in zip([0, *cuts], [*cuts, len(text)]):
                piece_ids, piece_offsets = self._plain(text[start:end], after_marker or start > 0)
                ids += piece_ids
                offsets += [(a + start, b + start) for a, b in piece_offsets]
        return ids, offsets


def _find_all(text: str, needle: str) -> list[int]:
    found, at = [], text.find(needle)
    while at >= 0:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def _fit_prefix(codec: _Codec, prefix: str, budget: int, after_marker: bool) -> tuple[str, list[int], Offsets]:
    """The end of `prefix` within `budget` tokens, starting at a line start: whole lines are dropped from the
    start until it fits; when the cursor line alone is over budget, its end is kept from a token boundary."""
    if budget <= 0 or not prefix:
        return "", [], []
    start = max(0, len(prefix) - budget * MAX_CHARS_PER_TOKEN)
    mid_line = False
    if start > 0:
        newline = prefix.find("\n", start - 1)
        mid_line = newline < 0
        start = start if mid_line else newline + 1
    text = prefix[start:]
    ids, offsets = codec.encode(text, after_marker=after_marker)
    if len(ids) <= budget:
        return text, ids, offsets
    token_starts = [a for a, _ in offsets]
    line_starts = ([] if mid_line else [0]) + [i + 1 for i in _find_all(text, "\n")]
    for line_start in line_starts:  # longest candidate first
        # NOTE: estimated from the one tokenization above (a token may straddle the line start), then confirmed
        if len(ids) - bisect_left(token_starts, line_start) > budget + 2:
            continue
        kept = text[line_start:]
        kept_ids, kept_offsets = codec.encode(kept, after_marker=after_marker)
        if len(kept_ids) <= budget:
            return kept, kept_ids, kept_offsets
    # The cursor line alone is over budget: keep its last tokens, cut at a token boundary.
    last_line = line_starts[-1] if line_starts else 0
    cuts = sorted({a for a in token_starts if a >= last_line})
    for cut in cuts[max(0, len(cuts) - budget) :]:
        kept = text[cut:]
        kept_ids, kept_offsets = codec.encode(kept, after_marker=after_marker)
        if len(kept_ids) <= budget:
            return kept, kept_ids, kept_offsets
    return "", [], []


def _fit_suffix(codec: _Codec, suffix: str, budget: int) -> tuple[str, list[int]]:
    """The start of `suffix` within `budget` tokens, ending at a line end (whole lines kept from the start);
    when its first line alone is over budget, cut inside it at a token boundary."""
    if budget <= 0 or not suffix:
        return "", []
    end = min(len(suffix), budget * MAX_CHARS_PER_TOKEN)
    mid_line = False
    if end < len(suffix):
        newline = suffix.rfind("\n", 0, end)
        mid_line = newline < 0
        end = end if mid_line else newline + 1
    text = suffix[:end]
    ids, offsets = codec.encode(text, after_marker=True)
    if len(ids) <= budget:
        return text, ids
    token_ends = [b for _, b in offsets]
    line_ends = [i + 1 for i in _find_all(text, "\n")]
    whole_lines = _whole_lines_within(codec, text, token_ends, line_ends, budget, after_marker=True)
    if whole_lines is not None:
        return whole_lines
    first_line_end = line_ends[0] if line_ends else len(text)
    cuts = sorted({b for b in token_ends if 0 < b <= first_line_end})
    for cut in reversed(cuts[:budget]):
        kept = text[:cut]
        kept_ids, _ = codec.encode(kept, after_marker=True)
        if len(kept_ids) <= budget:
            return kept, kept_ids
    return "", []


def _fit_context(codec: _Codec, context: str, budget: int, after_marker: bool) -> tuple[str, list[int]]:
    """The start of `context` within `budget` tokens, whole lines only (its lines are whole snippets' lines)."""
    if budget <= 0 or not context.strip():
        return "", []
    text = context[: budget * MAX_CHARS_PER_TOKEN]
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    ids, offsets = codec.encode(text, after_marker=after_marker)
    if len(ids) <= budget:
        return text, ids
    token_ends = [b for _, b in offsets]
    line_ends = [i + 1 for i in _find_all(text, "\n")]
    return _whole_lines_within(codec, text, token_ends, line_ends, budget, after_marker=after_marker) or ("", [])


def _whole_lines_within(
    codec: _Codec, text: str, token_ends: list[int], line_ends: list[int], budget: int, *, after_marker: bool
) -> tuple[str, list[int]] | None:
    """The longest start of `text` that ends at a line end and fits `budget` tokens when re-encoded."""
    for line_end in reversed(line_ends):  # longest candidate first
        if bisect_right(token_ends, line_end) > budget + 2:
            continue  # NOTE: re-encoding can merge a token or two across the cut, hence the slack
        kept = text[:line_end]
        kept_ids, _ = codec.encode(kept, after_marker=after_marker)
        if len(kept_ids) <= budget:
            return kept, kept_ids
    return None


def _heal(codec: _Codec, ids: list[int], offsets: Offsets, text: str, lead: int) -> tuple[list[int], str]:
    """Drop the last token of `text`'s tokens and return the kept ids and the dropped text. When the last token
    is part of a character split over several byte tokens, drop back to the character's start."""
    for cut in range(len(ids) - 1, max(-1, len(ids) - 5), -1):
        start = offsets[cut][0]
        if ids[cut] in codec.forbidden or start < lead:
            break  # never heal a special token, nor into the template's leading space
        if cut == 0 or offsets[cut - 1][1] <= start:
            return ids[:cut], text[start:]
    return ids, ""


def _default_bos(tokenizer: TokenizerLike) -> list[int]:
    with_special = list(tokenizer("a")["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if isinstance(bos, int) and len(with_special) > len(without) and with_special[:1] == [bos]:
        return [bos]
    return []


def build_prompt(
    prefix: str,
    suffix: str,
    template: FimTemplate | None,
    tokenizer: TokenizerLike,
    *,
    max_prefix_tokens: int,
    max_suffix_tokens: int,
    max_new_tokens: int,
    stop: StopRule,
    heal: bool = True,
    context: str = "",
    max_context_tokens: int = 0,
    repo: RepoContext | None = None,
) -> Prompt:
    """Tokenize the text around the cursor for `template` (None: prefix only, the suffix is left out).

    The prefix keeps at most `max_prefix_tokens` tokens and starts at a line start (cut inside the cursor line
    only when that line alone is over budget); the suffix keeps at most `max_suffix_tokens` tokens of whole
    lines from its start. With `heal`, when the prompt ends with the prefix (prefix-only, SPM), its last token is
    removed and returned as `healing_text`. Raises ValueError if the tokenizer lacks the template's markers.

    `context` (cross-file snippets, already comments in the file's language) goes right before the prefix, at
    most `max_context_tokens` and half the prefix budget, whole lines from its start; its tokens come out of
    the prefix budget. It changes rarely, so it sits in the part of the prompt the prefix cache keeps.
    With a template whose repository tokens the tokenizer has, `repo` (the same snippets as files) is written in
    that format before the prefix marker instead, within the same budget, and `context` is not used.
    """
    eos = tokenizer.eos_token_id
    stop_ids = {eos} if isinstance(eos, int) else set()
    marker_ids: dict[str, int] = {}
    if template is not None:
        for marker in template.markers:
            marker_id = _token_id(tokenizer, marker)
            if marker_id is None:
                raise ValueError(f"tokenizer has no {marker!r} token for the {template.name} template")
            marker_ids[marker] = marker_id
        stop_ids |= {i for i in (_token_id(tokenizer, token) for token in template.stop_tokens) if i is not None}
    codec = _Codec.create(tokenizer, {*marker_ids.values(), *stop_ids})
    bos = _default_bos(tokenizer)

    if template is None:
        kept_context, context_ids = _fit_context(codec, context, min(max_context_tokens, max_prefix_tokens // 2), after_marker=False)
        kept_prefix, prefix_ids, offsets = _fit_prefix(
            codec, prefix, max_prefix_tokens - len(context_ids), after_marker=bool(context_ids)
        )
        healing = ""
        if heal:
            prefix_ids, healing = _heal(codec, prefix_ids, offsets, kept_prefix, 0)
        return Prompt(
            token_ids=tuple(bos + context_ids + prefix_ids),
            max_new_tokens=max_new_tokens,
            stop=stop,
            stop_token_ids=frozenset(stop_ids),
            healing_text=healing,
            template="prefix-only",
            prefix_chars=len(kept_prefix),
            suffix_chars=0,
            context_chars=len(kept_context),
        )

    wants_space = template.prefix_space == "always" or (template.prefix_space == "tokenizer" and codec.dummy_prefix)
    # NOTE: the leading space usually merges into the first word's token; one token is reserved in case it does not
    context_budget = min(max_context_tokens, max_prefix_tokens // 2) - int(wants_space)
    markers = (_token_id(tokenizer, m) if m else None for m in (template.repo_marker, template.file_marker))
    header, repo_chars = encode_repo_header(codec, repo, tuple(markers), context_budget) if repo else ([], 0)
    context = "" if header else context
    kept_context, context_ids = _fit_context(codec, context, context_budget, after_marker=True)
    prefix_budget = max_prefix_tokens - int(wants_space) - len(context_ids) - len(header)
    kept_prefix, prefix_ids, offsets = _fit_prefix(codec, prefix, prefix_budget, True)
    lead = " " if wants_space and (kept_prefix or kept_context) else ""
    if lead and kept_context:
        context_ids, _ = codec.encode(lead + kept_context, after_marker=True)
    elif lead:
        prefix_ids, offsets = codec.encode(lead + kept_prefix, after_marker=True)
    kept_suffix, suffix_ids = _fit_suffix(codec, suffix, max_suffix_tokens)
    healing = ""
    if heal and template.prefix_ends_prompt:
        prefix_lead = "" if kept_context else lead
        prefix_ids, healing = _heal(codec, prefix_ids, offsets, prefix_lead + kept_prefix, len(prefix_lead))
    prefix_ids = context_ids + prefix_ids

    prefix_marker = [marker_ids[template.prefix_marker]]
    suffix_marker = [marker_ids[template.suffix_marker]]
    middle_marker = [marker_ids[template.middle_marker]] if template.middle_marker else []
    if template.order == "spm":
        token_ids = bos + header + suffix_marker + suffix_ids + prefix_marker + prefix_ids + middle_marker
    else:
        token_ids = bos + header + prefix_marker + prefix_ids + suffix_marker + suffix_ids + middle_marker
    return Prompt(
        token_ids=tuple(token_ids),
        max_new_tokens=max_new_tokens,
        stop=stop,
        stop_token_ids=frozenset(stop_ids),
        healing_text=healing,
        template=template.name,
        prefix_chars=len(kept_prefix),
        suffix_chars=len(kept_suffix),
        context_chars=repo_chars if header else len(kept_context),
    )
