"""Job files (version 1): the pydantic models, validation with line numbers, and expansion into tasks.

`load_job(path)` reads a job file (via `runner.yamlload`), validates it completely, loads its
datasets and expands it once, so every problem of the file (and of its datasets) is reported
together as one `JobFileError`, each `PATH:LINE: where.in.file: what is wrong`. `expand(job)`
then returns the `ConversationTask`s: one per conversation × dataset row × matrix combination ×
repeat, with stable ids like `refund-bot/refund-basic#model=gpt-4o-mini#r0`.

Decisions beyond the contract:
- `{{var}}` values come from the conversation's `vars`, then its dataset row, then matrix keys
  other than `model`/`api`/`temperature` (later ones win). Only user turns and check values are
  rendered, never instructions.
- A `tool_outputs` key that names no function tool of the conversation's assistant is an error
  (a typo would leave the run waiting for an output); skipped when the assistant has an `id` and
  lists no tools, since its tools live on the server.
- An assistant with `id` may still carry instructions/tools/temperature: the responses and chat
  backends need them. With `api: assistants` they are unused, which is reported as a warning.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jsonschema
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator
from pydantic import model_validator as _model_validator
from pydantic.json_schema import SkipJsonSchema

from runner.checks import CHECK_TYPES, check_value_problem
from runner.errors import JobFileError, Problem
from runner.simulator.rules import SimulatorRules
from runner.tasks import Api, AssistantSpec, CheckSpec, ConversationTask, Limits, TurnSpec
from runner.yamlload import (
    DATASET_SUFFIXES,
    MAX_YAML_BYTES,
    Locator,
    Row,
    YAMLProblems,
    decode,
    load_yaml,
    model_at,
    problems_from,
    read_bytes,
    read_dataset,
    suggest,
    where,
)

NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
OUTPUT_PLACEHOLDERS = ("name", "batch", "date", "time")
DEFAULT_OUTPUT = "runs/{name}/{batch}.jsonl"
MATRIX_KEYS = ("model", "api", "temperature")
"""Matrix keys with a meaning of their own; any other matrix key is a variable."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FunctionDef(_Model):
    """An OpenAI function tool's `function:` part."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Function name (letters, digits, _ -).")
    description: str | None = Field(default=None, description="What the function does, for the model.")
    parameters: dict[str, Any] | None = Field(default=None, description="JSON Schema of the arguments.")
    strict: bool | None = Field(default=None, description="Ask for strict schema adherence.")

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            try:
                jsonschema.validators.validator_for(v).check_schema(v)
            except jsonschema.exceptions.SchemaError as e:
                raise ValueError(f"invalid JSON Schema: {e.message[:200]}") from None
        return v


class Tool(_Model):
    """A tool in the OpenAI shape: `{type: function, function: {name, parameters}}`."""

    type: Literal["function", "code_interpreter", "file_search"] = Field(description="Tool type.")
    function: FunctionDef | None = Field(default=None, description="Required when type is function.")

    @_model_validator(mode="after")
    def _function_iff(self) -> Tool:
        if (self.type == "function") != (self.function is not None):
            raise ValueError("a function tool needs `function:`; other tool types take none")
        return self


class Assistant(_Model):
    """An assistant the conversations talk to."""

    name: str | None = Field(default=None, description="Display name (default: the key).")
    id: str | None = Field(
        default=None, description="Use this existing assistant; do not create or update it."
    )
    instructions: str | None = Field(default=None, description="System instructions.")
    model: str | None = Field(default=None, min_length=1, description="Model (default: the job's `model`).")
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature, 0-2.")
    tools: tuple[Tool, ...] = Field(default=(), description="Tools, OpenAI function-tool shape.")


class _CheckBase(_Model):
    """One `expect:` item: exactly one `type: value` pair."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,
        json_schema_extra={"minProperties": 1, "maxProperties": 1},
    )

    @_model_validator(mode="before")
    @classmethod
    def _one(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) != 1 and all(k in CHECK_TYPES for k in data):
            if not data:
                raise ValueError(f"empty check; give one of: {', '.join(CHECK_TYPES)}")
            raise ValueError(
                f"one check per item, got {', '.join(data)}; write each as its own `- type: value`"
            )
        return data

    @_model_validator(mode="after")
    def _value(self) -> _CheckBase:
        (type_,) = self.model_fields_set
        value = getattr(self, type_)
        if value is None:
            raise ValueError(f"{type_} needs a value")
        problem = check_value_problem(type_, value)
        if problem:
            raise ValueError(problem)
        return self

    def spec(self) -> CheckSpec:
        (type_,) = self.model_fields_set
        return CheckSpec.model_construct(type=type_, value=getattr(self, type_))


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # a check's value has no default: the key is the check


