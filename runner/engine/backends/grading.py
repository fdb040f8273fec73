"""The API requests of graders: one structured-output completion (a `judge`), one embeddings call
(a `similar`). Like every backend request they go through the conversation's `Caller`: the same
shared limiter, the same retry layer, counted in its requests.

    complete_json(...)  Chat Completions with `response_format: {type: json_schema, strict}` — or,
                        for a grader with `api: responses`, a Responses call with
                        `text.format: {type: json_schema}` (`store: false`: a grade is not kept)
    embed(...)          `/v1/embeddings`; `EmbeddingsUnavailable` when the server has no such route
"""

from __future__ import annotations

from typing import Any

import openai

from runner.engine.backends.base import EXPECTED_COMPLETION_TOKENS, estimate_tokens, usage_of
from runner.engine.retry import Caller
from runner.errors import BackendError
from runner.records import Usage
from runner.tasks import Api


class EmbeddingsUnavailable(BackendError):
    """The server does not serve `/v1/embeddings` (or not this model): 404, 405 or 501."""


def complete_json(
    client: openai.OpenAI,
    caller: Caller,
    *,
    api: Api,
    model: str,
    system: str,
    user: str,
    schema_name: str,
    schema: dict[str, Any],
    temperature: float | None,
) -> tuple[str, Usage]:
    """One grading request; returns the answer's text (parsed by the caller) and its usage."""
    estimate = estimate_tokens(system, user) + EXPECTED_COMPLETION_TOKENS
    options: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
    if api is Api.RESPONSES:
        fmt = {"type": "json_schema", "name": schema_name, "schema": schema, "strict": True}
        response = caller.call(
            client.responses.create, tokens=estimate, model=model, instructions=system, input=user,
            text={"format": fmt}, store=False, **options,
        )  # fmt: skip
        text, usage = response.output_text or "", usage_of(response.usage)
    else:
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": schema, "strict": True},
        }
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        completion = caller.call(
            client.chat.completions.create, tokens=estimate, model=model, messages=messages,
            response_format=response_format, **options,
        )  # fmt: skip
        if not completion.choices:
            raise BackendError("the grader answered with no choices")
        text, usage = completion.choices[0].message.content or "", usage_of(completion.usage)
    caller.limiter.settle(estimate, usage["total_tokens"] if usage["total_tokens"] is not None else estimate)
    return text, usage


def embed(
    client: openai.OpenAI, caller: Caller, *, model: str, texts: list[str]
) -> tuple[list[list[float]], Usage]:
    """Embeddings of `texts`, in order, and the usage."""
    estimate = estimate_tokens(*texts)
    try:
        result = caller.call(
            client.embeddings.create, tokens=estimate, model=model, input=texts, encoding_format="float"
        )
    except openai.APIStatusError as e:
        if e.status_code in (404, 405, 501):
            raise EmbeddingsUnavailable(f"no embeddings at this server (HTTP {e.status_code})") from None
        raise
    usage = usage_of(result.usage)
    if usage["prompt_tokens"] is not None:  # embeddings generate nothing: no completion, not unknown
        usage["completion_tokens"] = 0
    caller.limiter.settle(estimate, usage["total_tokens"] if usage["total_tokens"] is not None else estimate)
    vectors = [list(d.embedding) for d in sorted(result.data, key=lambda d: d.index)]
    if len(vectors) != len(texts):
        raise BackendError(f"the server sent {len(vectors)} embeddings for {len(texts)} texts")
    return vectors, usage
