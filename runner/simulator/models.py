"""The model catalogue: which model names the simulator accepts, their context windows, `/v1/models`.

OpenAI answers an unknown model with 404 `model_not_found`, so the simulator does too; a job that
names `gpt-4o-mimi` fails here as it would in production. `*` in the catalogue accepts any
non-empty name (what `runner run --simulate` uses for arbitrary job files).
"""

from __future__ import annotations

from typing import Any

from runner.simulator.config import ANY_MODEL, DEFAULT_MODELS
from runner.simulator.http import APIError, Call

CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "gpt-3.5-turbo": 16_385,
    "text-embedding-3-small": 8_192,
    "text-embedding-3-large": 8_192,
    "text-embedding-ada-002": 8_192,
}
"""Tokens a request may hold per model (OpenAI's model pages); other names get the default."""

DEFAULT_CONTEXT_WINDOW = 128_000

MODEL_CREATED = 1_715_367_049
"""`created` of every listed model: a fixed date, so answers are the same on every run."""


def context_window(model: str) -> int:
    """The context window of `model`, by its longest known prefix (`gpt-4o-2024-08-06` → gpt-4o)."""
    best = ""
    for name in CONTEXT_WINDOWS:
        if (model == name or model.startswith(name + "-")) and len(name) > len(best):
            best = name
    return CONTEXT_WINDOWS[best] if best else DEFAULT_CONTEXT_WINDOW


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def check_model(models: tuple[str, ...], model: Any) -> str:
    """`model` if the catalogue has it, else 404 `model_not_found` (the empty name never exists)."""
    if not isinstance(model, str) or not model:
        raise model_not_found(model if isinstance(model, str) else str(model))
    if model in models or (ANY_MODEL in models):
        return model
    raise model_not_found(model)


def check_context(model: str, tokens: int, param: str, chat: bool) -> None:
    """400 `context_length_exceeded` when the prompt alone does not fit the model's window."""
    window = context_window(model)
    if tokens <= window:
        return
    message = (
        f"This model's maximum context length is {window} tokens. However, your messages resulted in "
        f"{tokens} tokens. Please reduce the length of the messages."
        if chat
        else "Your input exceeds the context window of this model. Please adjust your input and try again."
    )
    raise APIError(400, message, param=param, code="context_length_exceeded")


def _listed(models: tuple[str, ...]) -> list[str]:
    named = [m for m in models if m != ANY_MODEL]
    return named or list(DEFAULT_MODELS)


def _model(name: str) -> dict[str, Any]:
    owner = "openai" if name in CONTEXT_WINDOWS else "system"
    return {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": owner}


async def list_models(call: Call) -> dict[str, Any]:
    return {"object": "list", "data": [_model(m) for m in _listed(call.sim.config.models)]}


async def get_model(call: Call) -> dict[str, Any]:
    return _model(check_model(call.sim.config.models, call.param("model")))


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [("/models", {"GET": list_models}), ("/models/{model}", {"GET": get_model})]
