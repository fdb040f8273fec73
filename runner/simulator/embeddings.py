"""`POST /v1/embeddings`: deterministic embeddings whose cosine reflects shared words.

A text's vector is a hashed bag of its words: lower-cased `\\w+` tokens, common English function
words dropped, crudely stemmed (`refunds` → `refund`, `accepted` → `accept`), each stem hashed to
one component (and a sign) of a `dimensions`-long vector, weighted by its count, then normalised
to length 1 like OpenAI's. So the cosine of two texts grows with the stems they share: a
paraphrase that reuses the words ranks above an unrelated text, and the same text always gets the
same vector (every seed, every process). It measures shared words, not meaning: "cheap" and
"inexpensive" are as far apart as any two words.

Like OpenAI: `input` is a string, an array of strings, an array of token ids or an array of such
arrays (token ids embed as the words `#<id>`; every array holds 1..2048 items); an empty string
is 400 (`'$.input' is invalid`); `encoding_format: base64` sends each vector as the base64 of its
little-endian float32 bytes (what the openai SDK asks for by default, and decodes); `dimensions`
sets the length (text-embedding-3-* only, at most the model's own); `usage` counts
`prompt_tokens` = `total_tokens`. The models are `EMBEDDING_DIMENSIONS` (a catalogue of `*`
accepts any name, with 1536 dimensions); a chat model is refused.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections import Counter
from typing import Any

from runner.simulator import validation as v
from runner.simulator.config import ANY_MODEL
from runner.simulator.http import Call, bad_request
from runner.simulator.models import CONTEXT_WINDOWS, check_model
from runner.simulator.replies import count_tokens
from runner.simulator.words import features

EMBEDDING_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
"""OpenAI's embedding models and the length of their vectors."""

SHORTENABLE = ("text-embedding-3-small", "text-embedding-3-large")
"""The models that take `dimensions` (ada-002 does not)."""

DEFAULT_DIMENSIONS = 1536
MAX_INPUT_TOKENS = 8192
"""Tokens one input may hold (OpenAI's limit for these models)."""

_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
)


def embed(bag: Counter[str], dimensions: int) -> list[float]:
    """The unit vector of a bag of features: each hashed to a component and a sign."""
    vector = [0.0] * dimensions
    for feature, count in bag.items():
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:7], "little") % dimensions
        vector[index] += count if digest[7] & 1 else -count
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _inputs(value: Any) -> list[tuple[Counter[str], int]]:
    """Each input's features and tokens; 400 for an empty one (the schema checked the types)."""
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(t, int) for t in items):  # one array of token ids
        items = [items]
    out = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise bad_request(_INVALID_INPUT)
            tokens = count_tokens(item)
            bag = features(item)
        else:
            tokens = len(item)
            bag = Counter(f"#{t}" for t in item)
        if tokens > MAX_INPUT_TOKENS:
            raise bad_request(
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you requested "
                f"{tokens} tokens. Please reduce your prompt; or completion length.",
                "input",
                "context_length_exceeded",
            )
        out.append((bag, tokens))
    return out


def _dimensions(model: str, body: dict[str, Any], any_model: bool) -> int:
    native = EMBEDDING_DIMENSIONS.get(model)
    if native is None:
        if model in CONTEXT_WINDOWS or not any_model:  # a chat model, or not one of ours
            raise bad_request(f"The model `{model}` does not support embeddings.", "model", "invalid_model")
        native = DEFAULT_DIMENSIONS
    wanted = body.get("dimensions")
    if wanted is None:
        return native
    if model in EMBEDDING_DIMENSIONS and model not in SHORTENABLE:
        raise bad_request("This model does not support specifying dimensions.", "dimensions", "invalid_value")
    if wanted > native:
        message = f"Invalid 'dimensions': at most {native} for {model}, got {wanted}."
        raise bad_request(message, "dimensions", "invalid_value")
    return int(wanted)


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


async def create_embeddings(call: Call) -> dict[str, Any]:
    sim = call.sim
    body = await call.body()
    model = check_model(sim.config.models, v.required(body, "model"))
    dimensions = _dimensions(model, body, ANY_MODEL in sim.config.models)
    inputs = _inputs(v.required(body, "input"))
    encoding = str(body.get("encoding_format") or "float")
    tokens = sum(t for _, t in inputs)
    call.charge(tokens, model)
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(embed(bag, dimensions), encoding)}
        for i, (bag, _) in enumerate(inputs)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [("/embeddings", {"POST": create_embeddings})]
