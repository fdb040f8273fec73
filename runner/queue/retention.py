"""How long finished batches stay in Redis, and `runner gc`: drop them and compact the data file.

A finished (or aborted) batch has served its purpose once its JSONL is written; keeping its tasks
and records only grows the Redis (and, for the embedded one, its append-only file under
`.runner/`). `expire_finished` deletes every finished batch whose last change is older than the
retention, with its RQ jobs; `compact` asks Redis to rewrite its append-only file. Unfinished
batches are never touched (they are what `runner run` resumes). `runner run` on the embedded Redis
does both at start; `runner gc` does it now.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import redis as redis_lib

from runner.errors import UsageError
from runner.queue.batch import BATCHES_KEY, Batch
from runner.queue.conversations import job_id_for
from runner.queue.redis_server import retrying

DEFAULT_RETENTION = "1d"
"""Finished batches older than this are dropped by `runner gc` and at the start of `runner run`
(`RUNNER_RETENTION` or `runner gc --older-than` say otherwise)."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds from `90s`, `30m`, `12h`, `7d`, `2w` or a plain number of seconds (`0`: now)."""
    m = _DURATION.match(text)
    if not m:
        raise UsageError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d, 2w, or 0)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True)
class Expired:
    batches: list[str]
    kept_unfinished: int


def expire_finished(redis: redis_lib.Redis, older_than_s: float) -> Expired:
    """Delete the finished or aborted batches (their records and RQ jobs) whose last change is at
    least `older_than_s` old, by the Redis server's clock."""
    ids = [x.decode() if isinstance(x, bytes) else str(x) for x in redis.zrange(BATCHES_KEY, 0, -1)]
    removed, unfinished = [], 0
    for batch_id in ids:
        batch = Batch(redis, batch_id)
        info = batch.info()
        if info is None:  # expired by its TTL: only the index entry is left
            redis.zrem(BATCHES_KEY, batch_id)
            continue
        if not (info.finished or info.aborted):
            unfinished += 1
            continue
        last = info.ended_at or info.started_at or info.created_at
        if info.now - last < older_than_s:
            continue
        jobs = [job_id_for(batch_id, conv) for conv in batch.tasks()]
        pipe = redis.pipeline(transaction=False)
        for job_id in jobs:
            pipe.delete(f"rq:job:{job_id}", f"rq:results:{job_id}")
        pipe.delete(*batch.all_keys)
        pipe.zrem(BATCHES_KEY, batch_id)
        retrying(pipe.execute)
        removed.append(batch_id)
    return Expired(removed, unfinished)


COMPACT_WAIT_S = 30.0
"""`compact` waits this long for the rewrite (the embedded Redis stops right after `runner gc`)."""


def compact(redis: redis_lib.Redis, wait_s: float = COMPACT_WAIT_S) -> bool:
    """Rewrite the append-only file when there is one and wait (up to `wait_s`) for it to be done;
    whether a rewrite was made."""
    try:
        if redis.config_get("appendonly").get("appendonly") != "yes":
            return False
        redis.bgrewriteaof()
    except redis_lib.ResponseError:  # a rewrite already running, or CONFIG not allowed (managed Redis)
        return False
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        info = redis.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return True
        time.sleep(0.1)
    return True