if TYPE_CHECKING:
    Check = _CheckBase
else:
    Check = create_model(
        "Check",
        __base__=_CheckBase,
        __doc__="One check on the assistant's reply to this turn: exactly one `type: value` pair.",
        **{
            name: (
                t.annotation | SkipJsonSchema[None],
                Field(default=None, description=t.description, json_schema_extra=_no_default),
            )
            for name, t in CHECK_TYPES.items()
        },
    )


class Turn(_Model):
    """One user message, and the checks on the assistant's reply to it."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    user: str = Field(min_length=1, description="The user's message; `{{var}}` is replaced.")
    expect: tuple[Check, ...] = Field(default=(), description="Checks on the reply (`{{var}}` is replaced).")


class Conversation(_Model):
    """A script of user turns sent to one assistant."""

    id: str = Field(description="Unique in the file; part of the stable conversation id (no `#` or `/`).")
    assistant: str | None = Field(default=None, description="Key under `assistants` (optional if only one).")
    vars: dict[str, Any] = Field(
        default_factory=dict, description="Values for `{{var}}` in turns and checks."
    )
    dataset: str | None = Field(
        default=None,
        description="A .jsonl, .csv or .yaml file (relative to this file): one conversation per row; a row's keys "
        "are vars, its `id` (or row number) extends the conversation id.",
    )
    tool_outputs: dict[str, Any] = Field(
        default_factory=dict,
        description="Canned outputs of function tools, by function name (a string, or a mapping/list sent as JSON).",
        json_schema_extra={
            "additionalProperties": {"type": ["string", "number", "boolean", "object", "array"]}
        },
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


_LIMIT_DEFAULTS = {name: f.default for name, f in Limits.model_fields.items()}


class JobLimits(Limits):
    """The job's `limits:` (a `runner.tasks.Limits`), shared by every worker on the same Redis."""

    requests_per_minute: int | None = Field(
        default=None, gt=0, description="Requests per minute (none: no limit)."
    )
    tokens_per_minute: int | None = Field(
        default=None, gt=0, description="Tokens per minute (none: no limit)."
    )
    concurrency: int = Field(
        default=_LIMIT_DEFAULTS["concurrency"], gt=0, description="Conversations in flight."
    )
    run_timeout_s: float = Field(
        default=_LIMIT_DEFAULTS["run_timeout_s"],
        gt=0,
        description="A run active longer is cancelled and recorded.",
    )
    max_attempts: int = Field(
        default=_LIMIT_DEFAULTS["max_attempts"], gt=0, description="Tries per API call."
    )


_SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean"]}
_MATRIX_SCHEMA: dict[str, Any] = {
    "properties": {
        "model": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "Models to run.",
        },
        "api": {
            "type": "array",
            "items": {"enum": [a.value for a in Api]},
            "minItems": 1,
            "description": "APIs.",
        },
        "temperature": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 2},
            "minItems": 1,
            "description": "Temperatures (override the assistants').",
        },
    },
    "propertyNames": {"pattern": VAR_PATTERN},
    "additionalProperties": {"type": "array", "items": _SCALAR_SCHEMA, "minItems": 1},
}


