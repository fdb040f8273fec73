"""Batches on the queue: enqueue one job per conversation, repair, retry, status.

* **Idempotent enqueue** (`ensure_enqueued`): a conversation gets a job only if it has no record
  of the wanted generation and no job already queued or running. Enqueuing the same batch twice
  runs nothing twice; running it again after an interruption (resume) fills in only what is missing.
* **Resume**: a batch is found again by its job file digest and its output (`-o`, or the job's
  template when none is given) as long as it is unfinished; a finished one is never reopened by
  `run`/`enqueue` (a new batch starts), only by `retry`.
* **Retry** (`retry_batch`): the failed and errored conversations of a batch get a new record
  generation; their new records replace the old ones.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as redis_lib
from rq.exceptions import DeserializationError
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from runner.engine.conversation import prepare_tasks
from runner.errors import QueueError
from runner.jobs import Job, expand, render_output
from runner.queue.batch import BATCH_TTL_S, RESUME_PREFIX, Batch
from runner.queue.conversations import chunks, enqueue_one, job_id_for, rq_queue, transaction
from runner.queue.execute import limiter_for
from runner.queue.leases import reap
from runner.queue.redis_server import retrying
from runner.records import new_batch_id
from runner.settings import Settings
from runner.tasks import ConversationTask

_PENDING = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
_WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


def _resume_key(job: Job, output: str | None) -> str:
    where = str(Path(output).resolve()) if output else f"template:{Path.cwd()}:{job.output}"
    return RESUME_PREFIX + hashlib.sha256(f"{job.digest}\0{where}".encode()).hexdigest()[:32]


def _resumable(redis: redis_lib.Redis, key: str) -> str | None:
    candidate = redis.get(key)
    if candidate is None:
        return None
    batch_id = candidate.decode() if isinstance(candidate, bytes) else str(candidate)
    info = Batch(redis, batch_id).info()
    return batch_id if info is not None and not info.finished else None


# --- enqueue ----------------------------------------------------------------------------------------


def enqueue_job(
    job: Job,
    *,
    redis: redis_lib.Redis,
    output: str | None = None,
    now: datetime | None = None,
    batch_id: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Validate-expand-prepare-enqueue a job file's conversations as one batch; returns its id.

    Without `batch_id`, an unfinished batch of the same job file and output is resumed (see the
    module docstring); otherwise a new batch starts.
    """
    return enqueue_tasks(
        job, expand(job), redis=redis, output=output, now=now, batch_id=batch_id, settings=settings
    )


def enqueue_tasks(
    job: Job,
    tasks: Sequence[ConversationTask],
    *,
    redis: redis_lib.Redis,
    output: str | None = None,
    now: datetime | None = None,
    batch_id: str | None = None,
    settings: Settings | None = None,
) -> str:
    settings = settings or Settings.from_env()
    now = now or datetime.now(UTC)
    key = _resume_key(job, output)
    explicit = batch_id is not None  # the caller (the scheduler) names its batches: no resume lookup
    try:
        batch_id = batch_id or _resumable(redis, key) or new_batch_id(job.name, now)
        batch = Batch(redis, batch_id)
        info = batch.info()
        if info is not None:
            out = info.output  # a resumed batch keeps writing where it started
        elif output:
            out = str(Path(output).resolve())
        else:
            out = str(render_output(job.output, name=job.name, batch=batch_id, now=now).resolve())
        model = tasks[0].model if tasks else job.model or "-"  # preparing is spent on the first model
        limiter = limiter_for(redis, job.name, job.limits, settings, model)
        prepared = prepare_tasks(job, list(tasks), limiter, settings=settings)
        batch.create(job=job.name, digest=job.digest, source=str(job.source), output=out, tasks=prepared)
        batch.clear_abort()
        if not explicit:
            redis.set(key, batch_id, ex=BATCH_TTL_S)
        ensure_enqueued(redis, batch_id, prepared, secret=settings.queue_secret)
    except redis_lib.RedisError as e:
        raise QueueError(f"enqueue failed: {type(e).__name__}: {e}") from None
    return batch_id


