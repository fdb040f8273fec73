"""Checks across keys, and the expansion of a validated job into conversation tasks.

What pydantic cannot see one key at a time is checked here against the whole job: conversations
naming assistants, unique ids, `{{var}}`s defined for every dataset row and matrix combination,
`tool_outputs` naming real function tools, the datasets themselves (with their own paths and
lines). The same pass builds the tasks, so a file that validates has already been expanded once.
An invalid conversation is still checked on the keys, turns and checks of it that validate on
their own (never on guesses: with invalid `vars` its `{{var}}`s go unchecked); only valid ones expand.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ValidationError,
)

from runner.errors import Problem
from runner.jobs.checks import Check, check_value_problem
from runner.jobs.models import (
    MATRIX_KEYS,
    TEMPLATE,
    VAR_PATTERN,
    Assistant,
    Conversation,
    Job,
    Loc,
    Turn,
)
from runner.jobs.yamlload import (
    DATASET_SUFFIXES,
    Locator,
    Row,
    YAMLProblems,
    read_dataset,
    suggest,
    where,
)
from runner.tasks import Api, AssistantSpec, CheckSpec, ConversationTask, Limits, TurnSpec

# --- checks across keys ------------------------------------------------------------------------------


@dataclass
class Parts:
    """What validated of a job: all of it, or (when it did not) the pieces that did on their own."""

    name: str
    api: Api
    model: str | None
    assistant_keys: list[str]
    assistants: dict[str, Assistant]
    conversations: list[tuple[int, Conversation]]
    matrix: dict[str, list[Any]]
    repeat: int = 1
    limits: Limits = field(default_factory=Limits)
    complete: bool = True  # False: the matrix is unknown, so undefined vars cannot be told
    partial: list[tuple[int, ConvParts]] = field(default_factory=list)  # what validated of invalid ones

    @classmethod
    def of(cls, job: Job | None, data: dict[str, Any]) -> Parts:
        if job is not None:
            limits, convs = Limits(**job.limits.model_dump()), list(enumerate(job.conversations))
            a = job.assistants
            return cls(job.name, job.api, job.model, list(a), dict(a), convs, job.matrix, job.repeat, limits)

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
        convs = [(i, valid(Conversation, v)) for i, v in enumerate(raw_convs)]
        partial = [(i, ConvParts.of_raw(raw_convs[i])) for i, c in convs if c is None]
        return cls(
            name=str(data.get("name")),
            api=Api(data["api"]) if data.get("api") in [a.value for a in Api] else Api.ASSISTANTS,
            model=data["model"] if isinstance(data.get("model"), str) else None,
            assistant_keys=list(raw_assistants),
            assistants={k: a for k, v in raw_assistants.items() if (a := valid(Assistant, v)) is not None},
            conversations=[(i, c) for i, c in convs if c is not None],
            matrix=matrix if matrix_ok else {},
            complete=matrix_ok or matrix is None,
            partial=partial,
        )


@dataclass(frozen=True)
class ConvParts:
    """What validated of one conversation, as the checks across keys need it."""

    id: str | None
    assistant: str | None
    assistant_ok: bool  # False: `assistant` did not validate, so which one is meant is unknown
    vars: dict[str, Any] | None  # None: did not validate, so which vars exist is unknown
    dataset: str | None
    dataset_ok: bool
    tool_outputs: dict[str, Any]
    texts: list[tuple[Loc, Any]]  # user texts and check values that validated, by place in the conversation

    @classmethod
    def of(cls, conv: Conversation) -> ConvParts:
        texts = [t for j, turn in enumerate(conv.turns) for t in _texts(j, turn.user, enumerate(turn.expect))]
        return cls(conv.id, conv.assistant, True, conv.vars, conv.dataset, True, conv.tool_outputs, texts)

    @classmethod
    def of_raw(cls, raw: Any) -> ConvParts:
        """The keys, turns and checks of an invalid conversation that validate on their own: pydantic
        checks each field apart, so a key without an error at its place is valid as it is."""
        bad = _bad_keys(Conversation, raw)
        if bad is None:
            return cls(None, None, False, None, None, False, {}, [])
        ok = {k: k not in bad for k in ("id", "assistant", "vars", "dataset", "tool_outputs")}
        texts: list[tuple[Loc, Any]] = []
        turns = raw.get("turns")
        for j, turn in enumerate(turns if isinstance(turns, list) else ()):
            texts += _raw_texts(j, turn)
        return cls(
            id=raw["id"] if ok["id"] and isinstance(raw.get("id"), str) else None,
            assistant=raw.get("assistant") if ok["assistant"] else None,
            assistant_ok=ok["assistant"],
            vars=raw.get("vars", {}) if ok["vars"] else None,
            dataset=raw.get("dataset") if ok["dataset"] else None,
            dataset_ok=ok["dataset"],
            tool_outputs=raw.get("tool_outputs", {}) if ok["tool_outputs"] else {},
            texts=texts,
        )


def _bad_keys(model: type[BaseModel], raw: Any) -> set[str | int] | None:
    """The keys of `raw` with a validation error (empty if it validates); None if it is no mapping."""
    if not isinstance(raw, dict):
        return None
    try:
        model.model_validate(raw)
    except ValidationError as e:
        locs = [err["loc"] for err in e.errors()]
        return None if () in locs else {loc[0] for loc in locs}
    return set()


def _texts(j: int, user: str | None, expect: Iterable[tuple[int, Check]]) -> Iterable[tuple[Loc, Any]]:
    """Where a turn's `{{var}}`s may be, and their text (a user message, check values)."""
    if user is not None:
        yield ("turns", j, "user"), user
    for k, check in expect:
        spec = check.spec()
        yield ("turns", j, "expect", k, spec.type), spec.value


