"""Generation parameters in each API's request shape.

An assistant's `max_output_tokens`, `top_p`, `seed`, `stop`, `response_format`, `tool_choice`,
`parallel_tool_calls`, `reasoning_effort` and `extra_body` (job-file shape, see `AssistantSpec`)
become the fields that OpenAI's OpenAPI document names for each endpoint:

| job file            | chat                      | assistants (runs)         | responses                  |
|---------------------|---------------------------|---------------------------|----------------------------|
| max_output_tokens   | max_completion_tokens     | max_completion_tokens     | max_output_tokens          |
| response_format     | response_format           | response_format           | text.format                |
|   json_schema       | {type, json_schema: {…}}  | {type, json_schema: {…}}  | {type, name, schema, …}    |
| tool_choice {fn}    | {type, function: {name}}  | {type, function: {name}}  | {type: function, name}     |
| reasoning_effort    | reasoning_effort          | on the assistant object   | reasoning.effort           |
| seed, stop          | seed, stop                | (none)                    | (none)                     |
| top_p, parallel_tool_calls: the same name everywhere; extra_body: the SDK's `extra_body`  |

Runs take no `reasoning_effort` on thread-and-run creates, so on the assistants API it is set on
the assistant itself (`assistant_params`). What an API lacks was refused when the job file was
validated; it is never sent.
"""

from __future__ import annotations

from typing import Any

from runner.tasks import AssistantSpec


def _json_schema(fmt: dict[str, Any]) -> dict[str, Any]:
    """The json_schema options (name, description, schema, strict) as given."""
    return {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}


def _response_format(spec: AssistantSpec) -> dict[str, Any] | None:
    """Chat's and runs' `response_format`: `{type: json_schema, json_schema: {name, schema, …}}`."""
    fmt = spec.response_format
    if fmt is None:
        return None
    if fmt["type"] == "json_schema":
        return {"type": "json_schema", "json_schema": _json_schema(fmt)}
    return {"type": fmt["type"]}


def _common(spec: AssistantSpec, *, cap: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.max_output_tokens is not None:
        out[cap] = spec.max_output_tokens
    if spec.top_p is not None:
        out["top_p"] = spec.top_p
    if spec.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = spec.parallel_tool_calls
    if spec.extra_body:
        out["extra_body"] = dict(spec.extra_body)
    return out


def chat_params(spec: AssistantSpec) -> dict[str, Any]:
    """Fields of `POST /chat/completions` (CreateChatCompletionRequest)."""
    out = _common(spec, cap="max_completion_tokens")
    for name in ("seed", "stop", "tool_choice", "reasoning_effort"):
        value = getattr(spec, name)
        if value is not None:
            out[name] = list(value) if isinstance(value, tuple) else value
    fmt = _response_format(spec)
    if fmt is not None:
        out["response_format"] = fmt
    return out


def run_params(spec: AssistantSpec) -> dict[str, Any]:
    """Fields of a run create, alone or with its thread (CreateRunRequest, CreateThreadAndRunRequest)."""
    out = _common(spec, cap="max_completion_tokens")
    if spec.tool_choice is not None:
        out["tool_choice"] = spec.tool_choice
    fmt = _response_format(spec)
    if fmt is not None:
        out["response_format"] = fmt
    return out


def assistant_params(spec: AssistantSpec) -> dict[str, Any]:
    """Fields of the assistant object itself (CreateAssistantRequest, ModifyAssistantRequest)."""
    return {"reasoning_effort": spec.reasoning_effort} if spec.reasoning_effort is not None else {}


def response_params(spec: AssistantSpec) -> dict[str, Any]:
    """Fields of `POST /responses` (CreateResponse)."""
    out = _common(spec, cap="max_output_tokens")
    choice = spec.tool_choice
    if isinstance(choice, dict):
        out["tool_choice"] = {"type": "function", "name": choice["function"]["name"]}
    elif choice is not None:
        out["tool_choice"] = choice
    fmt = spec.response_format
    if fmt is not None:
        extra = _json_schema(fmt) if fmt["type"] == "json_schema" else {}
        out["text"] = {"format": {"type": fmt["type"], **extra}}
    if spec.reasoning_effort is not None:
        out["reasoning"] = {"effort": spec.reasoning_effort}
    return out
