"""Batches on RQ: enqueue one job per conversation, the job function workers run, requeue, retry.

* **One RQ job per conversation**, on the queue `runner`, with `JSONSerializer` only (a shared Redis
  must never hand code to workers). Its id is a hash of (batch id, conversation id), its arguments
  are the task as JSON and the batch id: no secrets.
* **Idempotent enqueue** (`ensure_enqueued`): a conversation gets a job only if it has no record
  of the wanted generation and no job already queued or running. Enqueuing the same batch twice
  runs nothing twice; running it again after an interruption (resume) fills in only what is missing.
* **Resume**: a batch is found again by its job file digest and its output (`-o`, or the job's
  template when none is given) as long as it is unfinished; a finished one is never reopened by
  `run`/`enqueue` (a new batch starts), only by `retry`.
* **Dead workers** (`reap`): a worker holds a lease (`runner:lease:<job id>`, refreshed every
  couple of seconds) for the job it runs. A job in RQ's StartedJobRegistry (or stuck in its
  intermediate queue) without a lease belongs to a dead worker: it is requeued at once, within
  `LEASE_TTL_S` plus a reaper beat of the death instead of RQ's own 10-minute maintenance. A
  conversation whose workers died `MAX_RUNS` times is recorded as an error instead of looping.
* **Fatal API errors** (401/403/quota) abort the batch: its remaining jobs are dropped, other
  batches go on, and `runner run` exits 3.

* **`runner run`** (`run_batch`): Redis (embedded unless a URL is given), local worker processes,
  a progress line while records are collected as they arrive, the JSONL, everything stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis as redis_lib
from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from runner.batch import BATCH_TTL_S, RESUME_PREFIX, Batch, scrub
from runner.errors import FatalAPIError, QueueError, UsageError
from runner.limits import RedisLimiter, RedisSemaphore, limiter_scope
from runner.redis_server import retrying
from runner.tasks import ConversationTask, Limits
from runner.transcripts import Record, empty_usage

if TYPE_CHECKING:
    from runner.jobfile import Job

QUEUE_NAME = "runner"
"""The one RQ queue every batch goes through (workers process any batch on the Redis)."""

JOB_FUNC = "runner.queue.run_task"
RESULT_TTL_S = 600
"""RQ keeps a finished job this long (for rq-dashboard); the record itself lives in the batch."""

LEASE_PREFIX = "runner:lease:"
LEASE_TTL_S = 10
"""A running job's lease expires this long after its worker's last beat (the worker beats every 2 s)."""

MAX_RUNS = 3
"""A conversation whose worker died this many times is recorded as an error, not run again."""

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_CHUNK = 500


def rq_queue(redis: redis_lib.Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer)


def job_id_for(batch_id: str, conversation_id: str) -> str:
    """RQ job ids allow [A-Za-z0-9_-] only: a hash of the pair, stable across enqueues."""
    return "c" + hashlib.sha256(f"{batch_id}\0{conversation_id}".encode()).hexdigest()[:40]


def base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def limiter_for(redis: redis_lib.Redis, job_name: str, limits: Limits) -> RedisLimiter:
    scope = limiter_scope(job_name, base_url())
    return RedisLimiter(redis, scope, limits.requests_per_minute, limits.tokens_per_minute)


def job_timeout_s(task: ConversationTask) -> int:
    """RQ kills a job after this: far beyond what its turns may take, only against a hung worker."""
    per_turn = task.limits.run_timeout_s * 2 + 60
    return int(300 + len(task.turns) * per_turn * max(1, task.limits.max_attempts))


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
) -> str:
    """Validate-expand-prepare-enqueue a job file's conversations as one batch; returns its id.

    Without `batch_id`, an unfinished batch of the same job file and output is resumed (see the
    module docstring); otherwise a new batch starts.
    """
    from runner.jobfile import expand

    return enqueue_tasks(job, expand(job), redis=redis, output=output, now=now, batch_id=batch_id)


def enqueue_tasks(
    job: Job,
    tasks: Sequence[ConversationTask],
    *,
    redis: redis_lib.Redis,
    output: str | None = None,
    now: datetime | None = None,
    batch_id: str | None = None,
) -> str:
    from runner.engine import new_batch_id, prepare_tasks
    from runner.jobfile import render_output

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
        prepared = prepare_tasks(job, list(tasks), limiter_for(redis, job.name, job.limits))
        batch.create(job=job.name, digest=job.digest, source=str(job.source), output=out, tasks=prepared)
        batch.clear_abort()
        if not explicit:
            redis.set(key, batch_id, ex=BATCH_TTL_S)
        ensure_enqueued(redis, batch_id, prepared)
    except redis_lib.RedisError as e:
        raise QueueError(f"enqueue failed: {type(e).__name__}: {e}") from None
    return batch_id


def _enqueue(
    queue: Queue,
    task: dict[str, Any],
    batch_id: str,
    generation: int,
    attempt: int,
    pipeline: Any = None,
) -> None:
    conv = task["conversation_id"]
    queue.enqueue_call(
        JOB_FUNC,
        args=(task, batch_id),
        kwargs={"generation": generation, "attempt": attempt},
        job_id=job_id_for(batch_id, conv),
        timeout=job_timeout_s(ConversationTask.model_validate(task)),
        result_ttl=RESULT_TTL_S,
        failure_ttl=BATCH_TTL_S,
        description=conv,  # what RQ logs and rq-dashboard shows, instead of the whole task
        meta={"batch": batch_id, "conversation": conv},
        pipeline=pipeline,
    )


def _transaction(redis: redis_lib.Redis) -> Any:
    """A MULTI pipeline opened up front: RQ's enqueue calls `multi()` itself, which fails once
    other commands are queued."""
    pipe = redis.pipeline()
    pipe.multi()
    return pipe


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def ensure_enqueued(
    redis: redis_lib.Redis, batch_id: str, tasks: Sequence[ConversationTask] | None = None
) -> int:
    """Give every conversation lacking its wanted record a job, unless one is queued or running.

    Returns how many jobs were enqueued. Safe to call any number of times (resume, repair).
    """
    batch = Batch(redis, batch_id)
    if tasks is None:
        payload = batch.tasks()
    else:
        payload = {t.conversation_id: t.model_dump(mode="json") for t in tasks}
    reap(redis)  # a job started by a dead worker is requeued here rather than counted as running
    have, want = batch.record_generations(), batch.wanted_generations()
    missing = [c for c in sorted(payload) if have.get(c, 0) < want.get(c, 1)]
    queue = rq_queue(redis)
    enqueued = 0
    for chunk in _chunks(missing):
        pipe = redis.pipeline(transaction=False)
        for conv in chunk:
            pipe.hmget(RQJob.key_for(job_id_for(batch_id, conv)), "status", "data")
        found = pipe.execute()
        pipe = _transaction(redis)
        for conv, (status, data) in zip(chunk, found, strict=True):
            if status in (b"queued", b"started", b"deferred", b"scheduled"):
                continue  # pending: a worker will run it (a dead one's job was reaped above)
            _enqueue(queue, payload[conv], batch_id, want.get(conv, 1), _next_attempt(data), pipe)
            batch.transition(conv, "queued", client=pipe)
            enqueued += 1
        pipe.execute()
    return enqueued


def _next_attempt(data: bytes | None) -> int:
    """One more than the attempt of an earlier job of the same conversation, if RQ still has it."""
    if not data:
        return 1
    import json
    import zlib

    try:
        kwargs = json.loads(zlib.decompress(data))[3]
        return int(kwargs.get("attempt", 1)) + 1
    except (ValueError, zlib.error, IndexError, TypeError, AttributeError):
        return 1


# --- the job function ---------------------------------------------------------------------------------

_limiters: dict[tuple[str, int | None, int | None], RedisLimiter] = {}


def _process_limiter(redis: redis_lib.Redis, task: ConversationTask) -> RedisLimiter:
    key = (task.job, task.limits.requests_per_minute, task.limits.tokens_per_minute)
    limiter = _limiters.get(key)
    if limiter is None or limiter.redis is not redis:
        limiter = _limiters[key] = limiter_for(redis, task.job, task.limits)
    return limiter


def error_record(task: ConversationTask, batch_id: str, attempt: int, message: str) -> Record:
    """The record of a conversation that could not be carried out at all (status `error`)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    a = task.assistant
    return {
        "batch_id": batch_id,
        "conversation_id": task.conversation_id,
        "job": task.job,
        "api": str(task.api),
        "model": task.model,
        "assistant": {"key": a.key, "name": a.name, "id": a.id},
        "thread_id": None,
        "vars": dict(task.vars),
        "status": "error",
        "passed": False,
        "turns": [],
        "usage": empty_usage(),
        "attempts": attempt,
        "error": scrub(message),
        "started_at": now,
        "finished_at": now,
        "matrix": dict(task.matrix),
        "repeat_index": task.repeat_index,
    }