def _raw_texts(j: int, turn: Any) -> list[tuple[Loc, Any]]:
    """`_texts` of the parts of a turn that validate (a check is valid or invalid on its own)."""
    bad = _bad_keys(Turn, turn)
    if bad is None:
        return []
    if not bad:
        valid = Turn.model_validate(turn)
        return list(_texts(j, valid.user, enumerate(valid.expect)))
    user = turn.get("user") if "user" not in bad else None  # a number: valid, but no `{{var}}` in it
    checks: list[tuple[int, Check]] = []
    expect = turn.get("expect")
    for k, raw in enumerate(expect if isinstance(expect, list) else ()):
        with contextlib.suppress(ValidationError):
            checks.append((k, Check.model_validate(raw)))
    return list(_texts(j, user if isinstance(user, str) else None, checks))


def _names(value: Any) -> Iterable[str]:
    """Every `{{name}}` in a string, or in the strings nested in a mapping/list."""
    if isinstance(value, str):
        yield from TEMPLATE.findall(value)
    elif isinstance(value, dict | list | tuple):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _names(v)


def _fmt(value: Any) -> str:
    """A value's text in a turn, a check value or an id."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: ""}[value]
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _render(value: Any, vars: dict[str, Any]) -> Any:
    """`{{name}}` replaced in a string, or in the strings nested in a mapping/list."""
    if isinstance(value, str):
        has = "{{" in value
        return TEMPLATE.sub(lambda m: _fmt(vars[m[1]]) if m[1] in vars else m[0], value) if has else value
    if isinstance(value, dict):
        return {k: _render(v, vars) for k, v in value.items()}
    return [_render(v, vars) for v in value] if isinstance(value, list | tuple) else value


def _fill(parts: list[str], vars: dict[str, Any]) -> str:
    """Render a template already split by TEMPLATE (names at odd indices); unknown names stay."""
    out = parts.copy()
    for n in range(1, len(parts), 2):
        out[n] = _fmt(vars[parts[n]]) if parts[n] in vars else "{{" + parts[n] + "}}"
    return "".join(out)


def _matrix_value_problem(key: str, value: Any) -> str | None:
    if key == "api":
        apis = [a.value for a in Api]
        hint = suggest(str(value), apis)
        return None if value in apis else f"expected one of {', '.join(apis)}, got {value!r}{hint}"
    if key == "model":
        return None if isinstance(value, str) and value else f"a model is a non-empty string, got {value!r}"
    if key == "temperature":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 2
        return None if ok else f"a temperature is a number from 0 to 2, got {value!r}"
    if isinstance(value, str | int | float) and value != "":
        return None
    return f"a matrix value is a non-empty string, a number or true/false, got {value!r}"


_UNUSED_WITH_ID = (
    "with `id` the existing assistant is used as it is: instructions and temperature here only serve the "
    "responses and chat APIs"
)


@dataclass
class Checker:
    """Checks across keys (assistants, ids, vars, datasets, matrix), then the expansion itself."""

    parts: Parts
    loc: Locator
    folder: Path
    datasets: dict[int, tuple[str, list[Row]]] | None = None  # conversation index -> (shown path, rows)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    used_vars: set[str] = field(default_factory=set)
    matrix_ok: bool = True
    _bytes: dict[str, bytes] = field(default_factory=dict)

    def problem(self, loc: Loc, what: str) -> None:
        self.problems.append(self.loc.at(loc, what))

    def warn(self, loc: Loc, what: str) -> None:
        self.warnings.append(self.loc.at(loc, f"warning: {what}"))

    def run(self) -> list[ConversationTask]:
        # The expansion allocates many small objects that all live on: pausing the cyclic GC,
        # which would scan them again and again, saves about a quarter of the time.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if paused:
                gc.enable()

    def _run(self) -> list[ConversationTask]:
        parts, load = self.parts, self.datasets is None
        self.datasets = self.datasets or {}
        self._matrix()
        first_id: dict[str, int] = {}
        used: dict[int, str] = {}
        views = [(i, ConvParts.of(c)) for i, c in parts.conversations] + parts.partial
        for i, conv in sorted(views, key=lambda v: v[0]):
            at: Loc = ("conversations", i)
            if conv.id is not None and conv.id in first_id:
                self.problem(
                    (*at, "id"), f"duplicate conversation id {conv.id!r} (first at line {first_id[conv.id]})"
                )
            elif conv.id is not None:
                first_id[conv.id] = self.loc.line((*at, "id")) or 0
            for name in conv.vars or {}:
                if not re.match(VAR_PATTERN, name):
                    self.problem((*at, "vars", name), f"{name!r} is not a variable name (letters, digits, _)")
            if load and conv.dataset is not None:
                self._load_dataset(i, conv.dataset)
            key = self._assistant(i, conv) if conv.assistant_ok else None
            if key is not None:
                used[i] = key
                self._tool_outputs(i, conv, key)
            self._vars(i, conv)
        only_assistants_api = parts.api == Api.ASSISTANTS and "api" not in parts.matrix
        for key in parts.assistant_keys:
            a = parts.assistants.get(key)
            if key not in used.values():
                if parts.conversations and parts.complete:
                    self.warn(("assistants", key), "no conversation uses this assistant")
            elif a and a.model is None and parts.model is None and "model" not in parts.matrix:
                self.problem(
                    ("assistants", key), "no model: set `model` on it or on the job, or a matrix `model`"
                )
            elif a and a.id and (a.instructions or a.temperature is not None) and only_assistants_api:
                self.warn(("assistants", key, "id"), _UNUSED_WITH_ID)
        for key in parts.matrix:
            if key not in MATRIX_KEYS and key not in self.used_vars and re.match(VAR_PATTERN, key):
                hint = suggest(key, MATRIX_KEYS)
                self.warn(
                    ("matrix", key),
                    f"{{{{{key}}}}} is used nowhere{hint}; conversations still run once per value",
                )
        return _Expansion(self).run(used)

    def _assistant(self, i: int, conv: ConvParts) -> str | None:
        keys = self.parts.assistant_keys
        if conv.assistant is None and len(keys) > 1:
            self.problem(
                ("conversations", i),
                f"name an assistant with `assistant:`; the job has several: {', '.join(keys)}",
            )
        elif conv.assistant is not None and conv.assistant not in keys:
            known = f"{suggest(conv.assistant, keys)}; defined: {', '.join(keys)}"
            self.problem(("conversations", i, "assistant"), f"unknown assistant {conv.assistant!r}{known}")
        elif keys:
            return conv.assistant or keys[0]
        return None

    def _tool_outputs(self, i: int, conv: ConvParts, key: str) -> None:
        assistant = self.parts.assistants.get(key)
        if assistant is None or (assistant.id is not None and not assistant.tools):
            return  # invalid (reported), or an existing assistant whose tools live on the server
        functions = [t.function.name for t in assistant.tools if t.function is not None]
        for name, value in conv.tool_outputs.items():
            at = ("conversations", i, "tool_outputs", name)
            if name not in functions:
                has = f"it has: {', '.join(functions)}" if functions else "it has none"
                self.problem(
                    at, f"assistant {key!r} has no function tool {name!r}{suggest(name, functions)}; {has}"
                )
            elif value is None:
                self.problem(at, "needs an output (a string, or data sent as JSON)")

    def _load_dataset(self, i: int, dataset: str) -> None:
        """Read a conversation's dataset; problems inside it are located in it."""
        assert self.datasets is not None
        path = self.folder / dataset
        shown, at = str(path), ("conversations", i, "dataset")
        if path.suffix.lower() not in DATASET_SUFFIXES:
            self.problem(
                at, f"unsupported dataset type {path.suffix or path.name!r}; use .jsonl, .csv, .yaml or .yml"
            )
        elif not path.is_file():
            self.problem(at, f"dataset {'is not a file' if path.exists() else 'not found'}: {shown}")
        else:
            try:
                rows, raw = read_dataset(path, shown)
            except YAMLProblems as e:
                self.problems += e.problems
                return
            self.datasets[i] = (shown, rows)
            self._bytes[str(path.resolve())] = raw

    def _vars(self, i: int, conv: ConvParts) -> None:
        if conv.vars is None or not conv.dataset_ok:
            return  # which vars the conversation defines is unknown: no guessing
        defined = set(conv.vars) | {k for k in self.parts.matrix if k not in MATRIX_KEYS}
        if conv.dataset is not None:
            if self.datasets is None or i not in self.datasets:
                return  # the dataset could not be read: its columns are unknown
            for row in self.datasets[i][1]:
                defined.update(row.values)
        for at, value in conv.texts:
            self._defined(("conversations", i, *at), value, defined)

    def _defined(self, at: Loc, value: Any, defined: set[str]) -> None:
        for name in dict.fromkeys(_names(value)):
            self.used_vars.add(name)
            if name not in defined and self.parts.complete:
                known = f"; defined: {', '.join(sorted(defined))}" if defined else ""
                how = "(define it in `vars`, a dataset column or a matrix key)"
                self.problem(
                    at, f"{{{{{name}}}}} is not defined{suggest(name, sorted(defined))}{known} {how}"
                )

    def _matrix(self) -> None:
        for key, values in self.parts.matrix.items():
            if not re.match(VAR_PATTERN, key):
                self.problem(
                    ("matrix", key),
                    f"{key!r} is not a variable name (letters, digits, _) nor model/api/temperature",
                )
            if not values:
                self.problem(("matrix", key), "list at least one value")
            seen: set[str] = set()
            for n, value in enumerate(values):
                problem = _matrix_value_problem(key, value)
                if problem is None and _fmt(value) in seen:
                    problem = f"{_fmt(value)!r} is listed twice"
                if problem:
                    self.problem(("matrix", key, n), problem)
                    self.matrix_ok = False
                seen.add(_fmt(value))

    def digest(self, raw: bytes) -> str:
        h = hashlib.sha256(raw)
        for _, data in sorted(self._bytes.items()):
            h.update(b"\0" + data)
        return h.hexdigest()


