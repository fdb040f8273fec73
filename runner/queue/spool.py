"""The local spool: records finished while Redis was unreachable wait on disk until it is back.

A worker whose store fails (Redis away past a short wait) writes the record to
`<RUNNER_HOME>/spool/<job id>-<token>.json` (written to a temporary file, fsynced, renamed, the
directory fsynced: a crash leaves the whole file or none). The conversation's own thread delivers
it as soon as Redis answers (while its worker still holds the job's lease), and every worker of
this RUNNER_HOME delivers whatever is left at start and after each beat that reached Redis (records
of a worker that gave up on Redis, or died): always through the fenced store (`Batch.store_fenced`).
First record wins, so a redelivery after a crash between store and delete is harmless, and a record
whose run was fenced meanwhile (its job re-run elsewhere) is refused and counted (`fenced`). A file
is deleted only once Redis answered for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import redis as redis_lib

from runner.queue.batch import Batch
from runner.records import Record

log = logging.getLogger("runner.queue.spool")

STORE_WAIT_S = 2.0
"""How long a worker tries to store a record before it spools it."""


def spool_dir(home: Path) -> Path:
    return home / "spool"


def put(
    home: Path, batch_id: str, generation: int, fence: tuple[str, int], job_id: str, record: Record
) -> Path:
    """Keep `record` on disk until `deliver` stores it."""
    directory = spool_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job_id}-{fence[1]}.json"
    tmp = path.with_suffix(".tmp")
    body = {"batch": batch_id, "generation": generation, "fence": list(fence), "record": record}
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    log.warning("Redis unreachable: record of job %s spooled to %s", job_id, path)
    return path


def pending(home: Path) -> int:
    """How many records wait in the spool."""
    directory = spool_dir(home)
    return len(list(directory.glob("*.json"))) if directory.is_dir() else 0


def deliver(redis: redis_lib.Redis, home: Path, *, job_id: str | None = None) -> int:
    """Store every spooled record (or only `job_id`'s) through the fenced store; how many were
    stored. Stored, duplicate or fenced (refused: counted by the store), the file goes; Redis away:
    it stays and the error (`QueueError`, or redis's) is raised."""
    directory = spool_dir(home)
    if not directory.is_dir():
        return 0
    stored = 0
    for path in sorted(directory.glob(f"{job_id}-*.json" if job_id else "*.json")):
        try:
            body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # another worker of this home is delivering it right now
        key, token = body["fence"]
        result = Batch(redis, body["batch"]).store_fenced(
            body["record"], int(body["generation"]), fence=(key, int(token)), deadline_s=0
        )
        if result < 0:
            log.warning("spooled record %s refused: its run was fenced meanwhile", path.name)
        stored += result == 1
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stored