def ensure_enqueued(
    redis: redis_lib.Redis,
    batch_id: str,
    tasks: Sequence[ConversationTask] | None = None,
    *,
    secret: str | None,
) -> int:
    """Give every conversation lacking its wanted record a job (signed with `secret` when set),
    unless one is queued or running.

    Returns how many jobs were enqueued. Safe to call any number of times (resume, repair).
    """
    batch = Batch(redis, batch_id)
    if tasks is None:
        payload = batch.tasks()
    else:
        payload = {t.conversation_id: t.model_dump(mode="json") for t in tasks}
    reap(redis, secret=secret)  # a dead worker's started job is requeued here, not counted as running
    have, want = batch.record_generations(), batch.wanted_generations()
    missing = [c for c in sorted(payload) if have.get(c, 0) < want.get(c, 1)]
    queue = rq_queue(redis)
    enqueued = 0
    for chunk in chunks(missing):
        ids = [job_id_for(batch_id, conv) for conv in chunk]
        found = RQJob.fetch_many(ids, connection=redis, serializer=JSONSerializer)
        pipe = transaction(redis)
        for conv, earlier in zip(chunk, found, strict=True):
            if earlier is not None and earlier.get_status(refresh=False) in _PENDING:
                continue  # pending: a worker will run it (a dead one's job was reaped above)
            enqueue_one(
                queue, payload[conv], batch_id, want.get(conv, 1), _next_attempt(earlier), pipe, secret=secret
            )
            batch.transition(conv, "queued", client=pipe)
            enqueued += 1
        pipe.execute()
    return enqueued


def _next_attempt(earlier: RQJob | None) -> int:
    """One more than the attempt of an earlier job of the same conversation, if RQ still has it."""
    if earlier is None:
        return 1
    try:
        return int(earlier.kwargs.get("attempt", 1)) + 1
    except (DeserializationError, ValueError, TypeError, AttributeError):
        return 1


# --- retry and status -------------------------------------------------------------------------------------


def retry_batch(batch_id: str, redis: redis_lib.Redis, *, secret: str | None) -> int:
    """Enqueue again the conversations whose record failed or errored (signed with `secret` when
    set); their new records replace the old ones when they arrive. Returns how many were enqueued."""
    batch = Batch(redis, batch_id)
    batch.require()
    tasks = batch.tasks()
    have, want = batch.record_generations(), batch.wanted_generations()
    todo = [
        conv
        for conv, outcome in sorted(batch.outcomes().items())
        if outcome in ("failed", "errors") and conv in tasks and have.get(conv, 0) >= want.get(conv, 1)
    ]
    batch.clear_abort()
    queue = rq_queue(redis)
    for chunk in chunks(todo):
        pipe = transaction(redis)
        for conv in chunk:
            generation = batch.bump_generation(conv)
            previous = batch.record(conv)
            attempt = (previous["attempts"] if previous else 1) + 1
            batch.transition(conv, "queued", force=True, client=pipe)
            enqueue_one(queue, tasks[conv], batch_id, generation, attempt, pipe, secret=secret)
        pipe.execute()
    if todo:
        batch.touch()
    return len(todo)


CANCELLED_MESSAGE = "cancelled by the user (`runner cancel`)"


def cancel_batch(batch_id: str, redis: redis_lib.Redis) -> int:
    """Stop a batch: mark it aborted (workers drop any of its jobs they take), take its queued jobs
    off the queue and count their conversations as dropped. Conversations already running finish
    and are recorded. `runner retry` or a resume clears the mark. Returns how many were dropped."""
    batch = Batch(redis, batch_id)
    batch.require()
    batch.abort(CANCELLED_MESSAGE)
    states: dict[bytes, bytes] = redis.hgetall(batch.keys["state"])  # type: ignore[assignment]
    waiting = sorted(k.decode() for k, v in states.items() if v == b"queued")
    dropped = 0
    for chunk in chunks(waiting):
        ids = [job_id_for(batch_id, conv) for conv in chunk]
        found = RQJob.fetch_many(ids, connection=redis, serializer=JSONSerializer)
        for conv, job in zip(chunk, found, strict=True):
            if job is not None and job.get_status(refresh=False) not in _WAITING:
                continue  # a worker took it meanwhile: it drops it itself (the batch is aborted)
            if job is not None:
                job.delete()  # off the queue too
            if batch.transition(conv, "dropped"):
                dropped += 1
    return dropped


def batch_status(batch_id: str, redis: redis_lib.Redis) -> dict[str, Any]:
    """One batch's figures as a dict (used by `runner status` and the scheduler's status)."""
    info = Batch(redis, batch_id).require()
    return {
        "batch": info.id,
        "job": info.job,
        "state": info.state,
        "total": info.total,
        **info.counts,
        "rate": round(info.rate, 3),
        "eta_s": None if info.eta_s is None else round(info.eta_s, 1),
        "output": info.output,
        "aborted": info.aborted,
    }


def wait_for(redis: redis_lib.Redis, batch_id: str, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Block until the batch is finished (True) or `timeout_s` passed (False)."""
    deadline = time.monotonic() + timeout_s
    batch = Batch(redis, batch_id)
    while time.monotonic() < deadline:
        info = retrying(batch.require)
        if info.finished:
            return True
        time.sleep(poll_s)
    return False
