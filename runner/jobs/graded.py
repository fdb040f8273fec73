"""The values of the checks that need more than the reply's text: `judge` (a model grades the reply
against a rubric), `python` (a function of the user's) and `similar` (similarity to a reference).

`runner.jobs.checks` lists them in its table like every check type, so the job file's model and
schema cover them; they are *evaluated* by the engine (`runner.engine.graders`), which holds the
API client. Each value is a pydantic model here (what a job file may say, validated with
`PATH:LINE` errors); in a task it travels as the plain dict `model_dump(by_alias=True)` gives.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PYTHON_PASS_AT = 0.5
"""A python check returning a float passes at this score when it names no `pass_at`."""

SIMILAR_METHODS = ("auto", "embeddings", "lexical")


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        key = _SHORT.get(cls.__name__.lower())
        return {key: data} if key is not None and isinstance(data, str) else data


class Score(_Value):
    """`judge: {score: ...}`: the grader gives a number from `min` to `max`; `pass_at` or more passes."""

    min: float = Field(1, description="Lowest score the grader may give.")
    max: float = Field(10, description="Highest score the grader may give.")
    pass_at: float = Field(description="The check passes at this score or above.")

    @model_validator(mode="after")
    def _range(self) -> Score:
        if self.min >= self.max:
            raise ValueError(f"score.min ({self.min:g}) must be below score.max ({self.max:g})")
        if not self.min <= self.pass_at <= self.max:
            raise ValueError(f"score.pass_at ({self.pass_at:g}) must be within {self.min:g}..{self.max:g}")
        return self


class Judge(_Value):
    """`judge: {rubric, score | labels + pass}`: a model grades the reply against the rubric."""

    rubric: str = Field(min_length=1, description="What a good reply does; `{{var}}` is replaced.")
    score: Score | None = Field(None, description="Grade on a numeric scale instead of pass/fail.")
    labels: tuple[str, ...] | None = Field(
        None, min_length=2, description="Classify the reply into one of these labels."
    )
    pass_: tuple[str, ...] | None = Field(
        None, alias="pass", min_length=1, description="With `labels`: the labels that pass."
    )

    @model_validator(mode="after")
    def _form(self) -> Judge:
        if self.score is not None and self.labels is not None:
            raise ValueError("a judge takes `score` or `labels`, not both")
        if (self.labels is None) != (self.pass_ is None):
            raise ValueError("`labels` and `pass` go together: the labels, and which of them pass")
        if self.labels is not None and self.pass_ is not None:
            if len(set(self.labels)) != len(self.labels) or not all(s.strip() for s in self.labels):
                raise ValueError("labels must be distinct, non-empty names")
            unknown = [p for p in self.pass_ if p not in self.labels]
            if unknown:
                raise ValueError(f"unknown label {unknown[0]!r} in `pass`; labels: {', '.join(self.labels)}")
        return self


class Python(_Value):
    """`python: {function, pass_at}`: a function of yours judges the reply."""

    function: str = Field(
        description="`path/to/file.py:function` (relative to the job file) or `package.module:function`."
    )
    pass_at: float | None = Field(
        None,
        ge=0,
        le=1,
        description=f"A float result passes at this or above (default {DEFAULT_PYTHON_PASS_AT}).",
    )


class Similar(_Value):
    """`similar: {to, at_least}`: the reply is close enough in meaning to a reference text."""

    to: str = Field(min_length=1, description="The reference text; `{{var}}` is replaced.")
    at_least: float = Field(ge=0, le=1, description="Least cosine similarity, 0..1, that passes.")
    method: Literal["auto", "embeddings", "lexical"] = Field(
        "auto",
        description="`embeddings` (the server's /v1/embeddings), `lexical` (token cosine, offline) or "
        "`auto`: embeddings when the server offers them, else lexical.",
    )


def short_form_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema of a check that also takes a plain string (`judge: rubric`, `python: ref`)."""
    ref = {k: schema.pop(k) for k in list(schema) if k not in ("description", "title")}
    schema["anyOf"] = [{"type": "string", "minLength": 1}, ref]


_MODELS: dict[str, type[_Value]] = {"judge": Judge, "python": Python, "similar": Similar}
_SHORT = {"judge": "rubric", "python": "function"}  # the string form means this key


def as_dict(type_: str, value: Any) -> dict[str, Any]:
    """A graded check's value in its one plain form (a dict), from the short or the long form."""
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    if isinstance(value, str) and type_ in _SHORT:
        return {_SHORT[type_]: value}
    return dict(value)


def graded_value_problem(type_: str, value: Any) -> str | None:
    """Why `value` cannot be the value of a `type_` graded check, or None."""
    if type_ in _SHORT and isinstance(value, str):
        value = {_SHORT[type_]: value}
    if not isinstance(value, dict):
        return f"{type_} needs a mapping{' or a string' if type_ in _SHORT else ''}, got {value!r}"
    try:
        _MODELS[type_].model_validate(value)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        at = ".".join(str(p) for p in err["loc"])
        return f"{type_}{'.' + at if at else ''}: {err['msg'].removeprefix('Value error, ')}"
    if type_ == "python" and ":" not in value["function"]:
        return f"python needs `file.py:function` or `module:function`, got {value['function']!r}"
    return None
