"""How close two texts are, 0..1: the cosine of their embeddings, or offline, of their words.

`lexical_similarity` is the fallback of `similar` checks when the server serves no embeddings (and
what `method: lexical` asks for): the cosine of the two texts' word-count vectors (lower-cased
`\\w+` tokens). It measures shared words, not meaning: a paraphrase with other words scores low,
so thresholds for it sit lower than for embeddings. The check result names the method used.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

LEXICAL_METHOD = "lexical:token-cosine"

_WORD = re.compile(r"\w+")


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """The cosine of two vectors, clipped to 0..1 (0 for a zero vector)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 0.0 if norm == 0 else max(0.0, min(1.0, dot / norm))


def lexical_similarity(a: str, b: str) -> float:
    """The cosine of the word-count vectors of `a` and `b`."""
    ca, cb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    words = sorted(ca.keys() | cb.keys())
    return cosine([ca[w] for w in words], [cb[w] for w in words])
