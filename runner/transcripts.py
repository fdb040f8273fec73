"""The transcript record (one JSON object per line, one line per conversation) and JSONL I/O.

The record's required keys are fixed by the contract; more may be added. `read_records` and
`write_records` are the only places that touch the JSONL format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, NotRequired, TypedDict


class Status(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    INCOMPLETE = "incomplete"
    ERROR = "error"


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