class Job(_Model):
    """A job file, version 1."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="assistant-runner job file",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1] | None = Field(default=None, description="Job file format version (only 1).")
    name: str = Field(
        description="Job name: letters, digits, . _ -", json_schema_extra={"pattern": NAME_PATTERN}
    )
    description: str | None = Field(default=None, description="Free text about the job.")
    api: Api = Field(default=Api.ASSISTANTS, description="Wire protocol: assistants, responses or chat.")
    model: str | None = Field(
        default=None, min_length=1, description="Default model for assistants naming none."
    )
    assistants: dict[str, Assistant] = Field(min_length=1, description="The assistants, by key.")
    conversations: tuple[Conversation, ...] = Field(min_length=1, description="Scripts of user turns.")
    matrix: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Run every conversation once per combination. Keys: `model`, `api`, `temperature`, or any "
        "variable name (its values then fill `{{name}}` like a var).",
        json_schema_extra=_MATRIX_SCHEMA,
    )
    repeat: int = Field(
        default=1, ge=1, le=10_000, description="Runs of every conversation (flakiness, pass@k)."
    )
    limits: JobLimits = Field(default_factory=JobLimits, description="Rate limits and timeouts.")
    output: str = Field(
        default=DEFAULT_OUTPUT, description="JSONL path template; placeholders {name} {batch} {date} {time}."
    )
    schedule: str | None = Field(default=None, description="Cron expression, used by `runner schedule`.")
    simulator: SimulatorRules | None = Field(default=None, description="How the built-in simulator answers.")

    _source: Path = PrivateAttr(default_factory=Path)
    _digest: str = PrivateAttr(default="")
    _datasets: dict[int, tuple[str, list[Row]]] | None = PrivateAttr(default=None)
    _tasks: list[ConversationTask] | None = PrivateAttr(default=None)
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
        if v is not None:
            try:
                croniter(v)
            except (ValueError, KeyError) as e:
                raise ValueError(f"invalid cron expression {v!r}: {e}") from None
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
        """Things that are allowed but probably not meant (printed by `runner validate`)."""
        return list(self._warnings)


def output_problem(template: str) -> str | None:
    """Why `template` is not a valid `output`, or None."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"invalid output template {template!r}: {e} (write {{{{ or }}}} for a literal brace)"
    allowed = " ".join(f"{{{p}}}" for p in OUTPUT_PLACEHOLDERS)
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in OUTPUT_PLACEHOLDERS:
            return f"unknown placeholder {{{name}}} in output{suggest(name, OUTPUT_PLACEHOLDERS)}; allowed: {allowed}"
        if spec or conversion:
            return f"placeholder {{{name}}} takes no format spec or conversion; allowed: {allowed}"
    return None


def render_output(template: str, *, name: str, batch: str, now: datetime) -> Path:
    """The output path: {date} is YYYY-MM-DD and {time} HHMMSS, in UTC (naive `now` counts as UTC)."""
    utc = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return Path(
        template.format(name=name, batch=batch, date=utc.strftime("%Y-%m-%d"), time=utc.strftime("%H%M%S"))
    )


def load_job(path: str | Path) -> Job:
    """Read, validate and expand a job file; raises JobFileError holding every problem found."""
    source = Path(path)
    shown = str(path)
    try:
        raw = read_bytes(source, shown, MAX_YAML_BYTES, "job file")
        data, loc = load_yaml(decode(raw, shown), shown)
    except YAMLProblems as e:
        raise JobFileError(e.problems) from None
    if not isinstance(data, dict):
        raise JobFileError([loc.at((), "a job file is a mapping (name:, assistants:, conversations:, ...)")])
    problems: list[Problem] = []
    job: Job | None = None
    try:
        job = Job.model_validate(data)
    except ValidationError as e:
        problems += problems_from(e, Job, loc, unknown_key=_unknown_key)
    parts = _Parts.of(job) if job is not None else _Parts.partial(data)
    checker = _Checker(parts, loc, source.parent)
    checker.check()
    tasks = _Expansion(parts, checker).run()
    problems += checker.problems
    if problems:
        raise JobFileError(sorted(problems, key=lambda p: (p.path != shown, p.path, p.line or 0)))
    assert job is not None
    job._source = source
    job._digest = checker.digest(raw)
    job._datasets = checker.datasets
    job._tasks = tasks
    job._warnings = checker.warnings
    return job


