"""Conversation tasks: the internal, fully expanded unit of work.

`runner.jobs.models` turns a job file into these (vars substituted, dataset rows, matrix combinations
and repeats expanded); backends, workers and the queue consume them. They cross Redis as JSON
(`model_dump(mode="json")` / `model_validate`), so they hold no secrets and no Python objects.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class Api(StrEnum):
    ASSISTANTS = "assistants"
    RESPONSES = "responses"
    CHAT = "chat"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AssistantSpec(_Frozen):
    """An assistant as the job describes it; `id` is set when the job names an existing one."""

    key: str
    name: str
    model: str
    id: str | None = None
    instructions: str | None = None
    temperature: float | None = None
    tools: tuple[dict[str, Any], ...] = ()
    # Generation parameters, in the job file's shape; each backend maps them to its API's fields
    # (`runner.engine.backends.params`). None: not sent, the server's default applies.
    max_output_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None  # {type, name, description, schema, strict}
    tool_choice: str | dict[str, Any] | None = None  # none|auto|required|{type: function, function: {name}}
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    extra_body: dict[str, Any] = {}
    adopt: bool = False  # take over (update and mark) a same-named assistant the runner did not create


class CheckSpec(_Frozen):
    """One `expect:` item, its value already rendered with the conversation's vars."""

    type: str
    value: Any = None


class GraderSpec(_Frozen):
    """The job's `grader:` as a conversation needs it: the model and API that run `judge` checks,
    the embeddings model of `similar` checks, the prompt template (None: the built-in one)."""

    model: str
    api: Api = Api.CHAT
    temperature: float | None = None
    prompt: str | None = None
    embedding_model: str = "text-embedding-3-small"


class ToolOutputRule(_Frozen):
    """A function's output that depends on the call's arguments (`runner.jobs.tooloutputs`): by the
    value of one argument (`by`, `outputs` by value as text, `default`), or computed by a python
    function (`python`: the function as `runner.jobs.pychecks.resolve` describes it)."""

    by: str | None = None
    outputs: dict[str, str] = {}
    default: str | None = None
    python: dict[str, Any] | None = None


class TurnSpec(_Frozen):
    user: str
    expect: tuple[CheckSpec, ...] = ()


class Limits(_Frozen):
    """The job's `limits:`; shared by every worker on the same Redis."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrency: int | None = None  # None: no cap of the job's own (the workers' and the limits decide)
    run_timeout_s: float = 120.0
    max_attempts: int = 4


class ConversationTask(_Frozen):
    """One conversation to carry out, exactly once per batch."""

    conversation_id: str  # stable: "<job>/<conversation>[#<k>=<v>...]#r<repeat>"
    job: str
    api: Api
    model: str
    assistant: AssistantSpec
    vars: dict[str, Any] = {}
    matrix: dict[str, Any] = {}
    turns: tuple[TurnSpec, ...]
    tool_outputs: dict[str, str | ToolOutputRule] = {}  # by function name: canned, or by arguments
    limits: Limits = Limits()
    repeat_index: int = 0
    expect: tuple[CheckSpec, ...] = ()  # conversation-level checks, after the last turn
    grader: GraderSpec | None = None  # set when a check needs a model (judge, similar)
