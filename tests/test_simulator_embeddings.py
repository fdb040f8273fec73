"""The simulator's `POST /v1/embeddings` through the real openai SDK: strict requests, deterministic
vectors whose cosine follows shared words, float and base64 encodings, `dimensions`, usage."""

# ruff: noqa: E501  (a table of requests and OpenAI's answers reads best one per line)

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import openai
import pytest

from runner.simulator import RunningSimulator

REFERENCE = "Refunds are accepted within 30 days of purchase."
PARAPHRASE = "You can get your refund within 30 days after the purchase."
UNRELATED = "The weather in Paris is sunny today."


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture
def sim(sim_factory: Callable[..., RunningSimulator]) -> RunningSimulator:
    return sim_factory()


def test_simulator_embeddings_rank_a_paraphrase_above_unrelated_text(
    sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    client = openai_client(sim)
    result = client.embeddings.create(
        model="text-embedding-3-small", input=[REFERENCE, PARAPHRASE, UNRELATED], encoding_format="float"
    )
    assert (result.object, result.model) == ("list", "text-embedding-3-small")
    assert [d.index for d in result.data] == [0, 1, 2]
    ref, para, other = (d.embedding for d in result.data)
    assert len(ref) == 1536
    assert all(math.isclose(math.sqrt(cos(v, v)), 1.0) for v in (ref, para, other))  # unit length
    assert cos(ref, para) > 0.5 > cos(ref, other)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0
    again = client.embeddings.create(model="text-embedding-3-small", input=REFERENCE, encoding_format="float")
    assert again.data[0].embedding == ref  # deterministic


def test_simulator_embeddings_base64_is_what_the_sdk_asks_for_and_decodes(
    sim: RunningSimulator,
) -> None:
    # The SDK asks for base64 when no encoding is given and decodes it to floats. (The traffic
    # validator of `openai_client` knows only the float form; the simulator's own audit checks it.)
    with openai.OpenAI(base_url=sim.base_url, api_key="sk-test") as client:
        decoded = client.embeddings.create(model="text-embedding-3-large", input=REFERENCE)
        plain = client.embeddings.create(
            model="text-embedding-3-large", input=REFERENCE, encoding_format="float"
        )
        raw = client.embeddings.with_raw_response.create(
            model="text-embedding-3-large", input=REFERENCE, encoding_format="base64"
        )
    assert len(decoded.data[0].embedding) == 3072
    pairs = zip(decoded.data[0].embedding, plain.data[0].embedding, strict=True)
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in pairs)  # float32 of the same
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)


def test_simulator_embeddings_dimensions_and_token_inputs(
    sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    client = openai_client(sim)
    short = client.embeddings.create(
        model="text-embedding-3-small", input=REFERENCE, dimensions=64, encoding_format="float"
    )
    assert len(short.data[0].embedding) == 64
    tokens = client.embeddings.create(
        model="text-embedding-ada-002", input=[[1, 2, 3], [3, 4]], encoding_format="float"
    )
    a, b = (d.embedding for d in tokens.data)
    assert 0 < cos(a, b) < 1  # one token id in common
    assert tokens.usage.prompt_tokens == 5
    listed = {m.id for m in client.models.list()}
    assert {"text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"} <= listed


ERRORS: list[tuple[str, dict[str, Any], int, str | None, str | None]] = [
    ("unknown-model", {"model": "text-embedding-4"}, 404, "model_not_found", "model"),
    ("chat-model", {"model": "gpt-4o-mini"}, 400, "invalid_model", "model"),
    ("empty-string", {"input": ""}, 400, None, None),
    ("empty-in-array", {"input": ["a", ""]}, 400, None, None),
    ("empty-array", {"input": []}, 400, "empty_array", "input"),
    ("wrong-type", {"input": 5}, 400, "invalid_type", "input"),
    ("bad-encoding", {"encoding_format": "hex"}, 400, "invalid_value", "encoding_format"),
    ("ada-dimensions", {"model": "text-embedding-ada-002", "dimensions": 8}, 400, "invalid_value", "dimensions"),
    ("too-many-dimensions", {"dimensions": 4096}, 400, "invalid_value", "dimensions"),
    ("unknown-parameter", {"truncate": True}, 400, "unknown_parameter", "truncate"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "code", "param"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_simulator_embeddings_errors_are_openais(
    sim: RunningSimulator,
    openai_client: Callable[..., openai.OpenAI],
    body: dict[str, Any],
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    request = {"model": "text-embedding-3-small", "input": "hello", "encoding_format": "float"}
    extra = {k: v for k, v in body.items() if k == "truncate"}
    request.update({k: v for k, v in body.items() if k != "truncate"})
    with pytest.raises(openai.APIStatusError) as e:
        openai_client(sim).embeddings.create(**request, extra_body=extra or None)
    assert (e.value.status_code, e.value.code, e.value.param) == (status, code, param)
    if code is None:  # what OpenAI says of an empty input
        assert e.value.body["message"].startswith("'$.input' is invalid. Please check the API reference")
