"""The `expect:` check types: what each accepts in a job file, and how it judges one turn.

`CHECK_TYPES` is the one table: the job file's `Check` model (one `type: value` pair, used by
`runner.jobs.models`), its JSON Schema, the validator (`check_value_problem`) and the evaluator
(`evaluate_turn`) are all built from it, so a new check type is one entry here.

Content checks judge the assistant's reply text; a turn without a reply (it errored) fails every
content check with a detail that says so. `detail` is `None` when a check passes, otherwise it
says what was expected and what was seen (truncated).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from runner.jobs.graded import Judge, Python, Similar, as_dict, graded_value_problem, short_form_schema
from runner.records import CheckResult, TurnRecord
from runner.tasks import CheckSpec

SHOWN_CHARS = 120
"""How much of a reply a failing check's detail quotes."""

Verdict = tuple[bool, str | None]

_Text = str
_PositiveInt = Annotated[int, Field(gt=0)]
_Length = Annotated[int, Field(ge=0)]


def _show(text: str) -> str:
    return repr(text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "...")


@dataclass(frozen=True)
class CheckType:
    """One check type: its value's type (for the job file model) and how it judges a turn."""

    name: str
    annotation: Any
    description: str
    judge: Callable[[TurnRecord, Any], Verdict] | None  # None: graded by the engine (model, python)
    content: bool = True  # judges the reply text, so a turn without a reply fails it

    @property
    def graded(self) -> bool:
        """Evaluated by `runner.engine.graders` (it needs the API or the user's code)."""
        return self.judge is None


Grade = Callable[[CheckSpec, TurnRecord], CheckResult]
"""How the engine evaluates a graded check (judge, python, similar) of one turn."""


def _reply(turn: TurnRecord) -> str:
    return turn["assistant"] or ""


def _contains(turn: TurnRecord, value: str) -> Verdict:
    ok = value in _reply(turn)
    return ok, None if ok else f"expected the reply to contain {_show(value)}; got {_show(_reply(turn))}"


def _not_contains(turn: TurnRecord, value: str) -> Verdict:
    ok = value not in _reply(turn)
    return ok, None if ok else f"expected the reply not to contain {_show(value)}; got {_show(_reply(turn))}"


def _icontains(turn: TurnRecord, value: str) -> Verdict:
    ok = value.casefold() in _reply(turn).casefold()
    return (
        ok,
        None if ok else f"expected the reply to contain {_show(value)} (any case); got {_show(_reply(turn))}",
    )


def _not_icontains(turn: TurnRecord, value: str) -> Verdict:
    ok = value.casefold() not in _reply(turn).casefold()
    return (
        ok,
        None
        if ok
        else f"expected the reply not to contain {_show(value)} (any case); got {_show(_reply(turn))}",
    )


def _equals(turn: TurnRecord, value: str) -> Verdict:
    ok = _reply(turn).strip() == value.strip()
    return ok, None if ok else f"expected the reply to be {_show(value)}; got {_show(_reply(turn))}"


def _starts_with(turn: TurnRecord, value: str) -> Verdict:
    ok = _reply(turn).lstrip().startswith(value)
    return ok, None if ok else f"expected the reply to start with {_show(value)}; got {_show(_reply(turn))}"


def _ends_with(turn: TurnRecord, value: str) -> Verdict:
    ok = _reply(turn).rstrip().endswith(value)
    return ok, None if ok else f"expected the reply to end with {_show(value)}; got {_show(_reply(turn))}"


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regex(turn: TurnRecord, value: str) -> Verdict:
    ok = _compiled(value).search(_reply(turn)) is not None
    return ok, None if ok else f"expected the reply to match /{value}/; got {_show(_reply(turn))}"


def _not_regex(turn: TurnRecord, value: str) -> Verdict:
    found = _compiled(value).search(_reply(turn))
    if found is None:
        return True, None
    seen = f"it matched {_show(found.group(0))} in {_show(_reply(turn))}"
    return False, f"expected the reply not to match /{value}/; {seen}"


def _parse_json(turn: TurnRecord) -> tuple[Any, str | None]:
    try:
        return json.loads(_reply(turn)), None
    except ValueError as e:
        return None, f"expected the reply to be JSON ({e}); got {_show(_reply(turn))}"


def _is_json(turn: TurnRecord, value: bool) -> Verdict:
    _, problem = _parse_json(turn)
    return problem is None, problem


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


def _json_schema(turn: TurnRecord, value: dict[str, Any]) -> Verdict:
    doc, problem = _parse_json(turn)
    if problem:
        return False, problem
    error = jsonschema.exceptions.best_match(_validator(json.dumps(value, sort_keys=True)).iter_errors(doc))
    if error is None:
        return True, None
    at = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return False, f"the reply's JSON does not match the schema at {at}: {error.message[:200]}"


