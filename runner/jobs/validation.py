"""Checks across keys of a job file; the same pass expands it (`runner.jobs.expansion`).

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
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from runner.errors import Problem
from runner.jobs.checks import Check
from runner.jobs.datasets import DATASET_SUFFIXES, Row, read_dataset
from runner.jobs.expansion import Expansion
from runner.jobs.models import (
    GENERATION_MATRIX_KEYS,
    MATRIX_KEYS,
    REASONING_EFFORTS,
    SEED_RANGE,
    VAR_PATTERN,
    Assistant,
    Conversation,
    FunctionChoice,
    Grader,
    Job,
    Loc,
    Turn,
)
from runner.jobs.pychecks import CHECK_CALL, PythonCheckError, resolve
from runner.jobs.templating import fmt, names_in
from runner.jobs.tooloutputs import TOOL_CALL, is_rule, rule_problem, task_rule
from runner.jobs.yamlload import Locator, YAMLProblems, suggest
from runner.tasks import Api, ConversationTask, Limits, ToolOutputRule


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
    grader: Grader | None = None

    @classmethod
    def of(cls, job: Job | None, data: dict[str, Any]) -> Parts:
        if job is not None:
            limits, convs = Limits(**job.limits.model_dump()), list(enumerate(job.conversations))
            a = job.assistants
            return cls(
                job.name, job.api, job.model, list(a), dict(a), convs, job.matrix, job.repeat, limits,
                grader=job.grader,
            )  # fmt: skip

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
        texts += [(("expect", k, c.spec().type), c.spec().value) for k, c in enumerate(conv.expect)]
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


def _matrix_value_problem(key: str, value: Any) -> str | None:
    if key == "api":
        apis = [a.value for a in Api]
        hint = suggest(str(value), apis)
        return None if value in apis else f"expected one of {', '.join(apis)}, got {value!r}{hint}"
    if key == "model":
        return None if isinstance(value, str) and value else f"a model is a non-empty string, got {value!r}"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key == "temperature":
        ok = number and 0 <= value <= 2
        return None if ok else f"a temperature is a number from 0 to 2, got {value!r}"
    if key == "top_p":
        return None if number and 0 <= value <= 1 else f"a top_p is a number from 0 to 1, got {value!r}"
    if key == "max_output_tokens":
        ok = number and isinstance(value, int) and value > 0
        return None if ok else f"max_output_tokens is a whole number above 0, got {value!r}"
    if key == "seed":
        ok = number and isinstance(value, int) and SEED_RANGE[0] <= value <= SEED_RANGE[1]
        return None if ok else f"a seed is a whole number (64-bit), got {value!r}"
    if key == "reasoning_effort":
        hint = suggest(str(value), REASONING_EFFORTS)
        ok = value in REASONING_EFFORTS
        return None if ok else f"expected one of {', '.join(REASONING_EFFORTS)}, got {value!r}{hint}"
    if isinstance(value, str | int | float) and value != "":
        return None
    return f"a matrix value is a non-empty string, a number or true/false, got {value!r}"


_UNUSED_WITH_ID = (
    "with `id` the existing assistant is used as it is: instructions and temperature here only serve the "
    "responses and chat APIs"
)

ONLY_CHAT = ("seed", "stop")
"""Generation parameters that only Chat Completions has (not runs, not responses: OpenAPI spec)."""
MIN_OUTPUT_TOKENS = {Api.ASSISTANTS: 256, Api.RESPONSES: 16}
"""The smallest token cap each API accepts (runs' `max_completion_tokens`, `max_output_tokens`)."""


def generation_problem(api: Api, key: str, value: Any) -> str | None:
    """Why generation parameter `key` = `value` cannot be sent on `api`, or None."""
    if key in ONLY_CHAT and api is not Api.CHAT:
        return f"the {api.value} API has no `{key}` (only chat has it)"
    least = MIN_OUTPUT_TOKENS.get(api)
    if key == "max_output_tokens" and least and isinstance(value, int) and value < least:
        field = "max_completion_tokens" if api is Api.ASSISTANTS else "max_output_tokens"
        return f"the {api.value} API wants at least {least} (its `{field}`), got {value}"
    return None


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
    _python: dict[tuple[str, str], dict[str, Any] | str] = field(default_factory=dict)  # resolved, or why not

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
        self._generation([k for k in parts.assistant_keys if k in used.values()])
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
        return Expansion(self).run(used)

    def _apis(self) -> list[Api]:
        """The APIs the job runs on: its matrix `api` values (those that are valid), or its `api`."""
        values = self.parts.matrix.get("api") or [self.parts.api]
        return [Api(v) for v in values if v in [a.value for a in Api]]

    def _generation(self, keys: list[str]) -> None:
        """Generation parameters the job's APIs lack or bound differently, on assistants and in the
        matrix; a `tool_choice` naming no function tool of its assistant."""
        apis = self._apis()
        for key in keys:
            a = self.parts.assistants.get(key)
            if a is None:
                continue
            for name, value in a.generation().items():
                for api in apis:
                    problem = generation_problem(api, name, value)
                    if problem:
                        self.problem(("assistants", key, name), f"{problem}; remove it or run on chat")
                        break
            if a.reasoning_effort and a.id and Api.ASSISTANTS in apis:
                self.warn(
                    ("assistants", key, "reasoning_effort"),
                    "with `id` the existing assistant is used as it is: on the assistants API "
                    "reasoning_effort is set on the assistant, so it goes unused there",
                )
            stateless = [api.value for api in apis if api is not Api.ASSISTANTS]
            for name in ("tool_choice", "parallel_tool_calls"):
                if getattr(a, name) is not None and not a.tools and stateless:
                    what = f"the {stateless[0]} API takes it only with `tools`"
                    self.problem(("assistants", key, name), what)
            choice = a.tool_choice
            functions = [t.function.name for t in a.tools if t.function is not None]
            if a.id is not None and not a.tools:
                continue  # its tools live on the server
            if isinstance(choice, FunctionChoice) and choice.function.name not in functions:
                has = ", ".join(functions) or "none"
                what = f"no function tool {choice.function.name!r}{suggest(choice.function.name, functions)}"
                self.problem(("assistants", key, "tool_choice", "function", "name"), f"{what}; it has: {has}")
            elif choice == "required" and not a.tools and not stateless:
                self.problem(("assistants", key, "tool_choice"), "required, but the assistant has no tools")
        for name in GENERATION_MATRIX_KEYS:
            values = self.parts.matrix.get(name) or []
            for n, value in enumerate(values):
                for api in apis:
                    problem = generation_problem(api, name, value)
                    if name == "reasoning_effort" and api is Api.ASSISTANTS:
                        problem = "the assistants API sets reasoning_effort on the assistant, not per run"
                    if problem:
                        self.problem(("matrix", name, n), problem)
                        break

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
            elif is_rule(value) and isinstance(value.get("by"), str):
                self._by_argument(at, key, name, value["by"], assistant)

    def _by_argument(self, at: Loc, key: str, name: str, by: str, assistant: Assistant) -> None:
        """`by` names an argument the function declares (a typo would always miss)."""
        fn = next(t.function for t in assistant.tools if t.function is not None and t.function.name == name)
        props = (fn.parameters or {}).get("properties")
        if isinstance(props, dict) and props and by not in props:
            names = [str(p) for p in props]
            self.problem(
                (*at, "by"),
                f"function {name!r} of assistant {key!r} has no parameter {by!r}{suggest(by, names)}; "
                f"it has: {', '.join(names)}",
            )

    def tool_rules(self, i: int, outputs: dict[str, Any]) -> dict[str, ToolOutputRule] | None:
        """The conversation's `tool_outputs` given by arguments (`runner.jobs.tooloutputs`), ready for
        its tasks; None when one is invalid (reported at its place)."""
        rules: dict[str, ToolOutputRule] = {}
        for name, value in outputs.items():
            if not is_rule(value):
                continue
            at: Loc = ("conversations", i, "tool_outputs", name)
            problem = rule_problem(value)
            if problem is not None:
                self.problem((*at, *problem[0]), problem[1])
                return None
            python = None
            if "python" in value:
                python = self.python_function((*at, "python"), str(value["python"]), TOOL_CALL)
                if python is None:
                    return None
            rules[name] = task_rule(value, python)
        return rules

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
        for name in dict.fromkeys(names_in(value)):
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
                    f"{key!r} is not a variable name (letters, digits, _) nor one of "
                    + ", ".join(MATRIX_KEYS),
                )
            if not values:
                self.problem(("matrix", key), "list at least one value")
            seen: set[str] = set()
            for n, value in enumerate(values):
                problem = _matrix_value_problem(key, value)
                if problem is None and fmt(value) in seen:
                    problem = f"{fmt(value)!r} is listed twice"
                if problem:
                    self.problem(("matrix", key, n), problem)
                    self.matrix_ok = False
                seen.add(fmt(value))

    def python_check(self, at: Loc, value: dict[str, Any]) -> dict[str, Any] | None:
        """A `python:` check's value with its function resolved and hashed (`runner.jobs.pychecks`),
        or None when it cannot be (reported at `at`)."""
        found = self.python_function(at, str(value.get("function", "")), CHECK_CALL)
        return None if found is None else {**value, **found}

    def python_function(self, at: Loc, ref: str, call: str) -> dict[str, Any] | None:
        """`ref` resolved and hashed (`runner.jobs.pychecks`), or None when it cannot be (reported
        at `at`). Each function is loaded once per file."""
        if (ref, call) not in self._python:
            try:
                if "{{" in ref:
                    raise PythonCheckError("a python function reference takes no {{var}}")
                self._python[ref, call] = resolve(ref, self.folder, call)
            except PythonCheckError as e:
                self._python[ref, call] = str(e)
            except Exception as e:  # the user's module raised while loading
                self._python[ref, call] = f"loading {ref} raised {type(e).__name__}: {e}"
        found = self._python[ref, call]
        if isinstance(found, str):
            self.problem(at, found)
            return None
        self._bytes[f"python-check:{ref}"] = found["sha256"].encode()  # a changed function: a new job
        return found

    def digest(self, raw: bytes) -> str:
        h = hashlib.sha256(raw)
        for _, data in sorted(self._bytes.items()):
            h.update(b"\0" + data)
        return h.hexdigest()
