"""Queries made from an item's metadata: what search is trained and evaluated on.

Logs rarely hold queries, so personalised search follows the convention of product-search
research: the query of an event is made from its item (a genre, words of its title, a
title word with a typo). The search tower trains on these and `pocketrec bench-search`
asks them, so both use this one definition.
"""

from __future__ import annotations

import numpy as np

from pocketrec.sdk._text import words

# Query kinds, in the order benchmarks report them.
QUERY_KINDS = ("genre", "title", "typo")
# Words too common to make a title query of.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "in",
        "is",
        "it",
        "its",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "too",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "la",
        "le",
        "les",
        "de",
        "des",
        "du",
        "el",
        "en",
        "et",
        "il",
        "l",
        "los",
        "un",
        "une",
    ]
)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def content_words(title: str | None) -> list[str]:
    """The title's words a user might type: 3+ characters, not a number, not a stop word."""
    return [
        w for w in words(title or "") if len(w) >= 3 and not w.isdigit() and w not in STOP_WORDS
    ]


def typo(word: str, rng: np.random.Generator) -> str:
    """``word`` with one random edit: a letter changed, dropped, added, or two swapped."""
    while True:
        at = int(rng.integers(0, len(word)))
        edit = int(rng.integers(0, 4))
        letter = _LETTERS[int(rng.integers(0, len(_LETTERS)))]
        if edit == 0:
            changed = word[:at] + letter + word[at + 1 :]
        elif edit == 1:
            changed = word[:at] + word[at + 1 :]
        elif edit == 2:
            changed = word[:at] + letter + word[at:]
        else:
            at = min(at, len(word) - 2)
            changed = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
        if changed != word:
            return changed