def _max_latency_ms(turn: TurnRecord, value: int) -> Verdict:
    # The server-side latency when known: retry backoff and limiter waits are the runner's, not
    # the assistant's slowness.
    latency = turn.get("server_latency_ms", turn["latency_ms"])
    if latency is None:
        latency = turn["latency_ms"]
    if latency is None:
        return False, f"expected a latency of at most {value} ms; no latency was recorded"
    ok = latency <= value
    return ok, None if ok else f"expected a latency of at most {value} ms; took {latency} ms"


def _max_tokens(turn: TurnRecord, value: int) -> Verdict:
    used = turn["usage"]["completion_tokens"]
    if used is None:
        return False, f"expected at most {value} completion tokens; usage is unknown (none reported)"
    ok = used <= value
    return ok, None if ok else f"expected at most {value} completion tokens; the reply used {used}"


def _min_length(turn: TurnRecord, value: int) -> Verdict:
    n = len(_reply(turn))
    return (
        n >= value,
        None if n >= value else f"expected at least {value} characters; got {n}: {_show(_reply(turn))}",
    )


def _max_length(turn: TurnRecord, value: int) -> Verdict:
    n = len(_reply(turn))
    return (
        n <= value,
        None if n <= value else f"expected at most {value} characters; got {n}: {_show(_reply(turn))}",
    )


def _max_total_tokens(turn: TurnRecord, value: int) -> Verdict:
    used = turn["usage"]["total_tokens"]
    if used is None:
        return False, f"expected at most {value} tokens in all; usage is unknown (none reported)"
    ok = used <= value
    return ok, None if ok else f"expected at most {value} tokens in all; used {used}"


def _called(turn: TurnRecord) -> list[str]:
    return [call["name"] for call in turn["tool_calls"]]


def _tool_called(turn: TurnRecord, value: str) -> Verdict:
    names = _called(turn)
    ok = value in names
    return ok, None if ok else f"expected a call to {value!r}; called {', '.join(names) or 'no tool'}"


def _not_tool_called(turn: TurnRecord, value: str) -> Verdict:
    ok = value not in _called(turn)
    return ok, None if ok else f"expected no call to {value!r}; it was called"


CHECK_TYPES: Mapping[str, CheckType] = {
    t.name: t
    for t in (
        CheckType("contains", _Text, "The reply contains this text (case-sensitive).", _contains),
        CheckType(
            "not_contains", _Text, "The reply does not contain this text (case-sensitive).", _not_contains
        ),
        CheckType("icontains", _Text, "The reply contains this text, ignoring case.", _icontains),
        CheckType(
            "not_icontains", _Text, "The reply does not contain this text, ignoring case.", _not_icontains
        ),
        CheckType(
            "equals", _Text, "The reply is exactly this text (surrounding whitespace ignored).", _equals
        ),
        CheckType(
            "starts_with",
            _Text,
            "The reply starts with this text (leading whitespace ignored).",
            _starts_with,
        ),
        CheckType(
            "ends_with", _Text, "The reply ends with this text (trailing whitespace ignored).", _ends_with
        ),
        CheckType("regex", _Text, "A Python regex found somewhere in the reply (re.search).", _regex),
        CheckType("not_regex", _Text, "A Python regex found nowhere in the reply.", _not_regex),
        CheckType("is_json", Literal[True], "`is_json: true`: the whole reply parses as JSON.", _is_json),
        CheckType(
            "json_schema", dict[str, Any], "The reply is JSON valid against this JSON Schema.", _json_schema
        ),
        CheckType("min_length", _Length, "The reply has at least this many characters.", _min_length),
        CheckType("max_length", _Length, "The reply has at most this many characters.", _max_length),
        CheckType(
            "max_latency_ms",
            _PositiveInt,
            "The turn took at most this many milliseconds.",
            _max_latency_ms,
            content=False,
        ),
        CheckType(
            "max_tokens",
            _PositiveInt,
            "The turn's completion tokens (usage) are at most this.",
            _max_tokens,
            content=False,
        ),
        CheckType(
            "max_total_tokens",
            _PositiveInt,
            "Total tokens (usage) of the turn, or of the whole conversation in its `expect:`, at most this.",
            _max_total_tokens,
            content=False,
        ),
        CheckType(
            "tool_called",
            _Text,
            "The turn called the function tool of this name.",
            _tool_called,
            content=False,
        ),
        CheckType(
            "not_tool_called",
            _Text,
            "The turn did not call the function tool of this name.",
            _not_tool_called,
            content=False,
        ),
        CheckType(
            "judge",
            Judge,
            "A model grades the reply against a rubric: `judge: rubric text`, or "
            "`{rubric, score: {min, max, pass_at}}`, or `{rubric, labels: [...], pass: [...]}`.",
            None,
        ),
        CheckType(
            "python",
            Python,
            "Your function `fn(reply, ctx)` judges the reply: `python: checks/file.py:fn` (relative to the "
            "job file) or `{function: module:fn, pass_at: 0.7}`. It returns a bool, a float 0..1, or "
            "a dict/object with `passed` or `score` and `reason`.",
            None,
        ),
        CheckType(
            "similar",
            Similar,
            "The reply is close in meaning to a reference: `{to: text, at_least: 0.8}` (cosine, 0..1).",
            None,
        ),
    )
}
"""Every check type by name, in the order the schema lists them."""

