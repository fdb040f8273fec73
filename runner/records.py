"""The transcript record (one JSON object per line, one line per conversation) and JSONL I/O.

The record's required keys are fixed by the contract; more may be added. This module is the one
place that builds a record (`new_record`), decides whether it passed (`passed_of`), classifies it
(`outcome`: passed / failed / error / no checks) and reads or writes the JSONL format.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from runner.tasks import ConversationTask


class Status(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    INCOMPLETE = "incomplete"
    ERROR = "error"


class Outcome(StrEnum):
    """What a record means for the people reading it (every report, summary and counter)."""

    PASSED = "passed"  # completed, every check passed
    FAILED = "failed"  # completed, a check failed
    ERROR = "error"  # did not complete (error, failed, cancelled, expired, incomplete)
    NO_CHECKS = "no checks"  # completed, nothing checked


PASSED, FAILED, ERROR, NO_CHECKS = Outcome.PASSED, Outcome.FAILED, Outcome.ERROR, Outcome.NO_CHECKS


class Usage(TypedDict):
    """Token counts as the server reported them; None where it reported none (unknown, never 0)."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


class ToolCallRecord(TypedDict):
    name: str
    arguments: Any
    output: str | None


class CheckResult(TypedDict):
    type: str
    value: Any
    passed: bool
    detail: str | None
    # judge / python / similar checks: what the grader said (verdict "error": it could not grade)
    verdict: NotRequired[str | None]  # "pass" | "fail" | "error"
    score: NotRequired[float | None]  # judge score, python float, similar cosine
    label: NotRequired[str | None]  # judge with labels
    reason: NotRequired[str | None]  # the grader's (or the python check's) reason
    method: NotRequired[str | None]  # similar: "embeddings:<model>" or "lexical:token-cosine"


class GraderUsage(TypedDict):
    """What grading (judge and similar checks) cost, apart from the conversation's own usage."""

    prompt_tokens: int | None  # None: a grading answer came without usage
    completion_tokens: int | None
    total_tokens: int | None
    requests: int
    by_model: dict[str, Usage]  # for pricing: judge and embeddings models differ


class RetryRecord(TypedDict):
    cause: str
    wait_ms: int


class TurnRecord(TypedDict):
    index: int
    user: str
    assistant: str | None
    run_id: str | None
    run_status: str | None
    tool_calls: list[ToolCallRecord]
    usage: Usage
    latency_ms: int | None
    checks: list[CheckResult]
    error: NotRequired[str | None]
    grader_usage: NotRequired[GraderUsage | None]  # null: nothing was graded by a model
    via: NotRequired[str]  # "direct" | "batch" (the provider's Batch API)
    provider_batch_id: NotRequired[str | None]  # the provider batch that answered this turn
    # What the turn cost: API requests (retries and polls included), each retry with its cause
    # ("429", "503", "dropped", "timeout") and wait, time waiting for the rate limiter, and the
    # latency less the runner's own waiting (what `max_latency_ms` checks when present).
    requests: NotRequired[int]
    retries: NotRequired[list[RetryRecord]]
    limiter_wait_ms: NotRequired[int]
    server_latency_ms: NotRequired[int | None]


class AssistantRef(TypedDict):
    key: str
    name: str
    id: str | None


class Record(TypedDict):
    batch_id: str
    conversation_id: str
    job: str
    api: str
    model: str
    assistant: AssistantRef
    thread_id: str | None
    vars: dict[str, Any]
    status: str
    passed: bool | None
    turns: list[TurnRecord]
    usage: Usage
    attempts: int
    error: str | None
    started_at: str
    finished_at: str
    requests: NotRequired[int]  # API requests this conversation cost (ours: for requests-per-turn figures)
    matrix: NotRequired[dict[str, Any]]
    repeat_index: NotRequired[int]
    checks: NotRequired[list[CheckResult]]  # conversation-level `expect:`, run after the last turn
    grader_usage: NotRequired[GraderUsage | None]  # every turn's and the conversation checks' grading


def empty_usage() -> Usage:
    """Nothing spent yet (known zeros)."""
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def unknown_usage() -> Usage:
    """A reply whose usage the server did not report."""
    return {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}