def expand(job: Job) -> list[ConversationTask]:
    """The job's tasks: conversation × dataset row × matrix combination (sorted keys) × repeat."""
    if job._tasks is None:
        checker = _Checker(_Parts.of(job), Locator(str(job.source)), job.source.parent, job._datasets)
        checker.check()
        tasks = _Expansion(_Parts.of(job), checker).run()
        if checker.problems:
            raise JobFileError(checker.problems)
        job._tasks, job._datasets = tasks, checker.datasets
    return list(job._tasks)


def assistant_specs(job: Job) -> list[AssistantSpec]:
    """The distinct assistants the tasks use (a matrix over model/temperature gives several)."""
    specs = {(t.assistant.key, t.assistant.model, t.assistant.temperature): t.assistant for t in expand(job)}
    return list(specs.values())


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a job file (what `runner schema` prints)."""
    schema = Job.model_json_schema()
    return {"$schema": schema.pop("$schema"), **schema}


def _unknown_key(at: Sequence[str | int], key: str, valid: list[str]) -> str | None:
    if model_at(Job, at) is Check:
        return f"unknown check type {key!r}{suggest(key, valid)}; valid types: {', '.join(CHECK_TYPES)}"
    return None


# --- semantic checks ------------------------------------------------------------------------------


@dataclass
class _Parts:
    """What validated of a job (all of it, or the pieces that did), for checks across keys."""

    name: str
    api: Api
    model: str | None
    assistant_keys: list[str]
    assistants: dict[str, Assistant]
    conversations: list[tuple[int, Conversation]]
    matrix: dict[str, list[Any]]
    repeat: int
    limits: Limits
    complete: bool = True

    @classmethod
    def of(cls, job: Job) -> _Parts:
        return cls(
            job.name,
            job.api,
            job.model,
            list(job.assistants),
            dict(job.assistants),
            list(enumerate(job.conversations)),
            job.matrix,
            job.repeat,
            job.limits,
        )

    @classmethod
    def partial(cls, data: dict[str, Any]) -> _Parts:
        def valid(model: type[BaseModel], value: Any) -> Any:
            try:
                return model.model_validate(value)
            except ValidationError:
                return None

        raw_assistants: dict[str, Any] = (
            data["assistants"] if isinstance(data.get("assistants"), dict) else {}
        )
        raw_convs: list[Any] = data["conversations"] if isinstance(data.get("conversations"), list) else []
        matrix: Any = data.get("matrix")
        matrix_ok = isinstance(matrix, dict) and all(isinstance(v, list) for v in matrix.values())
        assistants = {k: a for k, v in raw_assistants.items() if (a := valid(Assistant, v)) is not None}
        return cls(
            name=str(data.get("name")),
            api=Api(data["api"]) if data.get("api") in [a.value for a in Api] else Api.ASSISTANTS,
            model=data["model"] if isinstance(data.get("model"), str) else None,
            assistant_keys=list(raw_assistants),
            assistants=assistants,
            conversations=[
                (i, c) for i, v in enumerate(raw_convs) if (c := valid(Conversation, v)) is not None
            ],
            matrix=matrix if matrix_ok else {},
            repeat=data["repeat"] if isinstance(data.get("repeat"), int) and data["repeat"] >= 1 else 1,
            limits=Limits(),
            complete=matrix_ok or matrix is None,
        )


def _template_names(value: Any) -> Iterable[str]:
    """Every `{{name}}` in a string, or in the strings nested in a mapping/list."""
    if isinstance(value, str):
        yield from TEMPLATE.findall(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _template_names(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _template_names(v)


@dataclass
class _Checker:
    """Checks across keys: assistants, ids, vars, datasets, matrix; loads the datasets."""

    parts: _Parts
    loc: Locator
    folder: Path
    datasets: dict[int, tuple[str, list[Row]]] | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    row_ids: dict[int, list[str]] = field(default_factory=dict)
    used_vars: set[str] = field(default_factory=set)
    _bytes: dict[str, bytes] = field(default_factory=dict)

    def problem(self, loc: Sequence[str | int], what: str) -> None:
        self.problems.append(self.loc.at(loc, what))

    def check(self) -> None:
        self._matrix()
        keys = self.parts.assistant_keys
        load = self.datasets is None
        self.datasets = self.datasets or {}
        first_id: dict[str, int] = {}
        used_assistants: set[str] = set()
        for i, conv in self.parts.conversations:
            at: tuple[str | int, ...] = ("conversations", i)
            if conv.id in first_id:
                self.problem(
                    (*at, "id"), f"duplicate conversation id {conv.id!r} (first at line {first_id[conv.id]})"
                )
            first_id.setdefault(conv.id, self.loc.line((*at, "id")) or 0)
            for name in conv.vars:
                if not re.match(VAR_PATTERN, name):
                    self.problem((*at, "vars", name), f"{name!r} is not a variable name (letters, digits, _)")
            if load and conv.dataset is not None:
                self._load_dataset(i, conv)
            key = self._assistant(i, conv, keys)
            if key is not None:
                used_assistants.add(key)
                self._tool_outputs(i, conv, key)
            self._vars(i, conv)
        for key in keys:
            if key not in used_assistants and self.parts.conversations and self.parts.complete:
                self.warnings.append(
                    self.loc.at(("assistants", key), "warning: no conversation uses this assistant")
                )
        self._matrix_warnings()

    def _assistant(self, i: int, conv: Conversation, keys: list[str]) -> str | None:
        at = ("conversations", i)
        if conv.assistant is None:
            if len(keys) > 1:
                self.problem(
                    at, f"name an assistant with `assistant:`; the job has several: {', '.join(keys)}"
                )
                return None
            return keys[0] if keys else None
        if conv.assistant not in keys:
            self.problem(
                (*at, "assistant"),
                f"unknown assistant {conv.assistant!r}{suggest(conv.assistant, keys)}; defined: {', '.join(keys)}",
            )
            return None
        return conv.assistant

    def _tool_outputs(self, i: int, conv: Conversation, key: str) -> None:
        assistant = self.parts.assistants.get(key)
        if assistant is None:
            return
        if assistant.model is None and self.parts.model is None and "model" not in self.parts.matrix:
            self.problem(
                ("assistants", key),
                "no model: set `model` on this assistant or on the job, or a matrix `model`",
            )
        functions = [t.function.name for t in assistant.tools if t.function is not None]
        if assistant.id is not None and not assistant.tools:
            return  # an existing assistant: its tools live on the server
        for name, value in conv.tool_outputs.items():
            at = ("conversations", i, "tool_outputs", name)
            if name not in functions:
                listed = f"; it has: {', '.join(functions)}" if functions else "; it has none"
                self.problem(
                    at, f"assistant {key!r} has no function tool {name!r}{suggest(name, functions)}{listed}"
                )
            elif value is None:
                self.problem(at, "needs an output (a string, or a mapping/list sent as JSON)")

    def _load_dataset(self, i: int, conv: Conversation) -> None:
        assert conv.dataset is not None and self.datasets is not None
        path = self.folder / conv.dataset
        shown = str(path)
        at = ("conversations", i, "dataset")
        if path.suffix.lower() not in DATASET_SUFFIXES:
            self.problem(
                at, f"unsupported dataset type {path.suffix or path.name!r}; use .jsonl, .csv, .yaml or .yml"
            )
            return
        if not path.is_file():
            self.problem(at, f"dataset {'is not a file' if path.exists() else 'not found'}: {shown}")
            return
        try:
            rows, raw = read_dataset(path, shown)
        except YAMLProblems as e:
            self.problems += e.problems
            return
        ids: list[str] = []
        seen: dict[str, int] = {}
        for row in rows:
            row_id = _row_id(row)
            if row_id is None or not row_id.strip() or "#" in row_id or "/" in row_id:
                self.problems.append(
                    Problem(
                        shown,
                        row.line,
                        f"row {row.number}",
                        f"an id must be non-empty, without '#' or '/', got {row.values['id']!r}",
                    )
                )
            elif row_id in seen:
                self.problems.append(
                    Problem(
                        shown,
                        row.line,
                        f"row {row.number}",
                        f"duplicate row id {row_id!r} (first at line {seen[row_id]})",
                    )
                )
            seen.setdefault(str(row_id), row.line)
            ids.append(str(row_id))
        self.datasets[i] = (shown, rows)
        self.row_ids[i] = ids
        self._bytes[str(path.resolve())] = raw

    def _vars(self, i: int, conv: Conversation) -> None:
        matrix_vars = {k for k in self.parts.matrix if k not in MATRIX_KEYS}
        defined = set(conv.vars) | matrix_vars
        if conv.dataset is not None:
            if self.datasets is None or i not in self.datasets:
                return  # the dataset could not be read: its columns are unknown
            for row in self.datasets[i][1]:
                defined.update(row.values)
        for j, turn in enumerate(conv.turns):
            self._defined(("conversations", i, "turns", j, "user"), turn.user, defined)
            for k, check in enumerate(turn.expect):
                spec = check.spec()
                self._defined(("conversations", i, "turns", j, "expect", k, spec.type), spec.value, defined)

    def _defined(self, at: tuple[str | int, ...], value: Any, defined: set[str]) -> None:
        for name in dict.fromkeys(_template_names(value)):
            self.used_vars.add(name)
            if name not in defined and self.parts.complete:
                known = f"; defined: {', '.join(sorted(defined))}" if defined else ""
                self.problem(
                    at,
                    f"{{{{{name}}}}} is not defined{suggest(name, sorted(defined))}{known} "
                    "(define it in `vars`, a dataset column or a matrix key)",
                )

    def _matrix(self) -> None:
        for key, values in self.parts.matrix.items():
            at: tuple[str | int, ...] = ("matrix", key)
            if not re.match(VAR_PATTERN, key):
                self.problem(
                    at, f"{key!r} is not a variable name (letters, digits, _) nor model/api/temperature"
                )
            if not values:
                self.problem(at, "list at least one value")
            seen: set[str] = set()
            for n, value in enumerate(values):
                problem = _matrix_value_problem(key, value)
                if problem is None and _fmt(value) in seen:
                    problem = f"{_fmt(value)!r} is listed twice"
                if problem:
                    self.problem((*at, n), problem)
                seen.add(_fmt(value))

    def _matrix_warnings(self) -> None:
        for key in self.parts.matrix:
            if key not in MATRIX_KEYS and key not in self.used_vars and re.match(VAR_PATTERN, key):
                self.warnings.append(
                    self.loc.at(
                        ("matrix", key),
                        f"warning: {{{{{key}}}}} is used nowhere{suggest(key, MATRIX_KEYS)}; every conversation "
                        "still runs once per value",
                    )
                )
        if self.parts.api == Api.ASSISTANTS and "api" not in self.parts.matrix:
            for key, a in self.parts.assistants.items():
                if a.id is not None and (a.instructions or a.temperature is not None):
                    self.warnings.append(
                        self.loc.at(
                            ("assistants", key, "id"),
                            "warning: with `id` the existing assistant is used as it is; its instructions and "
                            "temperature here only serve the responses and chat APIs",
                        )
                    )

    def digest(self, raw: bytes) -> str:
        h = hashlib.sha256(raw)
        for _, data in sorted(self._bytes.items()):
            h.update(b"\0")
            h.update(data)
        return h.hexdigest()


def _row_id(row: Row) -> str | None:
    if "id" not in row.values:
        return str(row.number)
    value = row.values["id"]
    return (
        value
        if isinstance(value, str)
        else str(value)
        if isinstance(value, int) and not isinstance(value, bool)
        else None
    )


def _matrix_value_problem(key: str, value: Any) -> str | None:
    if key == "api":
        return (
            None
            if value in [a.value for a in Api]
            else f"expected one of {', '.join(Api)}, got {value!r}{suggest(str(value), list(Api))}"
        )
    if key == "model":
        return None if isinstance(value, str) and value else f"a model is a non-empty string, got {value!r}"
    if key == "temperature":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 2
        return None if ok else f"a temperature is a number from 0 to 2, got {value!r}"
    if not isinstance(value, str | int | float) or (isinstance(value, str) and not value):
        return f"a matrix value is a non-empty string, a number or true/false, got {value!r}"
    return None


def _fmt(value: Any) -> str:
    """A var's text in a turn, a check value or an id."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- expansion -------------------------------------------------------------------------------------