def run_task(task: dict[str, Any], batch_id: str, generation: int = 1, attempt: int = 1) -> dict[str, Any]:
    """The RQ job: carry one conversation out under the shared limits and store its record once."""
    from runner.engine import run_conversation

    current = get_current_job()
    if current is None:
        raise QueueError("run_task runs inside an RQ worker")
    redis = current.connection
    t = ConversationTask.model_validate(task)
    conv = t.conversation_id
    batch = Batch(redis, batch_id)
    if batch.has_record(conv, generation):
        return {"conversation": conv, "skipped": "already recorded"}  # ran before its worker died
    if batch.aborted():
        batch.transition(conv, "dropped")
        return {"conversation": conv, "skipped": "batch aborted"}
    batch.transition(conv, "running")
    slots = RedisSemaphore(redis, limiter_scope(t.job, base_url()), t.limits.concurrency)
    try:
        with slots.hold(current.id):
            record = run_conversation(
                t, batch_id=batch_id, limiter=_process_limiter(redis, t), attempt=attempt
            )
    except FatalAPIError as e:
        batch.abort(str(e))
        batch.transition(conv, "dropped")
        return {"conversation": conv, "aborted": scrub(str(e))}
    except Exception as e:  # a bug, a timeout or an outage: record it so the batch can finish
        record = error_record(t, batch_id, attempt, f"{type(e).__name__}: {e}")
    stored = batch.store_record(record, generation)
    return {"conversation": conv, "status": record["status"], "stored": stored}


