"""Dead workers: leases on running jobs, and the reaper that requeues the jobs of workers that died.

A worker holds a lease (`runner:lease:<job id>`, refreshed every couple of seconds) for the job it
runs. A job in RQ's StartedJobRegistry (or stuck in its intermediate queue) without a lease belongs
to a dead worker: `reap` requeues it at once, within `LEASE_TTL_S` plus a reaper beat of the death
instead of RQ's own 10-minute maintenance. A conversation whose workers died `MAX_RUNS` times is
recorded as an error instead of looping. Any process may reap; ZREM / LREM decide who does.
Each requeue bumps the job's fencing token (`runner.queue.fence`): a worker that was only stalled
stops at its next request and its record is refused. After a Redis restart, the reaper waits until
the server has been up `LEASE_TTL_S`, so live workers re-take the leases that expired meanwhile.
The reaper re-signs what it requeues, so it first checks the job as a worker would
(`security.refusal`): a foreign or tampered job goes to the failed registry, not back on the queue.
"""

from __future__ import annotations

import redis as redis_lib
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from runner.queue import fence
from runner.queue.batch import Batch
from runner.queue.conversations import enqueue_one, error_record, rq_queue, transaction
from runner.queue.security import refusal, refuse
from runner.tasks import ConversationTask

LEASE_PREFIX = "runner:lease:"
LEASE_TTL_S = 10
"""A running job's lease expires this long after its worker's last beat (the worker beats every 2 s)."""

MAX_RUNS = 3
"""A conversation whose worker died this many times is recorded as an error, not run again."""


def lease_key(job_id: str) -> str:
    return LEASE_PREFIX + job_id


def reap(redis: redis_lib.Redis, *, secret: str | None, restart_grace_s: float = LEASE_TTL_S) -> int:
    """Requeue the jobs of dead workers (no lease), signed with `secret`; returns how many. Any
    process may call it. A Redis up for less than `restart_grace_s` is not reaped yet."""
    if int(redis.info("server").get("uptime_in_seconds", restart_grace_s)) < restart_grace_s:
        return 0  # a restarted Redis lost the leases that expired meanwhile: live workers re-take theirs
    queue = rq_queue(redis)
    registry = queue.started_job_registry
    requeued = 0
    for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
        if redis.exists(lease_key(job_id)):
            continue
        # ZREM is the claim: of several reapers, exactly one requeues the job.
        if redis.zrem(registry.key, f"{job_id}:{execution_id}"):
            requeued += _requeue(redis, queue, job_id, secret)
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
            requeued += _requeue(redis, queue, job_id, secret)
    return requeued


def _requeue(redis: redis_lib.Redis, queue: Queue, job_id: str, secret: str | None) -> int:
    try:
        job = RQJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
        reason = refusal(job, secret)
        if reason is not None:
            refuse(job, queue, reason, "reaper")
            return 0
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
    pipe = transaction(redis)
    fence.bump(pipe, job_id)  # a stalled worker still running it is fenced off from here on
    enqueue_one(queue, task, batch_id, generation, attempt + 1, pipe, secret=secret)
    batch.transition(conv, "queued", client=pipe)
    pipe.execute()
    return 1
