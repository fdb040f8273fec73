"""Loading a job file: read, validate with line numbers, expand; and the job file's JSON Schema.

`load_job(path)` reads a job file (via `yamlload`), validates it against the models (`models`),
checks it across keys and expands it once (`expansion`), so every problem of the file and of its
datasets is reported together in one `JobFileError`. `expand(job)` then gives the tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner.errors import JobFileError, Problem
from runner.jobs.checks import CHECK_TYPES, Check
from runner.jobs.models import Job
from runner.jobs.validation import Checker, Parts
from runner.jobs.yamlload import (
    MAX_YAML_BYTES,
    Locator,
    YAMLProblems,
    decode,
    load_yaml,
    model_at,
    problems_from,
    read_bytes,
    suggest,
)
from runner.tasks import AssistantSpec, ConversationTask


def load_job(path: str | Path) -> Job:
    """Read, validate and expand a job file; raises JobFileError holding every problem found."""
    source, shown = Path(path), str(path)
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
    checker = Checker(Parts.of(job, data), loc, source.parent)
    tasks = checker.run()
    problems += checker.problems
    if problems:
        raise JobFileError(sorted(problems, key=lambda p: (p.path != shown, p.path, p.line or math.inf)))
    assert job is not None
    job._source, job._digest, job._tasks = source, checker.digest(raw), tasks
    job._datasets, job._warnings = checker.datasets, checker.warnings
    return job


def expand(job: Job) -> list[ConversationTask]:
    """The job's tasks: conversation × dataset row × matrix combination (sorted keys) × repeat."""
    if job._tasks is None:  # a Job built in Python rather than by load_job
        checker = Checker(Parts.of(job, {}), Locator(str(job.source)), job.source.parent, job._datasets)
        tasks = checker.run()
        if checker.problems:
            raise JobFileError(checker.problems)
        job._tasks, job._datasets = tasks, checker.datasets
    return list(job._tasks)


def assistant_specs(job: Job) -> list[AssistantSpec]:
    """The distinct assistants the tasks use (a matrix over model/temperature gives several)."""
    return list(
        {
            (t.assistant.key, t.assistant.model, t.assistant.temperature): t.assistant for t in expand(job)
        }.values()
    )


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a job file (what `runner schema` prints)."""
    schema = Job.model_json_schema()
    rules = schema["$defs"].get("SimulatorRules", {}).get("properties", {}).get("rules")
    if isinstance(rules, dict):  # runner.simulator.rules leaves it undescribed
        rules.setdefault(
            "description", "Reply rules; the first whose `when` matches the latest user message wins."
        )
    return {"$schema": schema.pop("$schema"), **schema}


def _unknown_key(at: Sequence[str | int], key: str, valid: list[str]) -> str | None:
    if model_at(Job, at) is Check:
        return f"unknown check type {key!r}{suggest(key, valid)}; valid types: {', '.join(CHECK_TYPES)}"
    return None