# --- dead workers ---------------------------------------------------------------------------------------


def lease_key(job_id: str) -> str:
    return LEASE_PREFIX + job_id


def reap(redis: redis_lib.Redis) -> int:
    """Requeue the jobs of dead workers (no lease); returns how many. Any process may call it."""
    queue = rq_queue(redis)
    registry = queue.started_job_registry
    requeued = 0
    for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
        if redis.exists(lease_key(job_id)):
            continue
        # ZREM is the claim: of several reapers, exactly one requeues the job.
        if redis.zrem(registry.key, f"{job_id}:{execution_id}"):
            requeued += _requeue(redis, queue, job_id)
    intermediate = queue.intermediate_queue
    for job_id in intermediate.get_job_ids():
        if redis.exists(lease_key(job_id)):
            continue
        # Dequeued but never started: give a live worker LEASE_TTL_S to start it before taking it back.
        seen = f"runner:reap:seen:{job_id}"
        sec = redis.time()[0]
        first = redis.get(seen)
        if first is None:
            redis.set(seen, sec, nx=True, ex=LEASE_TTL_S * 6)
            continue
        if sec - int(first) < LEASE_TTL_S:
            continue
        if redis.lrem(intermediate.key, 1, job_id):
            redis.delete(seen)
            requeued += _requeue(redis, queue, job_id)
    return requeued


def _requeue(redis: redis_lib.Redis, queue: Queue, job_id: str) -> int:
    try:
        job = RQJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
        task, batch_id = job.args[0], job.args[1]
        generation = int(job.kwargs.get("generation", 1))
        attempt = int(job.kwargs.get("attempt", 1))
    except (NoSuchJobError, IndexError, TypeError, ValueError):
        return 0
    batch = Batch(redis, batch_id)
    conv = task["conversation_id"]
    if batch.has_record(conv, generation):
        return 0
    if attempt >= MAX_RUNS:
        t = ConversationTask.model_validate(task)
        why = f"abandoned: the worker running this conversation died {attempt} times"
        batch.store_record(error_record(t, batch_id, attempt, why), generation)
        return 1
    pipe = _transaction(redis)
    _enqueue(queue, task, batch_id, generation, attempt + 1, pipe)
    batch.transition(conv, "queued", client=pipe)
    pipe.execute()
    return 1


# --- retry and status -------------------------------------------------------------------------------------


