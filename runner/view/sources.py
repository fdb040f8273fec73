"""What the view shows: conversations of a batch (from Redis) or of a transcript file, indexed for
filtering, sorting and paging.

A `ConversationIndex` keeps one small `Row` per conversation (what a list needs: outcome, state,
latency, tokens, the failed check types, the text to search) next to the full records, so a page
of a 10,000-conversation batch is a filter over rows, never a re-read of every record. A batch's
index follows the batch incrementally: records arrive through the batch's arrival log (the same
`records_since` the collector uses), states are re-read from one hash.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis as redis_lib

from runner.queue.batch import Batch
from runner.records import Outcome, Record, outcome
from runner.reports.summary import conversation_ms, load_transcripts

T = TypeVar("T")

PAGE_SIZE = 50
"""Conversations per page of a list."""

STATUS_FILTERS = ("all", "passed", "failed", "error", "no checks", "problems", "queued", "running", "dropped")
SORTS = ("id", "latency", "tokens")


@dataclass(frozen=True)
class Row:
    """One conversation as a list shows it."""

    id: str
    state: str  # queued | running | done | dropped (a file's conversations are all done)
    outcome: str | None  # passed | failed | error | no checks; None until its record arrives
    status: str | None
    model: str
    turns: int
    checks: str  # "3/4"
    failed_checks: frozenset[str]
    latency_ms: float | None
    tokens: int | None
    text: str  # lower-cased id, model, user and assistant text, errors: what the search box searches


def row_of(record: Record, state: str = "done") -> Row:
    checks = [c for t in record["turns"] for c in t["checks"]]
    parts = [record["conversation_id"], record["model"], record.get("error") or ""]
    for t in record["turns"]:
        parts += [t["user"] or "", t["assistant"] or "", t.get("error") or ""]
    usage = record.get("usage") or {}
    return Row(
        id=record["conversation_id"],
        state=state,
        outcome=str(outcome(record)),
        status=record["status"],
        model=record["model"],
        turns=len(record["turns"]),
        checks=f"{sum(c['passed'] for c in checks)}/{len(checks)}" if checks else "-",
        failed_checks=frozenset(c["type"] for c in checks if not c["passed"]),
        latency_ms=conversation_ms(record),
        tokens=usage.get("total_tokens"),
        text="\n".join(parts).lower(),
    )


def _pending_row(conversation_id: str, state: str) -> Row:
    return Row(
        conversation_id, state, None, None, "", 0, "-", frozenset(), None, None, conversation_id.lower()
    )


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    matched: int
    total: int
    page: int
    pages: int


class ConversationIndex:
    """Rows and records of one batch or file; thread-safe (the server answers in threads)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.records: dict[str, Record] = {}
        self.lock = threading.Lock()
        self.version = 0  # bumped when records change: what is derived from them can be cached
        self.cache: dict[str, tuple[int, object]] = {}

    def add(self, records: Iterable[Record], states: dict[str, str] | None = None) -> None:
        with self.lock:
            for r in records:
                cid = r["conversation_id"]
                self.records[cid] = r
                self.rows[cid] = row_of(r, (states or {}).get(cid, "done"))
                self.version += 1

    def derived(self, name: str, build: Callable[[list[Record]], T]) -> T:
        """`build(records)`, computed again only when the records changed (charts of 10,000)."""
        with self.lock:
            hit = self.cache.get(name)
            if hit is not None and hit[0] == self.version:
                return hit[1]  # type: ignore[return-value]
            version, records = self.version, list(self.records.values())
        value = build(records)
        with self.lock:
            self.cache[name] = (version, value)
        return value

    def set_states(self, states: dict[str, str]) -> None:
        with self.lock:
            for cid, state in states.items():
                row = self.rows.get(cid)
                if row is None or (row.outcome is None and row.state != state):
                    self.rows[cid] = _pending_row(cid, state)
                elif row.state != state:
                    self.rows[cid] = Row(**{**row.__dict__, "state": state})

    def failed_check_types(self) -> list[str]:
        with self.lock:
            return sorted({t for row in self.rows.values() for t in row.failed_checks})

    def query(
        self,
        *,
        status: str = "all",
        check: str = "",
        q: str = "",
        sort: str = "id",
        desc: bool = False,
        page: int = 1,
        per_page: int = PAGE_SIZE,
    ) -> Page:
        with self.lock:
            rows = list(self.rows.values())
        total = len(rows)
        if status == "problems":
            rows = [r for r in rows if r.outcome in (Outcome.FAILED, Outcome.ERROR)]
        elif status in ("queued", "running", "dropped"):
            rows = [r for r in rows if r.state == status]
        elif status != "all":
            rows = [r for r in rows if r.outcome == status]
        if check:
            rows = [r for r in rows if check in r.failed_checks]
        needle = q.strip().lower()
        if needle:
            rows = [r for r in rows if needle in r.text]
        if sort in ("latency", "tokens"):
            value = (lambda r: r.latency_ms) if sort == "latency" else (lambda r: r.tokens)
            known = sorted(
                (r for r in rows if value(r) is not None), key=lambda r: (value(r), r.id), reverse=desc
            )
            rows = known + sorted((r for r in rows if value(r) is None), key=lambda r: r.id)  # unknown last
        else:
            rows.sort(key=lambda r: r.id, reverse=desc)
        pages = max(1, -(-len(rows) // per_page))
        page = min(max(1, page), pages)
        return Page(rows[(page - 1) * per_page : page * per_page], len(rows), total, page, pages)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BatchSource:
    """A batch on Redis, followed incrementally (see the module docstring)."""

    def __init__(self, redis: redis_lib.Redis, batch_id: str) -> None:
        self.batch = Batch(redis, batch_id)
        self.index = ConversationIndex()
        self._offset = 0
        self._refresh = threading.Lock()

    def refresh(self) -> ConversationIndex:
        with self._refresh:
            redis = self.batch.redis
            while True:
                offset, records = self.batch.records_since(self._offset)
                if offset == self._offset:
                    break
                self._offset = offset
                self.index.add(records.values())
            raw = redis.hgetall(self.batch.keys["state"])
            self.index.set_states({_text(k): _text(v) for k, v in raw.items()})
        return self.index


class FileSource:
    """A JSONL transcript file; read again when it changes on disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.index = ConversationIndex()
        self._stamp: tuple[float, int] | None = None
        self._refresh = threading.Lock()

    @property
    def name(self) -> str:
        return self.path.name

    def refresh(self) -> ConversationIndex:
        with self._refresh:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                index = ConversationIndex()
                index.add(load_transcripts(self.path))  # UsageError `PATH:LINE: what` when broken
                self.index, self._stamp = index, stamp
        return self.index
