"""The schedules as Redis holds them: key names, tick ids, and what `runner status` shows of them.

The `Scheduler` (`runner.queue.scheduler`) writes a state hash per scheduled job; this module reads
them back for `runner status` without loading the scheduler.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis as redis_lib

from runner.errors import QueueError, UnknownBatchError
from runner.queue.enqueue import batch_status

KEY_PREFIX = "runner:schedule:"
"""Per job: `<prefix><job>` (state hash), `<prefix><job>:lease`, `<prefix><job>:tick:<iso>`."""
SCHEDULES_KEY = "runner:schedules"
"""Set of the job names any scheduler has registered (what `runner status` lists)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    """A tick as a stable UTC key: `2026-11-27T06:00:00Z`."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_batch_id(name: str, tick: datetime) -> str:
    """The batch id of a job's tick: the same on every scheduler, so a tick maps to one batch."""
    return f"{name}-{tick.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def schedule_status(redis: redis_lib.Redis) -> list[dict[str, Any]]:
    """The schedules known to this Redis (for `runner status`), one dict per job, sorted by name.

    Keys: `job`, `cron`, `source`, `next_tick`, `last_tick`, `last_batch`, `last_status` (enqueuing |
    enqueued | error), `last_error`, `holder` (the scheduler holding the lease, None when none runs),
    `result` (the last batch's figures from `runner.queue.batch_status`, None once it expired) and
    `summary` (one line for a table: the last batch's state and counts, or the enqueue error).
    """
    rows: list[dict[str, Any]] = []
    try:
        for name in sorted(decoded(n) for n in redis.smembers(SCHEDULES_KEY)):
            h = {decoded(k): decoded(v) for k, v in redis.hgetall(f"{KEY_PREFIX}{name}").items()}
            holder = redis.get(f"{KEY_PREFIX}{name}:lease")
            row: dict[str, Any] = {"job": name, "holder": decoded(holder) if holder is not None else None}
            for key in (
                "cron",
                "source",
                "next_tick",
                "last_tick",
                "last_batch",
                "last_status",
                "last_error",
            ):
                row[key] = h.get(key) or None
            try:
                row["result"] = batch_status(row["last_batch"], redis) if row["last_batch"] else None
            except (QueueError, UnknownBatchError):  # expired, or Redis away
                row["result"] = None
            row["summary"] = _summary(row)
            rows.append(row)
    except redis_lib.RedisError as err:
        raise QueueError(f"Redis unreachable: {err}") from err
    return rows


def _summary(row: dict[str, Any]) -> str:
    r = row["result"]
    if row["last_status"] == "error":
        return f"error: {row['last_error']}"
    if r is None:
        return row["last_status"] or "-"
    counts = f"{r['passed']} passed, {r['failed']} failed, {r['errors']} errors"
    if r["state"] in ("queued", "running"):
        return f"{r['state']} {r['done']}/{r['total']}: {counts}"
    return f"{r['state']}: {counts}" + (f" ({r['aborted']})" if r["aborted"] else "")


def decoded(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
