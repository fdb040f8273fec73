"""The words of a text as the simulator compares them (its embeddings, its default grading
policy): lower-cased `\\w+` tokens, common English function words left out, crudely stemmed."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+")
STOPWORDS = (
    "a an and are as at be been but by can do does for from had has have he her his i if in into is "
    "it its me my no not of on or our she so than that the their them then there these they this to "
    "was we were what when which who will with you your"
)
"""English function words: left out of a text's features, so unrelated texts do not look alike."""
_STOP = frozenset(STOPWORDS.split())
_SUFFIXES = ("ing", "ed", "es", "s")


def stem(word: str) -> str:
    """A crude English stem: one of -ing, -ed, -es, -s off a word long enough to keep a root."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def features(text: str) -> Counter[str]:
    """The stems of `text` that carry meaning; all its words when it has none of those."""
    words = _WORD.findall(text.lower())
    meaning = [stem(w) for w in words if w not in _STOP]
    return Counter(meaning or words or [text])
