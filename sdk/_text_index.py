"""The on-device inverted index over item text: BM25 over words and over character n-grams.

Every string (and list of strings) in an item's metadata but its id is the item's text
(titles, genres, anything else the catalog carries). Two channels, each a compressed
posting list (CSR: per term, the rows that hold it and how often): exact words, and the
hashed n-grams of `pocketrec.sdk._text`, which keep a typo'd or unseen word matching. A
query's lexical score is ``BM25(words) + ngram_weight * BM25(n-grams)``, the n-grams being
those of the query words no item holds (typos, words cut short): a word the catalog knows
matches exactly.

The index is a pure function of the items and the `TextSettings`, so a bundle can ship it
(``text_index.bin``, see docs/bundle-format.md) and a device that rebuilds a bundle from
synced rows gets the same bytes; a bundle without it has it built on first use.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pocketrec.errors import BundleError
from pocketrec.sdk._text import TextSettings, item_text, word_ngrams, words

MAGIC = b"PRTEXTIX"
FORMAT_VERSION = 1
# magic, format version (uint32), header length (uint64), all little-endian.
_PREFIX = struct.Struct("<8sIQ")
_ALIGN = 8
# Query postings are summed into a dense [N] array when N <= this times their count.
_DENSE_FACTOR = 16
# A channel's arrays, in `_Channel`'s field order.
_PARTS = ("offsets", "rows", "tf", "lengths")
_ARRAYS = {
    "word_offsets": "<i8",
    "word_rows": "<i4",
    "word_tf": "u1",
    "word_lengths": "<u2",
    "gram_keys": "<i4",
    "gram_offsets": "<i8",
    "gram_rows": "<i4",
    "gram_tf": "u1",
    "gram_lengths": "<u2",
}


@dataclass(frozen=True)
class _Channel:
    """One posting-list channel: term ``t`` is held by ``rows[offsets[t]:offsets[t+1]]``."""

    offsets: np.ndarray
    rows: np.ndarray
    tf: np.ndarray
    lengths: np.ndarray

    def weights(self, k1: float, b: float) -> np.ndarray:
        """BM25 weight of every posting: ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b *
        length / mean length))``, with the positive idf ``log(1 + (N - df + 0.5) / (df +
        0.5))``. Computed once per settings, so a query only gathers and adds."""
        n = len(self.lengths)
        df = np.diff(self.offsets).astype(np.float64)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        mean_length = max(float(self.lengths.mean()) if n else 0.0, 1.0)
        tf = self.tf.astype(np.float64)
        norm = k1 * (1.0 - b + b * self.lengths[self.rows].astype(np.float64) / mean_length)
        return (np.repeat(idf, np.diff(self.offsets)) * tf * (k1 + 1.0) / (tf + norm)).astype(
            np.float32
        )


class TextIndex:
    """BM25 over the words and the n-grams of every item's text; immutable, thread-safe."""

    def __init__(
        self,
        settings: TextSettings,
        num_items: int,
        vocabulary: list[str],
        arrays: Mapping[str, np.ndarray],
    ) -> None:
        """Wraps arrays already built or checked; use `build` or `from_bytes`."""
        self.settings = settings
        self.num_items = num_items
        self._vocabulary = vocabulary
        self._word_of = {word: i for i, word in enumerate(vocabulary)}
        self._arrays = dict(arrays)
        self._words = _Channel(*(self._arrays[f"word_{part}"] for part in _PARTS))
        self._grams = _Channel(*(self._arrays[f"gram_{part}"] for part in _PARTS))
        self._gram_keys = self._arrays["gram_keys"]

    @classmethod
    def build(cls, items: Sequence[Mapping[str, Any]], settings: TextSettings) -> TextIndex:
        """The index of ``items`` (row ``i`` = ``items[i]``)."""
        word_ids: dict[str, int] = {}
        gram_ids: dict[int, int] = {}
        word_postings: tuple[list[int], list[int], list[int]] = ([], [], [])
        gram_postings: tuple[list[int], list[int], list[int]] = ([], [], [])
        word_lengths = np.zeros(len(items), np.uint16)
        gram_lengths = np.zeros(len(items), np.uint16)
        grams_of: dict[str, list[int]] = {}
        for row, item in enumerate(items):
            tokens = words(item_text(item))
            grams: list[int] = []
            for word in tokens:
                ids = grams_of.get(word)
                if ids is None:
                    ids = grams_of[word] = word_ngrams(word, settings)
                grams.extend(ids)
            word_lengths[row] = min(len(tokens), 0xFFFF)
            gram_lengths[row] = min(len(grams), 0xFFFF)
            _add(word_postings, word_ids, row, Counter(tokens))
            _add(gram_postings, gram_ids, row, Counter(grams))
        vocabulary = sorted(word_ids)
        keys = sorted(gram_ids)
        word_offsets, word_rows, word_tf = _postings(word_postings, word_ids, vocabulary)
        gram_offsets, gram_rows, gram_tf = _postings(gram_postings, gram_ids, keys)
        arrays = {
            "word_offsets": word_offsets,
            "word_rows": word_rows,
            "word_tf": word_tf,
            "word_lengths": word_lengths,
            "gram_keys": np.asarray(keys, np.int32),
            "gram_offsets": gram_offsets,
            "gram_rows": gram_rows,
            "gram_tf": gram_tf,
            "gram_lengths": gram_lengths,
        }
        return cls(settings, len(items), vocabulary, arrays)

    # -- scoring ---------------------------------------------------------------------------

    def scorer(self, *, k1: float, b: float, ngram_weight: float) -> LexicalScorer:
        """Scores queries by ``BM25(words) + ngram_weight * BM25(n-grams)`` with these
        BM25 parameters (every posting's weight is computed here, once)."""
        return LexicalScorer(
            self,
            self._words.weights(k1, b),
            np.float32(ngram_weight) * self._grams.weights(k1, b),
        )

    def has_word(self, word: str) -> bool:
        """Whether some item's text holds ``word`` (normalized)."""
        return word in self._word_of

    def holding(self, word: str, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` hold ``word`` (a word of the vocabulary), as a bool array."""
        term = self._word_of[word]
        offsets = self._words.offsets
        postings = self._words.rows[offsets[term] : offsets[term + 1]]  # ascending
        at = np.minimum(np.searchsorted(postings, rows), len(postings) - 1)
        return postings[at] == rows

    def _word_slices(self, query_words: Sequence[str]) -> list[tuple[int, int]]:
        offsets = self._words.offsets
        terms = [self._word_of[w] for w in query_words if w in self._word_of]
        return [(int(offsets[t]), int(offsets[t + 1])) for t in terms]

    def _gram_slices(self, query_words: Sequence[str]) -> list[tuple[int, int]]:
        ids = {g for word in query_words for g in word_ngrams(word, self.settings)}
        keys, offsets = self._gram_keys, self._grams.offsets
        wanted = np.fromiter(ids, np.int64, len(ids))
        at = np.searchsorted(keys, wanted)
        found = at[(at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == wanted)]
        return [(int(offsets[t]), int(offsets[t + 1])) for t in found.tolist()]

    # -- bytes -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The ``text_index.bin`` form: deterministic for the same items and settings."""
        specs: dict[str, dict[str, Any]] = {}
        offset = 0
        blobs = []
        for name, dtype in _ARRAYS.items():
            data = np.ascontiguousarray(self._arrays[name], dtype=dtype).tobytes()
            specs[name] = {"dtype": dtype, "length": len(self._arrays[name]), "offset": offset}
            padding = -len(data) % _ALIGN
            blobs.append(data + b"\0" * padding)
            offset += len(data) + padding
        header = {
            "settings": self.settings.to_dict(),
            "num_items": self.num_items,
            "vocabulary": self._vocabulary,
            "arrays": specs,
        }
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        text += b" " * (-(_PREFIX.size + len(text)) % _ALIGN)
        return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text + b"".join(blobs)

    @classmethod
    def from_bytes(cls, data: bytes, *, num_items: int, settings: TextSettings) -> TextIndex:
        """Reads `to_bytes` output, checked against the bundle's items and settings.

        Raises:
            BundleError: naming what is wrong.
        """
        if len(data) < _PREFIX.size:
            raise BundleError(f"a text index starts with {_PREFIX.size} bytes; got {len(data)}")
        magic, version, length = _PREFIX.unpack_from(data)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise BundleError(
                f"not a version {FORMAT_VERSION} text index (magic {magic!r}, version {version})"
            )
        try:
            header = json.loads(data[_PREFIX.size : _PREFIX.size + length])
            stored = TextSettings.from_dict(header["settings"])
            vocabulary = header["vocabulary"]
            specs = header["arrays"]
            base = _PREFIX.size + length
            arrays = {}
            for name, dtype in _ARRAYS.items():
                spec = specs[name]
                count, start = int(spec["length"]), base + int(spec["offset"])
                if spec["dtype"] != dtype or start + count * np.dtype(dtype).itemsize > len(data):
                    raise ValueError(f"array {name} is not {count} x {dtype} inside the file")
                arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=start)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the text index header is malformed: {exc}") from exc
        if stored != settings or header["num_items"] != num_items:
            raise BundleError(
                f"the text index was built for {header['num_items']} items with {stored}; the "
                f"bundle has {num_items} items and {settings}"
            )
        _check_channel(arrays, "word", len(vocabulary), num_items)
        _check_channel(arrays, "gram", len(arrays["gram_keys"]), num_items)
        return cls(settings, num_items, vocabulary, arrays)


def _add(
    postings: tuple[list[int], list[int], list[int]],
    ids: dict[Any, int],
    row: int,
    counts: Counter[Any],
) -> None:
    """Appends ``row``'s (term id, row, count) triples; a new term gets the next id."""
    terms, rows, tfs = postings
    for term, count in counts.items():
        term_id = ids.get(term)
        if term_id is None:
            term_id = ids[term] = len(ids)
        terms.append(term_id)
        rows.append(row)
        tfs.append(count)


class LexicalScorer:
    """A `TextIndex` with its postings' BM25 weights for one set of parameters."""

    def __init__(self, index: TextIndex, word_weights: np.ndarray, gram_weights: np.ndarray):
        self._index = index
        self._word_weights = word_weights
        self._gram_weights = gram_weights
        self._use_grams = bool(gram_weights.size) and bool(np.any(gram_weights))

    def scores(self, query_words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows that match any query word (ascending) and their lexical scores float32.

        A query word some item holds matches by BM25 over words; one no item holds (a
        typo, a word cut short) by BM25 over its n-grams. Each distinct query word and
        n-gram counts once.
        """
        index = self._index
        distinct = list(dict.fromkeys(query_words))
        unknown = [w for w in distinct if not index.has_word(w)]
        words_rows, grams_rows = index._words.rows, index._grams.rows
        parts = [(words_rows, self._word_weights, index._word_slices(distinct))]
        if self._use_grams and unknown:
            parts.append((grams_rows, self._gram_weights, index._gram_slices(unknown)))
        rows_parts = [rows[a:z] for rows, _, slices in parts for a, z in slices]
        if not rows_parts:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        rows = np.concatenate(rows_parts)
        weights = np.concatenate([w[a:z] for _, w, slices in parts for a, z in slices])
        if index.num_items <= _DENSE_FACTOR * len(rows):
            # Few items for so many postings: one dense sum beats sorting the postings.
            # Every posting weighs more than 0 (idf > 0, tf >= 1), so a match sums above 0.
            dense = np.bincount(rows, weights=weights, minlength=index.num_items)
            matched = np.flatnonzero(dense > 0)
            return matched, dense[matched].astype(np.float32)
        unique, inverse = np.unique(rows, return_inverse=True)
        sums = np.bincount(inverse, weights=weights, minlength=len(unique))
        return unique.astype(np.int64), sums.astype(np.float32)


def _postings(
    postings: tuple[list[int], list[int], list[int]], ids: dict[Any, int], terms_in_order: list[Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR offsets, rows and clipped counts, with terms in ``terms_in_order``."""
    order = [ids[term] for term in terms_in_order]
    rank = np.empty(len(order), np.int64)
    rank[np.asarray(order, np.int64)] = np.arange(len(order))
    terms = rank[np.asarray(postings[0], np.int64)]
    rows = np.asarray(postings[1], np.int32)
    order_of = np.lexsort((rows, terms))
    offsets = np.zeros(len(order) + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(terms, minlength=len(order)))
    tf = np.minimum(np.asarray(postings[2], np.int64), 255).astype(np.uint8)
    return offsets, rows[order_of], tf[order_of]


def _check_channel(arrays: Mapping[str, np.ndarray], name: str, terms: int, items: int) -> None:
    offsets, rows = arrays[f"{name}_offsets"], arrays[f"{name}_rows"]
    if (
        len(offsets) != terms + 1
        or len(arrays[f"{name}_tf"]) != len(rows)
        or len(arrays[f"{name}_lengths"]) != items
        or (len(offsets) and (offsets[0] != 0 or offsets[-1] != len(rows)))
        or np.any(np.diff(offsets) < 0)
        or (rows.size and (rows.min() < 0 or rows.max() >= items))
    ):
        raise BundleError(f"the text index's {name} postings are inconsistent; rebuild it")
