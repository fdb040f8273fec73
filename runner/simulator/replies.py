"""What the simulated model says: rule matching, templates, token counts and stream chunking.

One pure function per decision, shared by the three wire protocols: `plan_turn` picks the answer
to the latest user message (a reply, a tool call, a failure or a quota error), `plan_after_tools`
picks the reply once tool outputs came back. Nothing here is random, so replies are the same for
every seed; only timing and faults depend on the seed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from runner.simulator.grading import grade, grading_form
from runner.simulator.rules import Rule, SimulatorRules
from runner.simulator.structured import fits, requested

PlanKind = Literal["reply", "call", "fail", "quota"]

DEFAULT_THEN = "{{tool_output}}"
"""Reply after a tool call whose rule has no `then`."""

MAX_STREAM_CHUNKS = 16
"""A streamed reply arrives in at most this many deltas."""

_TEMPLATE_VAR = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_CHUNK = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True)
class Plan:
    """The simulated model's decision for one turn: a reply, or calls as (name, JSON arguments)."""

    kind: PlanKind
    text: str = ""
    calls: tuple[tuple[str, str], ...] = ()
    rule: Rule | None = None

    @property
    def latency_s(self) -> float | None:
        return self.rule.latency_s if self.rule is not None else None

    @property
    def raw(self) -> bool:
        """Reply as written, whatever structured output the request asked for."""
        return self.rule is not None and self.rule.ignore_format

    @property
    def call(self) -> str | None:
        """The first call's function name (None: not a call)."""
        return self.calls[0][0] if self.calls else None

    @property
    def arguments(self) -> str:
        return self.calls[0][1] if self.calls else "{}"

    def call_tokens(self) -> int:
        return count_tokens(*(name + args for name, args in self.calls))


def render(template: str, variables: dict[str, str]) -> str:
    """Replace `{{name}}` with its value; unknown names stay as written (a visible hint, not a crash)."""
    return _TEMPLATE_VAR.sub(lambda m: variables.get(m.group(1), m.group(0)), template)


def count_tokens(*texts: str) -> int:
    """About four characters a token, like OpenAI's rule of thumb; at least 1 for any text."""
    chars = sum(len(t) for t in texts)
    return (chars + 3) // 4 if chars else 0


def chunk_text(text: str, max_chunks: int = MAX_STREAM_CHUNKS) -> list[str]:
    """Split a reply into word-aligned deltas (at most `max_chunks`) that join back to `text`."""
    words = _CHUNK.findall(text)
    if not words:
        return [text] if text else []
    per = -(-len(words) // max_chunks)
    return ["".join(words[i : i + per]) for i in range(0, len(words), per)]


def _render_arguments(arguments: dict[str, Any], variables: dict[str, str]) -> str:
    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return render(v, variables)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return json.dumps(walk(arguments), separators=(",", ":"))


def plan_turn(
    rules: SimulatorRules,
    message: str,
    tools: Collection[str],
    tool_choice: Any = "auto",
    parallel: bool = True,
    response_format: Any = None,
) -> Plan:
    """The answer to `message` (the latest user message).

    The first rule whose regex matches wins, except that a tool call is only made when the function
    is declared in `tools` and `tool_choice` allows it (a real model cannot call undeclared tools);
    such rules are skipped. `tool_choice` "required" or a named function forces a call. Without
    `parallel` (parallel_tool_calls: false) a rule naming several calls makes only the first.
    For a grading request (`response_format`, see `runner.simulator.grading`) a reply rule counts
    only when its reply is a valid answer (JSON for the schema) or `ignore_format` is set: the
    grading prompt quotes the conversation, which the assistant's own rules match too. No rule:
    the default grading policy answers instead of the default reply.
    """
    variables = {"message": message}
    calls_allowed = tool_choice != "none"
    forced = _forced_function(tool_choice, tools)
    want = requested(response_format)
    schema = want[1] if want is not None else None
    graded = grading_form(schema)
    for rule in rules.rules:
        match = re.search(rule.when, message)
        if not match:
            continue
        variables = {**match_groups(match), "message": message}
        if rule.call is not None:
            calls = rule.calls if parallel else rule.calls[:1]
            names = {c.name for c in calls}
            if not calls_allowed or not names <= set(tools) or (forced and names != {forced}):
                continue
            rendered = tuple((c.name, _render_arguments(c.arguments, variables)) for c in calls)
            return Plan("call", calls=rendered, rule=rule)
        if forced:
            continue
        if rule.fail:
            return Plan("fail", rule=rule)
        if rule.quota_exhausted:
            return Plan("quota", rule=rule)
        text = render(rule.reply or "", variables)
        if graded is not None and not rule.ignore_format and not fits(text, schema or {}):
            continue  # an assistant's rule that also matches the grading prompt (which quotes the turn)
        return Plan("reply", text=text, rule=rule)
    if forced:
        return Plan("call", calls=((forced, "{}"),))
    if graded is not None:
        return Plan("reply", text=grade(message, *graded))
    return Plan("reply", text=render(rules.default, variables))


def _forced_function(tool_choice: Any, tools: Collection[str]) -> str | None:
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function") or {}
        name = fn.get("name") if isinstance(fn, dict) else None
        name = name or tool_choice.get("name")
        return name if isinstance(name, str) and name in tools else None
    if tool_choice == "required" and tools:
        return next(iter(tools))
    return None


def plan_after_tools(
    rules: SimulatorRules, message: str, calls: Iterable[str], outputs: Iterable[str]
) -> Plan:
    """The reply once the outputs of the calls made for `message` are in: the `then` template of the
    rule that made the call, with `{{tool_output}}` (outputs joined by newlines) and `{{message}}`."""
    names = set(calls)
    variables = {"message": message, "tool_output": "\n".join(outputs)}
    for rule in rules.rules:
        match = re.search(rule.when, message) if any(c.name in names for c in rule.calls) else None
        if match:
            variables = {**match_groups(match), **variables}
            return Plan("reply", text=render(rule.then or DEFAULT_THEN, variables), rule=rule)
    return Plan("reply", text=render(DEFAULT_THEN, variables))


def function_names(tools: Iterable[Any]) -> list[str]:
    """Names of the function tools in an Assistants, Responses or Chat `tools` list."""
    names = []
    for t in tools or ():
        if not isinstance(t, dict) or t.get("type") != "function":
            continue
        fn = t.get("function")
        name = fn.get("name") if isinstance(fn, dict) else t.get("name")
        if isinstance(name, str):
            names.append(name)
    return names


def match_groups(match: re.Match[str]) -> dict[str, str]:
    """What a rule's `when` captured, for its templates: `{{0}}` the whole match, `{{1}}`, `{{2}}`…
    the groups, `{{name}}` the named groups (a group that matched nothing is empty)."""
    found = {str(i): g or "" for i, g in enumerate((match.group(0), *match.groups()))}
    found.update({k: v or "" for k, v in match.groupdict().items()})
    return found
