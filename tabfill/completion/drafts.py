"""Draft tokens for speculative greedy decoding: n-grams looked up in the prompt and earlier output.

Prompt lookup: when the last few tokens of the sequence also occur earlier in the prompt (or in the
previous suggestion for this document), the tokens that followed them there are a cheap guess of what
comes next. The engine verifies a guess in one forward and keeps only the run the model agrees with, so a
wrong guess costs a slightly wider forward, never a different answer.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_NGRAM = 2
MAX_NGRAM = 4


class NgramDrafter:
    """Index of the n-grams (2..4 tokens) of a growing token sequence → where the latest one ended.

    `corpus` (e.g. the previous suggestion's tokens) is searched too; it is indexed first so that the
    sequence's own occurrences, being more recent, win."""

    def __init__(self, sequence: Sequence[int], corpus: Sequence[int] = ()) -> None:
        self._tokens: list[int] = []
        # n-gram -> (index just after its latest occurrence, the same for the one before it)
        self._ends: dict[tuple[int, ...], tuple[int, int | None]] = {}
        self._corpus_len = 0
        # The last proposal's (n-gram length matched, whether it was found in the corpus); (0, False): none.
        self.kind: tuple[int, bool] = (0, False)
        if corpus:
            self.extend(corpus)
            self._corpus_len = len(self._tokens)
            # NOTE: a separator no n-gram can span, so the corpus never glues onto the sequence.
            self._tokens.append(-1)
        self.extend(sequence)

    def extend(self, token_ids: Sequence[int]) -> None:
        tokens = self._tokens
        for token in token_ids:
            tokens.append(token)
            end = len(tokens)
            for n in range(MIN_NGRAM, MAX_NGRAM + 1):
                if end - n < 0:
                    break
                gram = tuple(tokens[end - n : end])
                if -1 in gram:
                    break
                # stored before the token that follows it exists; a draft is read from `end` on
                latest = self._ends.get(gram)
                self._ends[gram] = (end, latest[0] if latest else None)

    def propose(self, max_tokens: int) -> list[int]:
        """Up to `max_tokens` tokens that followed the latest earlier occurrence of the current tail. What
        matched is left in `kind` (see there)."""
        tokens = self._tokens
        end = len(tokens)
        self.kind = (0, False)
        if max_tokens <= 0:
            return []
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if end < n:
                continue
            entry = self._ends.get(tuple(tokens[end - n : end]))
            if entry is None:
                continue
            # the latest occurrence is the tail itself; the one before it says what came next
            found = entry[1] if entry[0] == end else entry[0]
            if found is None:
                continue
            draft = tokens[found : found + max_tokens]
            if -1 in draft:
                draft = draft[: draft.index(-1)]
            if draft:
                self.kind = (n, found < self._corpus_len)
                return draft
        return []