_TEXT_TYPES = frozenset(name for name, t in CHECK_TYPES.items() if t.annotation is _Text)
_INT_TYPES = {"min_length": 0, "max_length": 0, "max_latency_ms": 1, "max_tokens": 1, "max_total_tokens": 1}


def check_value_problem(type_: str, value: Any) -> str | None:
    """Why `value` cannot be the value of a `type_` check, or None when it can."""
    if type_ not in CHECK_TYPES:
        return f"unknown check type {type_!r}; valid types: {', '.join(CHECK_TYPES)}"
    if CHECK_TYPES[type_].graded:
        return graded_value_problem(type_, value)
    if type_ in _TEXT_TYPES:
        if not isinstance(value, str):
            return f"{type_} needs a string, got {value!r}"
        if not value and type_ in ("tool_called", "not_tool_called"):
            return f"{type_} needs a function name"
        if type_ in ("regex", "not_regex"):
            try:
                re.compile(value)
            except re.error as e:
                return f"invalid regex {value!r}: {e}"
        return None
    if type_ in _INT_TYPES:
        least = _INT_TYPES[type_]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            return f"{type_} needs a whole number {'greater than 0' if least else '>= 0'}, got {value!r}"
        return None
    if type_ == "is_json":
        return None if value is True else f"is_json takes `true` (write `is_json: true`), got {value!r}"
    if not isinstance(value, dict):  # json_schema
        return f"json_schema needs a JSON Schema mapping, got {value!r}"
    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.exceptions.SchemaError as e:
        at = "/".join(str(p) for p in e.absolute_path)
        return f"invalid JSON Schema{f' at {at}' if at else ''}: {e.message[:200]}"
    return None


class _CheckBase(BaseModel):
    """One `expect:` item of a job file: exactly one `type: value` pair."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,
        json_schema_extra={"minProperties": 1, "maxProperties": 1},
    )

    @model_validator(mode="before")
    @classmethod
    def _one(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) != 1 and all(k in CHECK_TYPES for k in data):
            if not data:
                raise ValueError(f"empty check; give one of: {', '.join(CHECK_TYPES)}")
            raise ValueError(
                f"one check per item, got {', '.join(data)}; write each as its own `- type: value`"
            )
        return data

    @model_validator(mode="after")
    def _value(self) -> _CheckBase:
        spec = self.spec()
        problem = (
            f"{spec.type} needs a value" if spec.value is None else check_value_problem(spec.type, spec.value)
        )
        if problem:
            raise ValueError(problem)
        return self

    def spec(self) -> CheckSpec:
        (type_,) = self.model_fields_set
        value = getattr(self, type_)
        if CHECK_TYPES[type_].graded:  # one plain form, JSON for the queue
            value = as_dict(type_, value)
        return CheckSpec.model_construct(type=type_, value=value)


def _no_null(schema: dict[str, Any]) -> None:
    """A check's value is never null and has no default (the key is the check)."""
    schema.pop("default", None)
    options = [o for o in schema.pop("anyOf", []) if o != {"type": "null"}]
    schema.update(options[0] if options else {})


def _no_null_or_string(schema: dict[str, Any]) -> None:
    _no_null(schema)
    short_form_schema(schema)


if TYPE_CHECKING:
    Check = _CheckBase
else:
    Check = create_model(
        "Check",
        __base__=_CheckBase,
        __doc__="One check on the assistant's reply to this turn: exactly one `type: value` pair.",
        **{
            name: (
                t.annotation | None,
                Field(
                    None,
                    description=t.description,
                    json_schema_extra=_no_null_or_string if name in ("judge", "python") else _no_null,
                ),
            )
            for name, t in CHECK_TYPES.items()
        },
    )


def evaluate_turn(
    turn: TurnRecord, expect: Sequence[CheckSpec], grade: Grade | None = None
) -> list[CheckResult]:
    """Judge one turn against its checks, in order; never raises for a bad reply. `grade`
    evaluates the graded checks (judge, python, similar); without it they fail, saying so."""
    results: list[CheckResult] = []
    for check in expect:
        kind = CHECK_TYPES.get(check.type)
        if kind is None:
            passed, detail = False, check_value_problem(check.type, check.value)
        elif kind.content and turn["assistant"] is None:
            why = turn.get("error") or (
                f"run status {turn['run_status']}" if turn["run_status"] else "no reply"
            )
            passed, detail = False, f"no reply to check ({why})"
        elif kind.judge is None:
            if grade is not None:
                results.append(grade(check, turn))
                continue
            passed, detail = False, f"{check.type} checks need the engine's grader"
        else:
            try:
                passed, detail = kind.judge(turn, check.value)
            except (re.error, TypeError, ValueError, jsonschema.exceptions.SchemaError) as e:
                passed, detail = False, f"the check itself is invalid: {e}"
        results.append({"type": check.type, "value": check.value, "passed": passed, "detail": detail})
    return results
