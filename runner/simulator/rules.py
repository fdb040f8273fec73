"""How the simulator answers: the `simulator:` block of a job file, or a `--rules FILE`.

A rule matches a regex on the latest user message and either replies with a template or stops
the run in `requires_action` with a tool call, then replies with `then` once the output is in.
Templates may use `{{message}}` (the latest user message) and `{{tool_output}}`.

Several calls in one turn (parallel tool calls) are a list:

    - when: "weather in (\\w+) and (\\w+)"
      call: [{name: get_weather, arguments: {city: a}}, {name: get_time, arguments: {}}]
      then: "Both: {{tool_output}}"
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ToolCall(BaseModel):
    """One function call of a rule that makes several in one turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Name of a function tool to call.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Arguments of that call.")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    when: str = Field(description="Regex searched in the latest user message.")
    reply: str | None = Field(default=None, description="The assistant's reply (a template).")
    call: str | tuple[ToolCall, ...] | None = Field(
        default=None,
        description="Name of a function tool to call instead of replying, or a list of {name, arguments} "
        "to make several calls in one turn.",
    )
    arguments: dict[str, Any] = Field(default_factory=dict, description="Arguments of that call.")
    then: str | None = Field(
        default=None,
        description="Reply once all tool outputs arrived (a template; {{tool_output}} joins them).",
    )
    fail: bool = Field(default=False, description="Fail the run (server_error) instead of replying.")
    ignore_format: bool = Field(
        default=False,
        description="Reply as written even when the request asks for structured output (like a server "
        "that does not honour response_format).",
    )
    quota_exhausted: bool = Field(default=False, description="Answer 429 insufficient_quota.")
    latency_s: float | None = Field(
        default=None, ge=0, description="How long matching runs stay in progress."
    )

    @field_validator("when")
    @classmethod
    def _valid_regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regex {v!r}: {e}") from e
        return v

    @model_validator(mode="after")
    def _one_action(self) -> Rule:
        actions = [self.reply is not None, self.call is not None, self.fail, self.quota_exhausted]
        if sum(actions) != 1:
            raise ValueError("a rule needs exactly one of reply, call, fail, quota_exhausted")
        if self.then is not None and self.call is None:
            raise ValueError("'then' only goes with 'call'")
        if isinstance(self.call, tuple):
            if not self.call:
                raise ValueError("'call' needs at least one function")
            if self.arguments:
                raise ValueError("with a list of calls, give each call its own 'arguments'")
        return self

    @property
    def calls(self) -> tuple[ToolCall, ...]:
        """The calls this rule makes (one for the single `call:` + `arguments:` form)."""
        if self.call is None:
            return ()
        if isinstance(self.call, str):
            return (ToolCall(name=self.call, arguments=self.arguments),)
        return self.call


class SimulatorRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: float | None = Field(default=None, ge=0, description="How long a run stays in progress.")
    rules: tuple[Rule, ...] = ()
    default: str = Field(default="You said: {{message}}", description="Reply when no rule matches.")
