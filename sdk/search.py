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

A bundle may also ship a search tower (``search_tower.tflite``, trained by
`pocketrec.training.search`): a small model from the query's hashed tokens
(`QueryEncoding`) and the user vector to one search vector ``[D]``, whose dot product
with the item table is the dense score instead of the user vector's. It reads the same
user vector as `recommend` (one more small interpreter call) and the same item table, so
compression, sync and the top-K scorer serve it unchanged.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pocketrec.errors import BundleError
from pocketrec.sdk._ranking import top_k
from pocketrec.sdk._runtime import Interpreter
from pocketrec.sdk._scorer import Scorer
from pocketrec.sdk._text import QueryEncoding, TextSettings, item_text, words
from pocketrec.sdk._text_index import TextIndex
from pocketrec.sdk.contract import GOLDEN_TOLERANCE

TEXT_INDEX_FILE = "text_index.bin"
# The search tower's file and signature: int32 query [B, T] and float32 user_vector [B, D]
# -> float32 search_vector [B, D].
SEARCH_TOWER_FILE = "search_tower.tflite"
SEARCH_SIGNATURE = "search_vector"
QUERY_INPUT = "query"
USER_INPUT = "user_vector"
SEARCH_OUTPUT = "search_vector"
# Quantizations a search tower may have (its golden tolerance is the user tower's).
SEARCH_TOWER_QUANTIZATIONS = ("float32", "dynamic")
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
class SearchTowerSettings:
    """The search tower's entry in the manifest's ``search`` field (``search.tower``).

    Attributes:
        encoding: how queries become token ids (the tower was trained on the same).
        quantization: ``"float32"`` or ``"dynamic"`` (int8 weights); picks the golden
            tolerance.
        golden: ``{"queries": [str], "user_vectors": [[D floats]], "search_vectors":
            [[D floats]]}``, what the tower returned when the bundle was built.
    """

    encoding: QueryEncoding
    quantization: str
    golden: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The manifest form."""
        return {
            "file": SEARCH_TOWER_FILE,
            "signature": SEARCH_SIGNATURE,
            "encoding": self.encoding.to_dict(),
            "quantization": self.quantization,
            "golden": dict(self.golden),
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> SearchTowerSettings:
        """Inverse of `to_dict`.

        Raises:
            ValueError: for a malformed entry, naming what is wrong.
        """
        try:
            if document["file"] != SEARCH_TOWER_FILE or document["signature"] != SEARCH_SIGNATURE:
                raise ValueError(
                    f"file and signature must be {SEARCH_TOWER_FILE!r} and {SEARCH_SIGNATURE!r}"
                )
            quantization = document["quantization"]
            if quantization not in SEARCH_TOWER_QUANTIZATIONS:
                raise ValueError(
                    f"quantization must be one of {SEARCH_TOWER_QUANTIZATIONS}, "
                    f"got {quantization!r}"
                )
            golden = document["golden"]
            if not isinstance(golden, Mapping) or not {
                "queries",
                "user_vectors",
                "search_vectors",
            } <= set(golden):
                raise ValueError("golden must hold queries, user_vectors and search_vectors")
            return cls(QueryEncoding.from_dict(document["encoding"]), quantization, golden)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the search tower entry lacks or mistypes {exc}") from exc


class SearchTower:
    """The search tower's LiteRT interpreter; calls are serialized by a lock."""

    def __init__(self, model: bytes, encoding: QueryEncoding, dim: int, num_threads: int = 1):
        """Loads ``model`` and checks its signature against ``encoding`` and ``dim``.

        Raises:
            BundleError: if the model does not load or has another signature.
        """
        self.encoding = encoding
        self.dim = dim
        try:
            interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
            runner = interpreter.get_signature_runner(SEARCH_SIGNATURE)
            inputs, outputs = runner.get_input_details(), runner.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(
                f"{SEARCH_TOWER_FILE} is not a .tflite model with signature "
                f"{SEARCH_SIGNATURE!r} ({exc}); train it again with `pocketrec train-search`"
            ) from exc
        shapes = {name: list(d["shape_signature"]) for name, d in {**inputs, **outputs}.items()}
        wanted = {
            QUERY_INPUT: [-1, encoding.max_tokens],
            USER_INPUT: [-1, dim],
            SEARCH_OUTPUT: [-1, dim],
        }
        if {name: shape[1:] for name, shape in shapes.items()} != {
            name: shape[1:] for name, shape in wanted.items()
        }:
            raise BundleError(
                f"{SEARCH_TOWER_FILE} must map {QUERY_INPUT} [B, {encoding.max_tokens}] and "
                f"{USER_INPUT} [B, {dim}] to {SEARCH_OUTPUT} [B, {dim}]; found {shapes}"
            )
        self._interpreter = interpreter
        self._runner = runner
        self._lock = threading.Lock()

    def run(self, tokens: np.ndarray, user_vectors: np.ndarray) -> np.ndarray:
        """Search vectors float32 ``[B, D]`` of token ids ``[B, T]`` and user vectors."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        users = np.ascontiguousarray(user_vectors, dtype=np.float32)
        with self._lock:
            out = self._runner(**{QUERY_INPUT: tokens, USER_INPUT: users})[SEARCH_OUTPUT]
            out = np.array(out, dtype=np.float32, copy=True)
        if not np.isfinite(out).all():
            raise BundleError("the search tower returned NaN or infinite vectors")
        return out

    def vectors(self, queries: Sequence[str], user_vectors: np.ndarray) -> np.ndarray:
        """Search vectors ``[B, D]`` of query texts and their users' vectors."""
        tokens = np.asarray([self.encoding.token_ids(words(q)) for q in queries], np.int32)
        return self.run(tokens.reshape(len(queries), self.encoding.max_tokens), user_vectors)

    def check_golden(self, settings: SearchTowerSettings, where: str) -> None:
        """Runs the recorded golden queries and compares the search vectors.

        Raises:
            BundleError: if they differ by more than the quantization's tolerance.
        """
        golden = settings.golden
        try:
            users = np.asarray(golden["user_vectors"], np.float32).reshape(-1, self.dim)
            expected = np.asarray(golden["search_vectors"], np.float32).reshape(-1, self.dim)
            queries = [str(q) for q in golden["queries"]]
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: the search tower's golden outputs are malformed") from exc
        if not (len(queries) == len(users) == len(expected)):
            raise BundleError(f"{where}: the search tower's golden lists differ in length")
        actual = self.vectors(queries, users)
        error = float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
        allowed = GOLDEN_TOLERANCE[settings.quantization] * max(
            1.0, float(np.abs(expected).max(initial=0.0))
        )
        if not error <= allowed:
            raise BundleError(
                f"{where}: search tower golden self-check failed: search vectors differ by "
                f"{error:.3g}, more than the {allowed:.3g} allowed; the bundle is corrupt"
            )


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
        tower: SearchTower | None = None,
    ) -> None:
        self.index = index
        self.settings = settings
        self.tower = tower
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
        tower: SearchTower | None = None,
    ) -> Searcher:
        """The searcher of a bundle's items: its shipped index, else one built from them.

        Raises:
            BundleError: if the shipped index is corrupt or was built for other items.
        """
        if index_bytes is None:
            index = TextIndex.build(items, settings.text)
        else:
            index = TextIndex.from_bytes(index_bytes, num_items=len(items), settings=settings.text)
        return cls(index, settings, items, tower)

    def personal_vector(self, query_words: Sequence[str], user_vector: np.ndarray) -> np.ndarray:
        """The vector whose dot product with the item table is the dense score: the search
        tower's output for this query and user when the bundle ships one, else the user
        vector itself."""
        if self.tower is None:
            return user_vector
        tokens = np.asarray([self.tower.encoding.token_ids(query_words)], np.int32)
        return self.tower.run(tokens, user_vector[None])[0]

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
