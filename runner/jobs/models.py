"""Job files (version 1): the pydantic models of what a job file may say, and its output path.

`runner.jobs.loader.load_job` validates a file against these models (errors as
`PATH:LINE: where.in.file: what is wrong`); `runner.jobs.expansion` checks across keys and expands
it into `ConversationTask`s: conversation × dataset row × matrix combination (sorted keys) ×
repeat, in file order, with stable ids like `refund-bot/refund-basic#model=gpt-4o-mini#r0`.

Decisions beyond the contract:
- `{{var}}` values come from the conversation's `vars`, then its dataset row, then matrix keys
  other than `MATRIX_KEYS` (model, api, temperature and the generation parameters; later ones
  win). Only user turns and check values are rendered (strings, also inside mappings/lists),
  never instructions.
- Generation parameters (`max_output_tokens`, `seed`, …) are checked against every API the job
  runs on (`runner.jobs.validation`): an API without the parameter is an error at its line.
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
from typing import Any, Literal, get_args

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
from runner.jobs.tooloutputs import value_schema as tool_output_schema
from runner.jobs.yamlload import suggest
from runner.simulator.rules import SimulatorRules
from runner.tasks import Api, ConversationTask, Limits

NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
OUTPUT_PLACEHOLDERS = ("name", "batch", "date", "time")
DEFAULT_OUTPUT = "runs/{name}/{batch}.jsonl"
GENERATION_MATRIX_KEYS = ("max_output_tokens", "top_p", "seed", "reasoning_effort")
"""Generation parameters a matrix may vary (they override the assistant's)."""
MATRIX_KEYS = ("model", "api", "temperature", *GENERATION_MATRIX_KEYS)
"""Matrix keys with a meaning of their own; any other matrix key is a variable."""
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
REASONING_EFFORTS: tuple[str, ...] = get_args(ReasoningEffort)
SEED_RANGE = (-(2**63), 2**63 - 1)

EXTRA_BODY_OWN = {
    **{k: k for k in ("temperature", "tools", "instructions", "model", *GENERATION_MATRIX_KEYS)},
    **{k: k for k in ("stop", "response_format", "tool_choice", "parallel_tool_calls")},
    "max_completion_tokens": "max_output_tokens",
    "reasoning": "reasoning_effort",
    "text": "response_format",
}
"""Request fields an assistant sets with a key of its own (field → key), so not in `extra_body`."""
EXTRA_BODY_RUNNER = frozenset(
    {"messages", "input", "conversation", "previous_response_id", "stream", "stream_options", "background",
     "metadata", "assistant_id", "thread", "additional_messages", "tool_outputs"}
)  # fmt: skip
"""Request fields the runner itself sends (a conversation would break if overridden)."""

Loc = tuple[str | int, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_schema(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """`v` if it is a valid JSON Schema (or None); a ValueError saying why not otherwise."""
    try:
        v is None or jsonschema.validators.validator_for(v).check_schema(v)
    except jsonschema.exceptions.SchemaError as e:
        raise ValueError(f"invalid JSON Schema: {e.message[:200]}") from None
    return v


class FunctionDef(_Model):
    """An OpenAI function tool's `function:` part."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Function name (letters, digits, _ -).")
    description: str | None = Field(None, description="What the function does, for the model.")
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments.")
    strict: bool | None = Field(None, description="Ask for strict schema adherence.")

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_schema(v)


class Tool(_Model):
    """A tool in the OpenAI shape: `{type: function, function: {name, parameters}}`."""

    type: Literal["function", "code_interpreter", "file_search"] = Field(description="Tool type.")
    function: FunctionDef | None = Field(None, description="Required when type is function.")

    @model_validator(mode="after")
    def _function_iff(self) -> Tool:
        if (self.type == "function") != (self.function is not None):
            raise ValueError("a function tool needs `function:`; other tool types take none")
        return self


class ResponseFormat(_Model):
    """Structured output: `{type: json_schema, name, schema, strict}` (or `json_object`, `text`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["json_schema", "json_object", "text"] = Field(description="Output format.")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="json_schema: its name (letters, digits, _ -)."
    )
    description: str | None = Field(None, description="json_schema: what the format is for, for the model.")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="json_schema: the JSON Schema.")
    strict: bool | None = Field(None, description="json_schema: ask for strict schema adherence.")

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_schema(v)

    @model_validator(mode="after")
    def _fields_of_type(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a json_schema response_format needs `name` and `schema`")
        options = (self.name, self.description, self.schema_, self.strict)
        if self.type != "json_schema" and options != (None,) * 4:
            raise ValueError(f"a {self.type} response_format takes no name, description, schema or strict")
        return self


class FunctionChoice(_Model):
    """`{type: function, function: {name}}`: the model must call this function."""

    class Name(_Model):
        name: str = Field(description="A function tool of this assistant.")

    type: Literal["function"] = Field(description="Always function.")
    function: Name = Field(description="The function to call.")


class Assistant(_Model):
    """An assistant the conversations talk to."""

    name: str | None = Field(None, description="Display name (default: the key).")
    id: str | None = Field(None, description="Use this existing assistant; never create or update it.")
    instructions: str | None = Field(None, description="System instructions.")
    model: str | None = Field(None, min_length=1, description="Model (default: the job's `model`).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature, 0-2.")
    tools: tuple[Tool, ...] = Field((), description="Tools, OpenAI function-tool shape.")
    max_output_tokens: int | None = Field(
        None,
        gt=0,
        description="Cap on generated tokens per reply: `max_completion_tokens` on chat and runs (the "
        "assistants API wants at least 256), `max_output_tokens` on responses (at least 16).",
    )
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling, 0-1.")
    seed: int | None = Field(
        None, ge=SEED_RANGE[0], le=SEED_RANGE[1], description="Sampling seed (chat only)."
    )
    stop: str | tuple[str, ...] | None = Field(
        None, description="Up to 4 stop sequences (chat only: the other APIs have none)."
    )
    response_format: ResponseFormat | None = Field(None, description="Structured output.")
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = Field(
        None, description="none, auto, required, or `{type: function, function: {name}}`."
    )
    parallel_tool_calls: bool | None = Field(None, description="Allow several tool calls in one reply.")
    reasoning_effort: ReasoningEffort | None = Field(
        None, description="Reasoning models: " + ", ".join(REASONING_EFFORTS) + "."
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Server-specific fields merged into every generation request (e.g. llama.cpp's "
        "`max_tokens`, vLLM's `top_k`).",
    )

    adopt: bool = Field(
        False,
        description="Take over a same-named assistant the runner did not create: update it to this"
        " definition and mark it as this job's (without it, such an assistant stops the run).",
    )

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        items = (v,) if isinstance(v, str) else v or ()
        if v is not None and not 1 <= len(items) <= 4:
            raise ValueError(f"list 1 to 4 stop sequences, got {len(items)}")
        if any(not s for s in items):
            raise ValueError("a stop sequence is a non-empty string")
        return v

    @field_validator("extra_body")
    @classmethod
    def _extra_body(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key in EXTRA_BODY_OWN:
                own = EXTRA_BODY_OWN[key]
                raise ValueError(f"{key!r} has a key of its own: set `{own}:` on the assistant")
            if key in EXTRA_BODY_RUNNER:
                raise ValueError(f"{key!r} is sent by the runner itself and cannot be overridden")
        return v

    def generation(self) -> dict[str, Any]:
        """The generation parameters as `AssistantSpec` fields (JSON-shaped, unset ones left out)."""
        data = self.model_dump(
            mode="json", by_alias=True, exclude_none=True, include=set(GENERATION_FIELDS)
        )
        return data


GENERATION_FIELDS = (
    "max_output_tokens", "top_p", "seed", "stop", "response_format", "tool_choice", "parallel_tool_calls",
    "reasoning_effort", "extra_body",
)  # fmt: skip


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
        description="Outputs of function tools by function name: a string, data sent as JSON, "
        "`{by: argument, outputs: {value: output}, default}` (by the call's arguments), or "
        "`{python: file.py:function}` (computed from them).",
        json_schema_extra=lambda schema: schema.update(additionalProperties=tool_output_schema()),
    )
    turns: tuple[Turn, ...] = Field(min_length=1, description="The user turns, in order.")
    expect: tuple[Check, ...] = Field(
        (),
        description="Checks on the whole conversation, after its last turn: content checks see every reply, "
        "`tool_called` any turn's calls, `max_total_tokens` the total, `judge` the whole transcript.",
    )

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
        "max_output_tokens": _values({"type": "integer", "minimum": 1}, "Output token caps (override)."),
        "top_p": _values({"type": "number", "minimum": 0, "maximum": 1}, "top_p values (override)."),
        "seed": _values({"type": "integer"}, "Seeds (override; chat only)."),
        "reasoning_effort": _values({"enum": list(REASONING_EFFORTS)}, "Reasoning efforts (override)."),
    },
    "propertyNames": {"pattern": VAR_PATTERN},
    "additionalProperties": _values({"type": ["string", "number", "boolean"]}, "Values of a variable."),
}


GRADER_VARIABLES = ("rubric", "user", "reply", "conversation", "vars")
"""What a `grader.prompt` template may use; the answer format is always appended by the runner."""


class Grader(_Model):
    """The model that runs `judge` checks (and the embeddings of `similar` checks)."""

    model: str | None = Field(None, min_length=1, description="Grading model (default: the conversation's).")
    api: Literal["chat", "responses"] | None = Field(
        None, description="`chat` or `responses` (default: responses for a responses job, else chat)."
    )
    temperature: float | None = Field(0, ge=0, le=2, description="Sampling temperature of the grader (0).")
    prompt: str | None = Field(
        None,
        min_length=1,
        description="Prompt template; variables: {{rubric}} {{user}} {{reply}} {{conversation}} {{vars}} and "
        "each var by name. The answer format (JSON) is always appended.",
    )
    embedding_model: str = Field(
        "text-embedding-3-small", min_length=1, description="Embeddings model of `similar` checks."
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None) -> str | None:
        if v is not None and "rubric" not in TEMPLATE.findall(v):
            raise ValueError("a grader prompt must use {{rubric}} (and {{reply}} or {{conversation}})")
        return v
BATCH_API_ASSISTANTS = (
    "the Assistants API has no batch endpoint: batch_api needs `api: chat` or `api: responses`"
)


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
        description="Run every conversation once per combination. Keys: `model`, `api`, `temperature`, "
        "`max_output_tokens`, `top_p`, `seed`, `reasoning_effort`, or any variable name (its values then "
        "fill `{{name}}` like a var).",
        json_schema_extra=_MATRIX_SCHEMA,
    )
    repeat: int = Field(1, ge=1, le=10_000, description="Runs of every conversation (flakiness, pass@k).")
    limits: JobLimits = Field(default_factory=JobLimits, description="Rate limits and timeouts.")
    output: str = Field(DEFAULT_OUTPUT, description="JSONL path; placeholders {name} {batch} {date} {time}.")
    schedule: str | None = Field(None, description="Cron expression, used by `runner schedule`.")
    simulator: SimulatorRules | None = Field(None, description="How the built-in simulator answers.")
    grader: Grader | None = Field(None, description="The model grading `judge` checks (default: the job's).")
    batch_api: bool = Field(
        False,
        description="Send the conversations through the provider's Batch API (chat and responses only): "
        "half the price, results within 24 hours.",
    )

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

    @field_validator("batch_api")
    @classmethod
    def _batch_api(cls, v: bool, info: Any) -> bool:
        api, matrix = info.data.get("api"), info.data.get("matrix") or {}
        if v and (Api.ASSISTANTS in matrix.get("api", [api]) or "assistants" in matrix.get("api", [])):
            raise ValueError(BATCH_API_ASSISTANTS)
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
