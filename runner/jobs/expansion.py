"""The expansion of a validated job into conversation tasks: conversation × dataset row × matrix
combination (sorted keys) × repeat, in file order, with stable ids. Run by the cross-key checks
(`runner.jobs.validation.Checker`), which hold what validated.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from runner.errors import Problem
from runner.jobs.checks import check_value_problem
from runner.jobs.datasets import Row
from runner.jobs.models import GENERATION_MATRIX_KEYS, MATRIX_KEYS, TEMPLATE, Assistant, Conversation, Loc
from runner.jobs.templating import fill, fmt, names_in, render
from runner.jobs.tooloutputs import as_text
from runner.jobs.yamlload import where
from runner.tasks import Api, AssistantSpec, CheckSpec, ConversationTask, GraderSpec, ToolOutputRule, TurnSpec

if TYPE_CHECKING:
    from runner.jobs.validation import Checker


@dataclass(frozen=True)
class _CheckPlan:
    spec: CheckSpec
    templated: bool
    at: Loc
    parts: list[str] | None  # a string value split by TEMPLATE, rendered faster than _render


@dataclass(frozen=True)
class _TurnPlan:
    user: list[str]  # TEMPLATE.split: literal text at even indices, var names at odd ones
    templated: bool
    checks: tuple[_CheckPlan, ...]
    fixed: TurnSpec | None  # the turn itself when nothing in it needs rendering


_MODEL_GRADED = frozenset({"judge", "similar"})
"""Check types that call a model, so their tasks carry the job's `grader:`."""

_M = TypeVar("_M", bound=BaseModel)