def retry_batch(batch_id: str, redis: redis_lib.Redis) -> int:
    """Enqueue again the conversations whose record failed or errored; their new records replace
    the old ones when they arrive. Returns how many were enqueued."""
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
    for chunk in _chunks(todo):
        pipe = _transaction(redis)
        for conv in chunk:
            generation = batch.bump_generation(conv)
            previous = batch.record(conv)
            attempt = (previous["attempts"] if previous else 1) + 1
            batch.transition(conv, "queued", force=True, client=pipe)
            _enqueue(queue, tasks[conv], batch_id, generation, attempt, pipe)
        pipe.execute()
    if todo:
        batch.touch()
    return len(todo)


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


# --- `runner run` on the queue --------------------------------------------------------------------------

INTERRUPT_GRACE_S = 2.0
"""On Ctrl-C, workers get this long to finish the conversation in hand (the rest resume later)."""

REPAIR_AFTER_S = 30.0
"""`runner run` re-checks that every unfinished conversation has a job after this long without progress."""


def run_batch(job: Job, tasks: Sequence[ConversationTask], options: Any) -> Any:
    """`runner run FILE` without --inline: Redis (embedded unless a URL is given), `options.workers`
    local worker processes (0: rely on workers elsewhere), enqueue or resume, follow with a
    progress line while collecting, write the JSONL, stop everything, return the `RunOutcome`."""
    from runner.collector import Collector, sorted_records
    from runner.pipeline import RunOutcome
    from runner.progress import Progress
    from runner.redis_server import connect, embedded_redis, runner_home
    from runner.transcripts import write_records
    from runner.worker import local_workers

    started = time.monotonic()
    url = options.redis_url
    if not url and options.workers == 0:
        raise UsageError("--workers 0 needs --redis-url (or REDIS_URL): a Redis that other workers serve")
    with contextlib.ExitStack() as stack:
        if not url:
            url = stack.enter_context(embedded_redis()).url
        redis = connect(url)
        stack.callback(redis.close)
        workers = None
        if options.workers:  # started first: their start-up overlaps preparing and enqueuing
            log_path = runner_home() / "logs" / f"workers-{job.name}.log"
            workers = stack.enter_context(local_workers(url, options.workers, log_path))
        batch_id = enqueue_tasks(job, tasks, redis=redis, output=options.output)
        batch = Batch(redis, batch_id)
        output = Path(batch.require().output)
        collector = Collector(batch)
        progress = Progress(batch.require().total, enabled=options.progress).start()
        try:
            _follow(redis, batch, collector, workers, progress)
        except BaseException as e:
            progress.close()
            interrupted = isinstance(e, KeyboardInterrupt)
            if interrupted and workers is not None:
                workers.stop(grace_s=INTERRUPT_GRACE_S)  # conversations about to finish still land
            collector.poll()
            collector.write(output)
            if interrupted:
                total = batch.require().total
                _say(
                    f"interrupted: {len(collector.records)} of {total} conversations in {output};"
                    " run the same command again to finish the batch"
                )
            raise
        progress.close()
        records = sorted_records(batch.records().values())
        write_records(output, records)
    return RunOutcome(batch_id=batch_id, output=output, records=records, wall_s=time.monotonic() - started)


def _follow(redis: redis_lib.Redis, batch: Batch, collector: Any, workers: Any, progress: Any) -> None:
    last_done, last_change, last_reap, last_repair = -1, time.monotonic(), 0.0, time.monotonic()
    while True:
        collector.poll()
        info = batch.require()
        now = time.monotonic()
        c = info.counts
        failed = c["failed"] + c["errors"]
        progress.update(
            done=info.done, failed=failed, in_flight=c["running"], tokens=c["tokens"], total=info.total
        )
        if info.aborted:
            raise FatalAPIError(f"batch {batch.id} aborted: {info.aborted}")
        if info.finished:
            return
        if workers is not None:
            workers.check()
        if now - last_reap > 2.0:
            retrying(lambda: reap(redis))
            last_reap = now
        if info.done != last_done:
            last_done, last_change = info.done, now
        elif now - last_change > REPAIR_AFTER_S and now - last_repair > REPAIR_AFTER_S:
            retrying(lambda: ensure_enqueued(redis, batch.id))
            last_repair = now
        time.sleep(0.25)


def _say(text: str) -> None:
    import click

    click.echo(text, err=True)
