"""Personalised search on the device: lexical matches re-ranked by the user's vector.

`Recommender.search` runs it. The query's words are matched by the bundle's text index
(`pocketrec.sdk._text_index`: BM25 over words plus ``ngram_weight`` times BM25 over
character n-grams, so a typo still matches); the best ``candidates`` lexical matches are
re-ranked by

    score = lexical / max(lexical) + alpha * (dense - min(dense)) / (max(dense) - min(dense))

where ``dense`` is the dot product of the user vector (the same user tower as
`Recommender.recommend`) with each candidate's item vector, both normalised over the
candidates. With ``alpha = 0`` it is plain BM25; a large ``alpha`` orders the lexical
matches by the user's taste. `SearchSettings` holds the knobs; the bundle manifest's
``search`` field stores them (tuned by ``pocketrec bench-search``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pocketrec.sdk._ranking import top_k
from pocketrec.sdk._scorer import Scorer
from pocketrec.sdk._text import TextSettings, item_text, words
from pocketrec.sdk._text_index import TextIndex

TEXT_INDEX_FILE = "text_index.bin"
# Candidates are scored by gathering their rows when they are under 1/this of the catalog,
# else by the scorer's pass over the whole table (cheaper than gathering so many rows).
_GATHER_SHARE = 8
# Items whose words `Searcher.matched` keeps tokenized.
_CACHED_ITEMS = 4096
# Personal scores of table rows (int64 [M]) -> float32 [M], e.g. user vector · item vectors.
Dense = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SearchSettings:
    """How search tokenizes, matches and mixes.

    Attributes:
        text: tokenizer settings (n-gram size, hash buckets); the index is built with them.
        alpha: weight of the normalised dense (user · item) score against the normalised
            lexical one.
        ngram_weight: weight of the n-gram BM25 channel against the word channel.
        candidates: lexical matches re-ranked (the best by lexical score).
        k1, b: BM25's term-frequency saturation and length normalisation.
    """

    text: TextSettings = field(default_factory=TextSettings)
    # alpha and b: the best mean validation NDCG@10 of `pocketrec bench-search` on
    # MovieLens 100K (the README's Search section).
    alpha: float = 1.0
    ngram_weight: float = 0.3
    candidates: int = 1000
    k1: float = 1.2
    b: float = 0.3

    def __post_init__(self) -> None:
        if not isinstance(self.text, TextSettings):
            raise TypeError(f"text must be a TextSettings, got {type(self.text).__name__}")
        for name in ("alpha", "ngram_weight", "k1"):
            value = getattr(self, name)
            if not _number(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not _number(self.b) or not 0 <= self.b <= 1:
            raise ValueError(f"b must be a number in [0, 1], got {self.b!r}")
        candidates = self.candidates
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")

    def to_dict(self) -> dict[str, Any]:
        """The manifest form (``search`` field of manifest.json)."""
        return {
            "text": self.text.to_dict(),
            "alpha": self.alpha,
            "ngram_weight": self.ngram_weight,
            "candidates": self.candidates,
            "k1": self.k1,
            "b": self.b,
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> SearchSettings:
        """Inverse of `to_dict`; missing keys take their defaults.

        Raises:
            ValueError, TypeError: for a malformed document.
        """
        if not isinstance(document, Mapping):
            raise TypeError(f"search settings must be an object, got {document!r}")
        known = {"text", "alpha", "ngram_weight", "candidates", "k1", "b"}
        values = {k: v for k, v in document.items() if k in known}
        if "text" in values:
            text = values["text"]
            if not isinstance(text, Mapping):
                raise TypeError(f"search text settings must be an object, got {text!r}")
            values["text"] = TextSettings.from_dict(text)
        return cls(**values)


@dataclass(frozen=True)
class SearchHits:
    """Rows found for a query, best first, their mixed scores and matched query words."""

    rows: np.ndarray
    scores: np.ndarray
    matched: list[list[str]]


class Searcher:
    """One catalog's text index with the settings that score it; immutable, thread-safe."""

    def __init__(
        self,
        index: TextIndex,
        settings: SearchSettings,
        items: Sequence[Mapping[str, Any]],
    ) -> None:
        self.index = index
        self.settings = settings
        self._items = items
        # Words of recently returned items, for `matched` on typos (results recur).
        self._item_words = functools.lru_cache(maxsize=_CACHED_ITEMS)(self._words_of)
        self._lexical = index.scorer(
            k1=settings.k1, b=settings.b, ngram_weight=settings.ngram_weight
        )

    @classmethod
    def of(
        cls,
        items: Sequence[Mapping[str, Any]],
        settings: SearchSettings,
        index_bytes: bytes | None,
    ) -> Searcher:
        """The searcher of a bundle's items: its shipped index, else one built from them.

        Raises:
            BundleError: if the shipped index is corrupt or was built for other items.
        """
        if index_bytes is None:
            index = TextIndex.build(items, settings.text)
        else:
            index = TextIndex.from_bytes(index_bytes, num_items=len(items), settings=settings.text)
        return cls(index, settings, items)

    def lexical(self, query_words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows matching any query word (sorted) and their lexical scores."""
        return self._lexical.scores(query_words)

    def search(
        self,
        query_words: Sequence[str],
        dense: Dense,
        k: int,
        *,
        banned: Collection[int] = (),
        allowed: Collection[int] | None = None,
        alpha: float | None = None,
    ) -> SearchHits:
        """The ``k`` best lexical matches after re-ranking by ``dense(rows)``.

        Args:
            dense: the personal score of given rows (e.g. user vector · item vectors).
            banned: rows never returned; allowed: if given, the only rows returned.
            alpha: overrides the settings' ``alpha`` (for tuning).
        """
        rows, lexical = self.lexical(query_words)
        if banned or allowed is not None:
            # A mask over the catalog: far cheaper than np.isin at phone catalog sizes.
            admitted = np.zeros(self.index.num_items, dtype=bool)
            if allowed is None:
                admitted[:] = True
            else:
                admitted[np.fromiter(allowed, np.int64, len(allowed))] = True
            admitted[np.fromiter(banned, np.int64, len(banned))] = False
            keep = admitted[rows]
            rows, lexical = rows[keep], lexical[keep]
        mixed = mix(rows, lexical, dense, self.settings, alpha)
        order = top_k(mixed, k)  # rows ascend, so ties go to the lower row
        best = rows[order]
        return SearchHits(best, mixed[order], self.matched(query_words, best))

    def matched(self, query_words: Sequence[str], rows: Sequence[int]) -> list[list[str]]:
        """Per row, the query words its text holds; a word no item holds (a typo, a word
        cut short) counts where the text has a word it begins, or a word one edit (a
        letter changed, added, dropped, or two swapped) away from it."""
        distinct = list(dict.fromkeys(query_words))
        wanted = np.asarray(rows, dtype=np.int64)
        found = np.zeros((len(distinct), len(wanted)), dtype=bool)
        texts: list[frozenset[str]] | None = None
        for q, word in enumerate(distinct):
            if self.index.has_word(word):
                found[q] = self.index.holding(word, wanted)
                continue
            if texts is None:
                texts = [self._item_words(row) for row in wanted.tolist()]
            close = {t for t in frozenset().union(*texts) if _close(word, t)}
            found[q] = [not close.isdisjoint(text) for text in texts]
        return [
            [w for w, hit in zip(distinct, column, strict=True) if hit]
            for column in found.T.tolist()
        ]

    def _words_of(self, row: int) -> frozenset[str]:
        return frozenset(words(item_text(self._items[row])))


def user_scores(scorer: Scorer, user_vector: np.ndarray) -> Dense:
    """The `Dense` of a user vector: dot products with the rows' item vectors, as
    `Recommender.recommend` scores them (its scorer's pass when many rows are asked)."""
    table = scorer.table

    def dense(rows: np.ndarray) -> np.ndarray:
        if len(rows) * _GATHER_SHARE >= table.num_items:
            return scorer.scores(user_vector)[rows]
        return table.vectors(rows) @ user_vector

    return dense


def mix(
    rows: np.ndarray,
    lexical: np.ndarray,
    dense: Dense,
    settings: SearchSettings,
    alpha: float | None = None,
) -> np.ndarray:
    """Mixed scores of lexical matches (``-inf`` for those beyond ``candidates``).

    Only the best ``settings.candidates`` lexical matches are scored by ``dense``.
    """
    alpha = settings.alpha if alpha is None else alpha
    if len(rows) <= settings.candidates:
        return _mixed(rows, lexical, dense, alpha)
    # The best lexical scores, ties to the lower row (rows ascend).
    pool = np.lexsort((rows, -lexical))[: settings.candidates]
    mixed = np.full(len(rows), -np.inf, dtype=np.float32)
    mixed[pool] = _mixed(rows[pool], lexical[pool], dense, alpha)
    return mixed


def _mixed(rows: np.ndarray, lexical: np.ndarray, dense: Dense, alpha: float) -> np.ndarray:
    if not len(rows):
        return np.empty(0, dtype=np.float32)
    mixed = lexical * np.float32(1.0 / max(float(lexical.max()), 1e-12))
    if alpha:
        personal = np.asarray(dense(rows), dtype=np.float32)
        low, high = float(personal.min()), float(personal.max())
        if high > low:
            mixed += (personal - np.float32(low)) * np.float32(alpha / (high - low))
    return mixed


def _close(query: str, word: str) -> bool:
    """Whether ``word`` begins with ``query`` (3 letters or more) or is one edit from it
    (``query`` of 4 letters or more)."""
    if len(query) >= 3 and word.startswith(query):
        return True
    size, other = len(query), len(word)
    if size < 4 or abs(size - other) > 1:
        return False
    i = next((i for i, (a, b) in enumerate(zip(query, word, strict=False)) if a != b), None)
    if i is None:  # one is the other plus a last letter
        return True
    if size == other:
        changed = query[i + 1 :] == word[i + 1 :]
        swapped = query[i + 1 : i + 2] == word[i] and query[i] == word[i + 1 : i + 2]
        return changed or (swapped and query[i + 2 :] == word[i + 2 :])
    return query[i + 1 :] == word[i:] if size > other else query[i:] == word[i + 1 :]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