def add_usage(a: Usage, b: Usage) -> Usage:
    """The sum, key by key; unknown (None) if either side is: a conversation with one turn of
    unknown usage has an unknown total (a partial sum would pass for the whole)."""
    def plus(x: int | None, y: int | None) -> int | None:
        return None if x is None or y is None else x + y

    return {
        "prompt_tokens": plus(a["prompt_tokens"], b["prompt_tokens"]),
        "completion_tokens": plus(a["completion_tokens"], b["completion_tokens"]),
        "total_tokens": plus(a["total_tokens"], b["total_tokens"]),
    }


def _tokens_of(g: GraderUsage) -> Usage:
    return {"prompt_tokens": g["prompt_tokens"], "completion_tokens": g["completion_tokens"],
            "total_tokens": g["total_tokens"]}  # fmt: skip


def add_grader_usage(a: GraderUsage | None, b: GraderUsage | None) -> GraderUsage | None:
    """The sum of two grader usages; None (nothing graded) is the neutral element."""
    if a is None or b is None:
        return a or b
    by_model: dict[str, Usage] = dict(a["by_model"])
    for m, u in b["by_model"].items():
        by_model[m] = add_usage(by_model[m], u) if m in by_model else u
    tokens = add_usage(_tokens_of(a), _tokens_of(b))
    return {**tokens, "requests": a["requests"] + b["requests"], "by_model": by_model}


def outcome(record: Record) -> Outcome:
    if record["status"] != Status.COMPLETED:
        return Outcome.ERROR
    if record["passed"] is None:
        return Outcome.NO_CHECKS
    return Outcome.PASSED if record["passed"] else Outcome.FAILED


def passed_of(
    task: ConversationTask, status: str, turns: list[TurnRecord], checks: list[CheckResult] | None = None
) -> bool | None:
    """The record's `passed`: False when it did not complete or a check failed (a turn's or a
    conversation-level one), None when nothing was checked, True otherwise."""
    if status != Status.COMPLETED:
        return False
    if any(not c["passed"] for t in turns for c in t["checks"]) or any(not c["passed"] for c in checks or ()):
        return False
    if not any(turn.expect for turn in task.turns) and not task.expect:
        return None
    return True


def utc_stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_record(
    task: ConversationTask,
    *,
    batch_id: str,
    attempt: int,
    status: str,
    started: datetime,
    finished: datetime | None = None,
    turns: list[TurnRecord] | None = None,
    thread_id: str | None = None,
    error: str | None = None,
    requests: int | None = None,
    checks: list[CheckResult] | None = None,
    grader_usage: GraderUsage | None = None,
) -> Record:
    """The record of one conversation: the only place a record is put together."""
    turns = turns or []
    usage = empty_usage()
    for t in turns:
        usage = add_usage(usage, t["usage"])
    a = task.assistant
    record: Record = {
        "batch_id": batch_id,
        "conversation_id": task.conversation_id,
        "job": task.job,
        "api": task.api.value,
        "model": task.model,
        "assistant": {"key": a.key, "name": a.name, "id": a.id},
        "thread_id": thread_id,
        "vars": dict(task.vars),
        "status": status,
        "passed": passed_of(task, status, turns, checks),
        "turns": turns,
        "usage": usage,
        "attempts": attempt,
        "error": error,
        "started_at": utc_stamp(started),
        "finished_at": utc_stamp(finished or datetime.now(UTC)),
    }
    if requests is not None:
        record["requests"] = requests
    record["matrix"] = dict(task.matrix)
    record["repeat_index"] = task.repeat_index
    if task.expect or checks:
        record["checks"] = list(checks or [])
    graded = [t.get("grader_usage") for t in turns] + [grader_usage]
    if any(graded):
        total: GraderUsage | None = None
        for g in graded:
            total = add_grader_usage(total, g)
        record["grader_usage"] = total
    return record


def dumps(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=False)


def read_records(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Yield the records of a JSONL transcript file, skipping blank lines."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_records(path: str | os.PathLike[str], records: Iterable[Record]) -> int:
    """Write records atomically (temp file + rename) so a reader never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(dumps(record) + "\n")
            n += 1
    os.replace(tmp, target)
    return n


def new_batch_id(job_name: str, now: datetime | None = None) -> str:
    """`<job>-<UTC timestamp>-<4 hex>`: sorts by time, unique enough for one job's runs."""
    now = now or datetime.now(UTC)
    return f"{job_name}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"
