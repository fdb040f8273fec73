"""Job files (version 1): the pydantic models of what a job file may say, and its output path.

`runner.jobs.loader.load_job` validates a file against these models (errors as
`PATH:LINE: where.in.file: what is wrong`); `runner.jobs.expansion` checks across keys and expands
it into `ConversationTask`s: conversation × dataset row × matrix combination (sorted keys) ×
repeat, in file order, with stable ids like `refund-bot/refund-basic#model=gpt-4o-mini#r0`.

Decisions beyond the contract:
- `{{var}}` values come from the conversation's `vars`, then its dataset row, then matrix keys
  other than `model`/`api`/`temperature` (later ones win). Only user turns and check values are
  rendered (strings, also inside mappings/lists), never instructions.
- A `tool_outputs` key naming no function tool of the conversation's assistant is an error (a
  typo would leave the run without an output); not checked for an assistant with `id` and no
  `tools`, whose tools live on the server.
- An assistant with `id` may carry instructions/temperature too: the responses and chat APIs need
  them. With `api: assistants` only they go unused, which is a warning, not an error.
"""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from runner.errors import Problem
from runner.jobs.checks import Check
from runner.jobs.cron import cron_problem
from runner.jobs.datasets import Row
from runner.jobs.yamlload import suggest
from runner.simulator.rules import SimulatorRules
from runner.tasks import Api, ConversationTask, Limits

NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
OUTPUT_PLACEHOLDERS = ("name", "batch", "date", "time")
DEFAULT_OUTPUT = "runs/{name}/{batch}.jsonl"
MATRIX_KEYS = ("model", "api", "temperature")
"""Matrix keys with a meaning of their own; any other matrix key is a variable."""