# --- expansion -------------------------------------------------------------------------------------


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
class _Expansion:
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
        specs: dict[tuple[str, str, float | None], AssistantSpec] = {}
        for i, conv in parts.conversations:
            key, dataset = assistant_of.get(i), datasets.get(i)
            assistant = parts.assistants.get(key or "")
            if key is None or assistant is None or (conv.dataset is not None and dataset is None):
                continue
            plans = self._plans(i, conv)
            needed = {n for p in plans for n in p.user[1::2]}
            needed.update(n for p in plans for c in p.checks if c.templated for n in _names(c.spec.value))
            from_rows = needed - set(conv.vars) - matrix_vars
            static = None if needed else self._turns(plans, {}, None)
            outputs = {k: v if isinstance(v, str) else json.dumps(v) for k, v in conv.tool_outputs.items()}
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
                    tasks.extend(
                        _construct(
                            ConversationTask,
                            conversation_id=f"{base}{matrix_id}#r{r}",
                            repeat_index=r,
                            vars=vars,
                            matrix=combo,
                            turns=turns,
                            tool_outputs=outputs,
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
        spec = specs.get((key, model, temperature))
        if spec is None:
            tools = tuple(t.model_dump(exclude_none=True) for t in assistant.tools)
            spec = specs[(key, model, temperature)] = AssistantSpec(
                key=key, name=assistant.name or key, model=model, id=assistant.id,
                instructions=assistant.instructions, temperature=temperature, tools=tools,
            )  # fmt: skip
        api = Api(combo.get("api", parts.api))
        fixed = {"job": parts.name, "api": api, "model": model, "assistant": spec, "limits": parts.limits}
        combo_vars = {k: v for k, v in combo.items() if k not in MATRIX_KEYS}
        return combo, fixed, combo_vars, "".join(f"#{k}={_fmt(v)}" for k, v in combo.items())

    @staticmethod
    def _plans(i: int, conv: Conversation) -> list[_TurnPlan]:
        """The turns with what needs rendering marked, so each row renders only that."""
        plans = []
        for j, turn in enumerate(conv.turns):
            checks = []
            for k, check in enumerate(turn.expect):
                spec = check.spec()
                at = ("conversations", i, "turns", j, "expect", k, spec.type)
                split = TEMPLATE.split(spec.value) if isinstance(spec.value, str) else None
                checks.append(_CheckPlan(spec, any(_names(spec.value)), at, split))
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
                user=_fill(p.user, vars),
                expect=tuple(self._check(c, vars, at_row) if c.templated else c.spec for c in p.checks),
            )
            for p in plans
        )

    def _check(self, plan: _CheckPlan, vars: dict[str, Any], at_row: tuple[str, Row] | None) -> CheckSpec:
        value = _render(plan.spec.value, vars) if plan.parts is None else _fill(plan.parts, vars)
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