def _render(value: Any, vars: dict[str, Any]) -> Any:
    """`{{name}}` replaced in a string, or in the strings nested in a mapping/list."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        return TEMPLATE.sub(lambda m: _fmt(vars[m[1]]) if m[1] in vars else m[0], value)
    if isinstance(value, dict):
        return {k: _render(v, vars) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render(v, vars) for v in value]
    return value


@dataclass(frozen=True)
class _CheckPlan:
    spec: CheckSpec
    templated: bool
    at: tuple[str | int, ...]


@dataclass(frozen=True)
class _TurnPlan:
    user: str
    templated: bool
    checks: tuple[_CheckPlan, ...]


def _plans(i: int, conv: Conversation) -> list[_TurnPlan]:
    """A conversation's turns with what needs rendering marked, so each row renders only that."""
    plans = []
    for j, turn in enumerate(conv.turns):
        checks = []
        for k, check in enumerate(turn.expect):
            spec = check.spec()
            at = ("conversations", i, "turns", j, "expect", k, spec.type)
            checks.append(_CheckPlan(spec, any(_template_names(spec.value)), at))
        plans.append(_TurnPlan(turn.user, "{{" in turn.user, tuple(checks)))
    return plans


@dataclass
class _Expansion:
    """Conversation × dataset row × matrix combination (sorted keys) × repeat, in file order."""

    parts: _Parts
    checker: _Checker

    def run(self) -> list[ConversationTask]:
        parts = self.parts
        keys = sorted(parts.matrix)
        combos = [
            dict(zip(keys, vs, strict=True)) for vs in itertools.product(*(parts.matrix[k] for k in keys))
        ]
        matrix_vars = {k for k in parts.matrix if k not in MATRIX_KEYS}
        tasks: list[ConversationTask] = []
        specs: dict[tuple[str, str, float | None], AssistantSpec] = {}
        for i, conv in parts.conversations:
            key = conv.assistant or (parts.assistant_keys[0] if len(parts.assistant_keys) == 1 else None)
            assistant = parts.assistants.get(key) if key is not None else None
            dataset = (self.checker.datasets or {}).get(i)
            if assistant is None or key is None or (conv.dataset is not None and dataset is None):
                continue
            plans = _plans(i, conv)
            needed = {n for p in plans for n in TEMPLATE.findall(p.user)}
            needed.update(
                n for p in plans for c in p.checks if c.templated for n in _template_names(c.spec.value)
            )
            from_rows = needed - set(conv.vars) - matrix_vars
            static = None if needed else self._turns(plans, {}, None)
            tool_outputs = {
                k: v if isinstance(v, str) else json.dumps(v) for k, v in conv.tool_outputs.items()
            }
            rows: list[Row | None] = list(dataset[1]) if dataset else [None]
            ids = self.checker.row_ids.get(i, [])
            for n, row in enumerate(rows):
                base = f"{parts.name}/{conv.id}" + (f"/{ids[n]}" if row is not None else "")
                where_row = (dataset[0], row) if dataset and row else None
                if where_row and not self._has(where_row, from_rows, conv.id):
                    continue
                for combo in combos:
                    vars = {**conv.vars, **(row.values if row else {})}
                    vars.update((k, v) for k, v in combo.items() if k not in MATRIX_KEYS)
                    turns = static or self._turns(plans, vars, where_row)
                    model = combo.get("model") or assistant.model or parts.model or ""
                    temperature = combo.get("temperature", assistant.temperature)
                    spec = specs.get((key, model, temperature))
                    if spec is None:
                        spec = specs[(key, model, temperature)] = AssistantSpec(
                            key=key,
                            name=assistant.name or key,
                            model=model,
                            id=assistant.id,
                            instructions=assistant.instructions,
                            temperature=temperature,
                            tools=tuple(t.model_dump(exclude_none=True) for t in assistant.tools),
                        )
                    matrix_id = "".join(f"#{k}={_fmt(v)}" for k, v in combo.items())
                    api = Api(combo.get("api", parts.api))
                    tasks.extend(
                        ConversationTask.model_construct(
                            conversation_id=f"{base}{matrix_id}#r{r}",
                            job=parts.name,
                            api=api,
                            model=model,
                            assistant=spec,
                            vars=vars,
                            matrix=combo,
                            turns=turns,
                            tool_outputs=tool_outputs,
                            limits=parts.limits,
                            repeat_index=r,
                        )
                        for r in range(parts.repeat)
                    )
        return tasks

    def _has(self, where_row: tuple[str, Row], names: set[str], conv_id: str) -> bool:
        """Does the row give every var the conversation needs from rows? (reported if not)"""
        shown, row = where_row
        missing = sorted(names - row.values.keys())
        if missing:
            what = ", ".join(f"{{{{{m}}}}}" for m in missing)
            self.checker.problems.append(
                Problem(
                    shown,
                    row.line,
                    f"row {row.number}",
                    f"no value for {what} (used by conversation {conv_id!r})",
                )
            )
        return not missing

    def _turns(
        self, plans: list[_TurnPlan], vars: dict[str, Any], where_row: tuple[str, Row] | None
    ) -> tuple[TurnSpec, ...]:
        turns = []
        for plan in plans:
            checks = tuple(self._check(c, vars, where_row) if c.templated else c.spec for c in plan.checks)
            user = _render(plan.user, vars) if plan.templated else plan.user
            turns.append(TurnSpec.model_construct(user=user, expect=checks))
        return tuple(turns)

    def _check(self, plan: _CheckPlan, vars: dict[str, Any], where_row: tuple[str, Row] | None) -> CheckSpec:
        value = _render(plan.spec.value, vars)
        if plan.spec.type in ("regex", "not_regex", "json_schema"):
            problem = check_value_problem(plan.spec.type, value)
            if problem and where_row:
                shown, row = where_row
                what = f"{where(plan.at)}: {problem} (after filling in this row)"
                self.checker.problems.append(Problem(shown, row.line, f"row {row.number}", what))
            elif problem:
                self.checker.problems.append(
                    self.checker.loc.at(plan.at, f"{problem} (after filling in the vars)")
                )
        return CheckSpec.model_construct(type=plan.spec.type, value=value)