Loc = tuple[str | int, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FunctionDef(_Model):
    """An OpenAI function tool's `function:` part."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Function name (letters, digits, _ -).")
    description: str | None = Field(None, description="What the function does, for the model.")
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments.")
    strict: bool | None = Field(None, description="Ask for strict schema adherence.")

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            v is None or jsonschema.validators.validator_for(v).check_schema(v)
        except jsonschema.exceptions.SchemaError as e:
            raise ValueError(f"invalid JSON Schema: {e.message[:200]}") from None
        return v


class Tool(_Model):
    """A tool in the OpenAI shape: `{type: function, function: {name, parameters}}`."""

    type: Literal["function", "code_interpreter", "file_search"] = Field(description="Tool type.")
    function: FunctionDef | None = Field(None, description="Required when type is function.")

    @model_validator(mode="after")
    def _function_iff(self) -> Tool:
        if (self.type == "function") != (self.function is not None):
            raise ValueError("a function tool needs `function:`; other tool types take none")
        return self


class Assistant(_Model):
    """An assistant the conversations talk to."""

    name: str | None = Field(None, description="Display name (default: the key).")
    id: str | None = Field(None, description="Use this existing assistant; never create or update it.")
    instructions: str | None = Field(None, description="System instructions.")
    model: str | None = Field(None, min_length=1, description="Model (default: the job's `model`).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature, 0-2.")
    tools: tuple[Tool, ...] = Field((), description="Tools, OpenAI function-tool shape.")


class Turn(_Model):
    """One user message, and the checks on the assistant's reply to it."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    user: str = Field(min_length=1, description="The user's message; `{{var}}` is replaced.")
    expect: tuple[Check, ...] = Field((), description="Checks on the reply; `{{var}}` is replaced.")


class Conversation(_Model):
    """A script of user turns sent to one assistant."""

    id: str = Field(description="Unique in the file; part of the conversation id (no `#` or `/`).")
    assistant: str | None = Field(None, description="Key under `assistants` (optional if only one).")
    vars: dict[str, Any] = Field(
        default_factory=dict, description="Values for `{{var}}` in turns and checks."
    )
    dataset: str | None = Field(
        None,
        description="A .jsonl, .csv or .yaml file (relative to this file), one conversation per row; a row's "
        "keys are vars, its `id` (or row number) extends the conversation id.",
    )
    tool_outputs: dict[str, Any] = Field(
        default_factory=dict,
        description="Canned outputs of function tools by function name: a string, or data sent as JSON.",
    )
    turns: tuple[Turn, ...] = Field(min_length=1, description="The user turns, in order.")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not v.strip() or v != v.strip() or "#" in v or "/" in v:
            raise ValueError(
                f"a conversation id must be non-empty, without surrounding spaces, '#' or '/', got {v!r}"
            )
        return v


_LIMITS = {name: f.default for name, f in Limits.model_fields.items()}


class JobLimits(Limits):
    """The job's `limits:` (a `runner.tasks.Limits`), shared by every worker on the same Redis."""

    requests_per_minute: int | None = Field(
        None, gt=0, description="This job's cap on requests per minute (none: the server's limit, learned)."
    )
    tokens_per_minute: int | None = Field(
        None, gt=0, description="This job's cap on tokens per minute (none: the server's limit, learned)."
    )
    concurrency: int | None = Field(
        None, gt=0, description="Conversations of this job in flight at most (none: as the limits allow)."
    )
    run_timeout_s: float = Field(_LIMITS["run_timeout_s"], gt=0, description="A longer run is cancelled.")
    max_attempts: int = Field(
        _LIMITS["max_attempts"], gt=0, description="Tries per API call (retryable errors)."
    )


def _values(items: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": 1, "description": description}


_MATRIX_SCHEMA: dict[str, Any] = {
    "properties": {
        "model": _values({"type": "string"}, "Models to run."),
        "api": _values({"enum": [a.value for a in Api]}, "APIs to run on."),
        "temperature": _values({"type": "number", "minimum": 0, "maximum": 2}, "Temperatures (override)."),
    },
    "propertyNames": {"pattern": VAR_PATTERN},
    "additionalProperties": _values({"type": ["string", "number", "boolean"]}, "Values of a variable."),
}


class Job(_Model):
    """A job file, version 1."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="assistant-runner job file",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1] | None = Field(None, description="Job file format version (only 1).")
    name: str = Field(
        description="Job name: letters, digits, . _ -", json_schema_extra={"pattern": NAME_PATTERN}
    )
    description: str | None = Field(None, description="Free text about the job.")
    api: Api = Field(Api.ASSISTANTS, description="Wire protocol: assistants, responses or chat.")
    model: str | None = Field(None, min_length=1, description="Default model for assistants naming none.")
    assistants: dict[str, Assistant] = Field(min_length=1, description="The assistants, by key.")
    conversations: tuple[Conversation, ...] = Field(min_length=1, description="Scripts of user turns.")
    matrix: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Run every conversation once per combination. Keys: `model`, `api`, `temperature`, or "
        "any variable name (its values then fill `{{name}}` like a var).",
        json_schema_extra=_MATRIX_SCHEMA,
    )
    repeat: int = Field(1, ge=1, le=10_000, description="Runs of every conversation (flakiness, pass@k).")
    limits: JobLimits = Field(default_factory=JobLimits, description="Rate limits and timeouts.")
    output: str = Field(DEFAULT_OUTPUT, description="JSONL path; placeholders {name} {batch} {date} {time}.")
    schedule: str | None = Field(None, description="Cron expression, used by `runner schedule`.")
    simulator: SimulatorRules | None = Field(None, description="How the built-in simulator answers.")

    _source: Path = PrivateAttr(default_factory=Path)
    _digest: str = PrivateAttr("")
    _datasets: dict[int, tuple[str, list[Row]]] | None = PrivateAttr(None)
    _tasks: list[ConversationTask] | None = PrivateAttr(None)
    _warnings: list[Problem] = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(NAME_PATTERN, v) or set(v) == {"."}:
            raise ValueError(f"a job name uses only letters, digits, '.', '_' and '-', got {v!r}")
        return v

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        problem = output_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        problem = None if v is None else cron_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @property
    def source(self) -> Path:
        """The job file this was loaded from (datasets are relative to its folder)."""
        return self._source

    @property
    def digest(self) -> str:
        """sha256 hex of the job file's bytes and its datasets' bytes."""
        return self._digest

    @property
    def warnings(self) -> list[Problem]:
        """Allowed but probably not meant (`runner validate` prints them)."""
        return list(self._warnings)


def output_problem(template: str) -> str | None:
    """Why `template` is not a valid `output`, or None."""
    allowed = "allowed: " + " ".join(f"{{{p}}}" for p in OUTPUT_PLACEHOLDERS)
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"invalid output template {template!r}: {e} (write {{{{ or }}}} for a literal brace)"
    for _, name, spec, conversion in fields:
        if name is not None and name not in OUTPUT_PLACEHOLDERS:
            return f"unknown placeholder {{{name}}} in output{suggest(name, OUTPUT_PLACEHOLDERS)}; {allowed}"
        if spec or conversion:
            return f"placeholder {{{name}}} takes no format spec or conversion; {allowed}"
    return None


def render_output(template: str, *, name: str, batch: str, now: datetime) -> Path:
    """The output path: {date} is YYYY-MM-DD and {time} HHMMSS, in UTC (a naive `now` is UTC)."""
    utc = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    date, time = utc.strftime("%Y-%m-%d"), utc.strftime("%H%M%S")
    return Path(template.format(name=name, batch=batch, date=date, time=time))
