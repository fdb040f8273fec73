"""Log probabilities of a reply's tokens, for requests that ask for them (`logprobs`, `top_logprobs`).

The simulator has no model, so the numbers are made up, but deterministic and plausible: each
word-sized token of the reply is the most likely one (logprob close to 0) and its alternatives
are less likely variants of it, in the shapes the schemas give (chat's `ChatCompletionTokenLogprob`,
the Responses API's `LogProb` and `ResponseLogProb`).
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"\s*\S+|\s+")


def tokens(text: str) -> list[str]:
    """Word-sized tokens that join back to `text`."""
    return _TOKEN.findall(text)


def _alternatives(token: str, top: int) -> list[tuple[str, float]]:
    variants = [token, token.upper(), token.lower() + "s", token.strip(), " " + token.strip().capitalize()]
    seen: list[str] = []
    for v in variants:
        if v and v not in seen:
            seen.append(v)
    while len(seen) < top:
        seen.append(f"{token.strip()}{len(seen)}")
    return [(t, 0.0) for t in seen[:top]]


def token_logprobs(text: str, top: int, with_bytes: bool = True) -> list[dict[str, Any]]:
    """One entry per token: `token`, `logprob`, `bytes`, `top_logprobs` (`top` alternatives)."""
    out = []
    for i, token in enumerate(tokens(text)):
        lp = -round(0.001 + 0.01 * (i % 7), 4)
        alts = []
        for rank, (alt, _) in enumerate(_alternatives(token, top)):
            entry: dict[str, Any] = {"token": alt, "logprob": lp if rank == 0 else round(lp - 2.5 * rank, 4)}
            if with_bytes:
                entry["bytes"] = list(alt.encode())
            alts.append(entry)
        item: dict[str, Any] = {"token": token, "logprob": lp, "top_logprobs": alts}
        if with_bytes:
            item["bytes"] = list(token.encode())
        out.append(item)
    return out
