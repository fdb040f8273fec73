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
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallRecord(TypedDict):
    name: str
    arguments: Any
    output: str | None


class CheckResult(TypedDict):
    type: str
    value: Any
    passed: bool
    detail: str | None


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


def empty_usage() -> Usage:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def add_usage(a: Usage, b: Usage) -> Usage:
    return {k: a[k] + b[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}  # type: ignore[return-value]


def outcome(record: Record) -> Outcome:
    if record["status"] != Status.COMPLETED:
        return Outcome.ERROR
    if record["passed"] is None:
        return Outcome.NO_CHECKS
    return Outcome.PASSED if record["passed"] else Outcome.FAILED


def passed_of(task: ConversationTask, status: str, turns: list[TurnRecord]) -> bool | None:
    """The record's `passed`: False when it did not complete or a check failed, None when nothing
    was checked, True otherwise."""
    if status != Status.COMPLETED:
        return False
    if any(not c["passed"] for t in turns for c in t["checks"]):
        return False
    if not any(turn.expect for turn in task.turns):
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
        "passed": passed_of(task, status, turns),
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
