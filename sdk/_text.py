"""Text to tokens, in plain Python, the same on the device and in training.

Words are what BM25 matches exactly; hashed character n-grams of ``#word#`` let a typo or a
word the catalog never used still match items that share most of its letters. The hash is
CRC-32 (``zlib.crc32``) of the n-gram's UTF-8 bytes modulo ``buckets``: stable across
processes and platforms, unlike Python's salted ``hash()``. `TextSettings` travels in the
bundle manifest so whoever tokenizes later (the device, a query encoder's training) agrees.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Letters and digits; "_" and punctuation separate words ("Sci-Fi" -> "sci", "fi").
_WORD = re.compile(r"[^\W_]+")
HASH = "crc32"


@dataclass(frozen=True)
class TextSettings:
    """How text becomes tokens.

    Attributes:
        ngram: characters per n-gram of ``#word#`` (a word shorter than that is one gram).
        buckets: n-gram ids are ``crc32(gram) % buckets``.
    """

    ngram: int = 3
    buckets: int = 1 << 18

    def __post_init__(self) -> None:
        for name, low in (("ngram", 1), ("buckets", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.buckets > 1 << 31:
            raise ValueError(f"buckets must be at most 2**31 (int32 ids), got {self.buckets}")

    def to_dict(self) -> dict[str, Any]:
        """The manifest form (``hash`` names the function, for readers of the file)."""
        return {"ngram": self.ngram, "buckets": self.buckets, "hash": HASH}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> TextSettings:
        """Inverse of `to_dict`.

        Raises:
            ValueError: for a hash this SDK does not compute, or bad numbers.
        """
        if document.get("hash", HASH) != HASH:
            raise ValueError(f"text hash must be {HASH!r}, got {document.get('hash')!r}")
        return cls(ngram=document.get("ngram", 3), buckets=document.get("buckets", 1 << 18))


def normalize(text: str) -> str:
    """NFKC, lower case, accents stripped: "Amélie" and "AMELIE" both become "amelie"."""
    if text.isascii():
        return text.lower()  # NFKC and accents change no ASCII text
    folded = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFD", folded)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped)


def words(text: str) -> list[str]:
    """The words of ``text`` after `normalize`, in order (repeats kept)."""
    return _WORD.findall(normalize(text))


def word_ngrams(word: str, settings: TextSettings) -> list[int]:
    """Distinct n-gram ids of one normalized word (first occurrence order)."""
    padded = f"#{word}#"
    n = settings.ngram
    grams = [padded[i : i + n] for i in range(max(1, len(padded) - n + 1))]
    ids = dict.fromkeys(zlib.crc32(g.encode("utf-8")) % settings.buckets for g in grams)
    return list(ids)


def item_text(item: Mapping[str, Any]) -> str:
    """The searchable text of one item: its string metadata values, in key order."""
    parts: list[str] = []
    for key, value in item.items():
        if key == "id":
            continue
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return " ".join(parts)


@dataclass(frozen=True)
class QueryEncoding:
    """How a query becomes the search tower's input: hashed ids of its words and n-grams.

    Fewer buckets than the text index (`TextSettings`): they size the search tower's
    embedding table. Id 0 pads; a word is ``1 + crc32("#word#") % (buckets - 1)``, its
    n-grams ``1 + `word_ngrams` with ``buckets - 1`` buckets``, so a typo keeps most ids.

    Attributes:
        buckets: token ids lie in ``[0, buckets)``.
        max_tokens: T, the ids per query (distinct, words first, then n-grams; cut or padded).
        ngram: characters per n-gram.
    """

    buckets: int = 8192
    max_tokens: int = 32
    ngram: int = 3

    def __post_init__(self) -> None:
        for name, low in (("buckets", 2), ("max_tokens", 1), ("ngram", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.buckets > 1 << 31:
            raise ValueError(f"buckets must be at most 2**31 (int32 ids), got {self.buckets}")

    def token_ids(self, query_words: Sequence[str]) -> list[int]:
        """``max_tokens`` ids of normalized ``query_words`` (`words` output), 0-padded."""
        hashed = TextSettings(ngram=self.ngram, buckets=self.buckets - 1)
        ids = [1 + zlib.crc32(f"#{w}#".encode()) % (self.buckets - 1) for w in query_words]
        for word in query_words:
            ids.extend(1 + g for g in word_ngrams(word, hashed))
        distinct = list(dict.fromkeys(ids))[: self.max_tokens]
        return distinct + [0] * (self.max_tokens - len(distinct))

    def to_dict(self) -> dict[str, Any]:
        """The manifest form (``hash`` names the function, for readers of the file)."""
        return {
            "buckets": self.buckets,
            "max_tokens": self.max_tokens,
            "ngram": self.ngram,
            "hash": HASH,
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> QueryEncoding:
        """Inverse of `to_dict`.

        Raises:
            ValueError: for a hash this SDK does not compute, or bad numbers.
            KeyError: for a missing number.
        """
        if document.get("hash", HASH) != HASH:
            raise ValueError(f"query hash must be {HASH!r}, got {document.get('hash')!r}")
        return cls(
            buckets=document["buckets"],
            max_tokens=document["max_tokens"],
            ngram=document["ngram"],
        )
