"""`tool_outputs:` — what a function tool answers when the assistant calls it.

A conversation's `tool_outputs` maps a function name to one of:

    lookup_order: '{"status": "shipped"}'          # a string, sent as it is
    lookup_order: {status: shipped}                 # data, sent as JSON
    lookup_order:                                   # by the value of one argument
      by: order_id
      outputs: {A1: '{"status": "shipped"}', B2: {status: lost}}
      default: '{"error": "unknown order"}'        # optional: any other value
    lookup_order: {python: tools/orders.py:lookup}  # fn(arguments, ctx); also module:function

A mapping with a `by`, `outputs` or `python` key is one of the last two forms (checked strictly: a typo is
an error, not data); to send data with such a key, write it as a JSON string. Values of `by` are
compared as text: a number or boolean argument as its JSON (`7`, `true`), like YAML keys.

Without a matching value and without `default`, the tool gets `{"error": "no output for
order_id='X'"}` (a JSON object the model can read) and the call's record holds that output, so
the turn goes on and a check can fail on it. A python function is loaded like a python check
(`runner.jobs.pychecks`: relative to the job file, hashed, `RUNNER_CHECK_PACKAGES` for modules
outside the job's folder) and called as `fn(arguments, ctx)` with `ctx` = {tool, conversation_id,
vars, turn (index), user}; a string result is sent as it is, anything else as JSON. A function
that raises, returns what JSON cannot encode, or cannot be loaded ends the turn with an error
naming it (the conversation's, never the worker's).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runner.jobs.pychecks import load_function
from runner.tasks import ToolOutputRule

RULE_KEYS = ("by", "outputs", "default", "python")
TOOL_CALL = "fn(arguments, ctx)"
"""How a python tool output is called (named in signature errors)."""


class ByArgument(BaseModel):
    """`{by, outputs, default}`: the output chosen by the value of one argument of the call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str = Field(min_length=1, description="The argument (top level) whose value picks the output.")
    outputs: dict[str, Any] = Field(
        default_factory=dict,
        description="Output by argument value (compared as text): a string, or data sent as JSON.",
    )
    default: Any = Field(
        None,
        description="Output for any other value. Without it the tool gets "
        '{"error": "no output for <by>=\'<value>\'"}.',
    )

    @model_validator(mode="after")
    def _needs_outputs(self) -> ByArgument:
        if not self.outputs and self.default is None:
            raise ValueError(
                "`by` needs `outputs` (the output for each value of the argument), or use `python:`"
            )
        return self


class PythonOutput(BaseModel):
    """`{python: ref}`: a function of yours computes the output from the arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    python: str = Field(
        min_length=1,
        description="`path/to/file.py:function` (relative to the job file) or `package.module:function`, "
        "called as fn(arguments, ctx); returns a string or data sent as JSON.",
    )


def is_rule(value: Any) -> bool:
    """A `{by, outputs}` or `{python}` value rather than data to send as JSON."""
    return isinstance(value, dict) and ("by" in value or "outputs" in value or "python" in value)


def rule_problem(value: dict[str, Any]) -> tuple[tuple[str | int, ...], str] | None:
    """Where in the value (a key path) and what is wrong with a rule form, or None."""
    if "python" in value and "by" not in value:
        model: type[BaseModel] = PythonOutput
    elif "python" in value:
        return (("python",), "a python tool output takes no `by`: the function gets all the arguments")
    else:
        model = ByArgument
    try:
        model.model_validate(value)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            takes = "`python` alone" if model is PythonOutput else "`by`, `outputs`, `default`"
            msg = f"unknown key; an output by arguments takes {takes}"
        elif err["type"] == "missing" and loc == ("by",):
            msg = "`outputs` needs `by`: the argument whose value picks the output"
        return loc, msg
    return None


def as_text(value: Any) -> str:
    """An output as the tool sends it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def value_schema() -> dict[str, Any]:
    """The JSON Schema of one `tool_outputs` value: text, a rule, or any data (sent as JSON)."""
    return {
        "anyOf": [
            {"type": "string", "description": "Sent as it is."},
            {**ByArgument.model_json_schema(), "required": ["by"]},
            PythonOutput.model_json_schema(),
            {"description": "Other data: sent as JSON (with a key `by`, `outputs` or `python`: a rule)."},
        ]
    }


def key_text(value: Any) -> str:
    """A `by` value as text, for comparing an argument with the keys of `outputs`."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def task_rule(value: dict[str, Any], python: dict[str, Any] | None) -> ToolOutputRule:
    """The task's form of a valid rule (`python`: the function as `pychecks.resolve` described it)."""
    if python is not None:
        return ToolOutputRule(python=python)
    rule = ByArgument.model_validate(value)
    return ToolOutputRule(
        by=rule.by,
        outputs={key_text(k): as_text(v) for k, v in rule.outputs.items()},
        default=None if rule.default is None else as_text(rule.default),
    )


class ToolOutputFailed(Exception):
    """A python tool output that could not be loaded, raised, or returned what JSON cannot encode."""


def choose(
    rule: ToolOutputRule,
    arguments: Any,
    ctx: dict[str, Any],
    allowed_packages: tuple[str, ...],
) -> str:
    """The output of one call under `rule` (see the module doc)."""
    if rule.python is not None:
        shown = rule.python.get("function")
        try:
            fn = load_function(rule.python, allowed_packages, call=TOOL_CALL)
        except Exception as e:  # PythonCheckError, or the user's module failing as it loads
            raise ToolOutputFailed(f"python tool output refused: {e}") from None
        try:
            out = fn(arguments if isinstance(arguments, dict) else {"arguments": arguments}, ctx)
        except Exception as e:  # the user's code: its failure is the turn's, never the worker's
            raise ToolOutputFailed(f"python tool output {shown} raised {type(e).__name__}: {e}") from None
        try:
            return as_text(out)
        except (TypeError, ValueError) as e:
            raise ToolOutputFailed(f"python tool output {shown} returned {type(out).__name__}: {e}") from None
    assert rule.by is not None
    given = arguments.get(rule.by) if isinstance(arguments, dict) else None
    key = None if given is None else key_text(given)
    if key is not None and key in rule.outputs:
        return rule.outputs[key]
    if rule.default is not None:
        return rule.default
    missing = f"no output for {rule.by}={key!r}" if key is not None else f"no {rule.by} given"
    return json.dumps({"error": missing})