def _construct(cls: type[_M], **values: Any) -> _M:
    """`model_construct` minus its per-field alias/default bookkeeping (a third of the time of a
    10,000-row expansion): every field is given and already valid. Mirrors pydantic's own."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def _turn_spec(user: str, checks: list[_CheckPlan]) -> TurnSpec:
    return _construct(TurnSpec, user=user, expect=tuple(c.spec for c in checks))


@dataclass
class Expansion:
    """Conversation × dataset row × matrix combination (sorted keys) × repeat, in file order."""

    checker: Checker

    def run(self, assistant_of: dict[int, str]) -> list[ConversationTask]:
        parts, datasets = self.checker.parts, self.checker.datasets or {}
        keys = sorted(parts.matrix) if self.checker.matrix_ok else []
        combos = [
            dict(zip(keys, vs, strict=True)) for vs in itertools.product(*(parts.matrix[k] for k in keys))
        ]
        matrix_vars = {k for k in keys if k not in MATRIX_KEYS}
        tasks: list[ConversationTask] = []
        specs: dict[tuple[Any, ...], AssistantSpec] = {}
        for i, conv in parts.conversations:
            key, dataset = assistant_of.get(i), datasets.get(i)
            assistant = parts.assistants.get(key or "")
            if key is None or assistant is None or (conv.dataset is not None and dataset is None):
                continue
            plans = self._plans(i, conv)
            final = self._conversation_checks(i, conv)
            needed = {n for p in plans for n in p.user[1::2]}
            needed.update(n for p in plans for c in p.checks if c.templated for n in names_in(c.spec.value))
            needed.update(n for c in final if c.templated for n in names_in(c.spec.value))
            checks = [*final, *(c for p in plans for c in p.checks)]
            graded = any(c.spec.type in _MODEL_GRADED for c in checks)
            from_rows = needed - set(conv.vars) - matrix_vars
            static = None if needed else self._turns(plans, {}, None)
            rules = self.checker.tool_rules(i, conv.tool_outputs)
            if rules is None:
                continue
            outputs: dict[str, str | ToolOutputRule] = {
                k: rules[k] if k in rules else as_text(v) for k, v in conv.tool_outputs.items()
            }
            per_combo = [self._combo(combo, key, assistant, specs) for combo in combos]
            for row in dataset[1] if dataset else [None]:
                base = f"{parts.name}/{conv.id}" + (f"/{row.id}" if row else "")
                at_row = (dataset[0], row) if dataset and row else None
                if at_row and not self._has(at_row, from_rows, conv.id):
                    continue
                row_vars = {**conv.vars, **row.values} if row else dict(conv.vars)
                rendered: dict[tuple[Any, ...], tuple[TurnSpec, ...]] = {}  # by matrix var values
                for combo, fixed, combo_vars, matrix_id in per_combo:
                    vars = {**row_vars, **combo_vars} if combo_vars else row_vars
                    turns = static or rendered.get(tuple(combo_vars.values()))
                    if turns is None:
                        turns = rendered[tuple(combo_vars.values())] = self._turns(plans, vars, at_row)
                    expect = tuple(self._check(c, vars, at_row) if c.templated else c.spec for c in final)
                    grader = self._grader(fixed) if graded else None
                    tasks.extend(
                        _construct(
                            ConversationTask,
                            conversation_id=f"{base}{matrix_id}#r{r}",
                            repeat_index=r,
                            vars=vars,
                            matrix=combo,
                            turns=turns,
                            tool_outputs=outputs,
                            expect=expect,
                            grader=grader,
                            **fixed,
                        )
                        for r in range(parts.repeat)
                    )
        return tasks

    def _combo(
        self, combo: dict[str, Any], key: str, assistant: Assistant, specs: dict[Any, AssistantSpec]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
        """What one matrix combination fixes: model, api, assistant spec, its vars, its id part."""
        parts = self.checker.parts
        model = combo.get("model") or assistant.model or parts.model or ""
        temperature = combo.get("temperature", assistant.temperature)
        overrides = {k: combo[k] for k in GENERATION_MATRIX_KEYS if k in combo}
        at = (key, model, temperature, *sorted(overrides.items()))
        spec = specs.get(at)
        if spec is None:
            tools = tuple(t.model_dump(exclude_none=True) for t in assistant.tools)
            spec = specs[at] = AssistantSpec(
                key=key, name=assistant.name or key, model=model, id=assistant.id,
                instructions=assistant.instructions, temperature=temperature, tools=tools,
                **{**assistant.generation(), **overrides},
                adopt=assistant.adopt,
            )  # fmt: skip
        api = Api(combo.get("api", parts.api))
        fixed = {"job": parts.name, "api": api, "model": model, "assistant": spec, "limits": parts.limits}
        combo_vars = {k: v for k, v in combo.items() if k not in MATRIX_KEYS}
        return combo, fixed, combo_vars, "".join(f"#{k}={fmt(v)}" for k, v in combo.items())

    def _grader(self, fixed: dict[str, Any]) -> GraderSpec:
        """The job's `grader:` for one matrix combination (model and api default to its own)."""
        g, api = self.checker.parts.grader, fixed["api"]
        default_api = Api.RESPONSES if api is Api.RESPONSES else Api.CHAT
        if g is None:
            return GraderSpec(model=fixed["model"], api=default_api, temperature=0)
        return GraderSpec(
            model=g.model or fixed["model"], api=Api(g.api) if g.api else default_api,
            temperature=g.temperature, prompt=g.prompt, embedding_model=g.embedding_model,
        )  # fmt: skip

    def _plan_check(self, check: Any, at: Loc) -> _CheckPlan:
        spec = check.spec()
        if spec.type == "python":  # resolved and hashed now, so a worker can verify it
            spec = _construct(CheckSpec, type=spec.type, value=self.checker.python_check(at, spec.value))
        split = TEMPLATE.split(spec.value) if isinstance(spec.value, str) else None
        return _CheckPlan(spec, spec.type != "python" and any(names_in(spec.value)), at, split)

    def _conversation_checks(self, i: int, conv: Conversation) -> list[_CheckPlan]:
        at = ("conversations", i, "expect")
        return [self._plan_check(c, (*at, k, c.spec().type)) for k, c in enumerate(conv.expect)]

    def _plans(self, i: int, conv: Conversation) -> list[_TurnPlan]:
        """The turns with what needs rendering marked, so each row renders only that."""
        plans = []
        for j, turn in enumerate(conv.turns):
            checks = []
            for k, check in enumerate(turn.expect):
                at = ("conversations", i, "turns", j, "expect", k, check.spec().type)
                checks.append(self._plan_check(check, at))
            user = TEMPLATE.split(turn.user)
            templated = len(user) > 1
            fixed = None if templated or any(c.templated for c in checks) else _turn_spec(turn.user, checks)
            plans.append(_TurnPlan(user, templated, tuple(checks), fixed))
        return plans

    def _has(self, at_row: tuple[str, Row], names: set[str], conv_id: str) -> bool:
        """Does the row give every var the conversation takes from rows? (reported if not)"""
        shown, row = at_row
        missing = sorted(names - row.values.keys())
        if missing:
            names_ = ", ".join(f"{{{{{m}}}}}" for m in missing)
            what = f"no value for {names_} (used by conversation {conv_id!r})"
            self.checker.problems.append(Problem(shown, row.line, f"row {row.number}", what))
        return not missing

    def _turns(
        self, plans: list[_TurnPlan], vars: dict[str, Any], at_row: tuple[str, Row] | None
    ) -> tuple[TurnSpec, ...]:
        return tuple(
            p.fixed
            or _construct(
                TurnSpec,
                user=fill(p.user, vars),
                expect=tuple(self._check(c, vars, at_row) if c.templated else c.spec for c in p.checks),
            )
            for p in plans
        )

    def _check(self, plan: _CheckPlan, vars: dict[str, Any], at_row: tuple[str, Row] | None) -> CheckSpec:
        value = render(plan.spec.value, vars) if plan.parts is None else fill(plan.parts, vars)
        rendered_matters = plan.spec.type in ("regex", "not_regex", "json_schema")
        problem = check_value_problem(plan.spec.type, value) if rendered_matters else None
        if problem and at_row:
            what = f"{where(plan.at)}: {problem} (after filling in this row)"
            self.checker.problems.append(Problem(at_row[0], at_row[1].line, f"row {at_row[1].number}", what))
        elif problem:
            self.checker.problems.append(
                self.checker.loc.at(plan.at, f"{problem} (after filling in the vars)")
            )
        return _construct(CheckSpec, type=plan.spec.type, value=value)
