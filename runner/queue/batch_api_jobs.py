"""Queue mode of the Batch API: the polling is done by RQ jobs, not by a process that sleeps.

`enqueue_batch_api` starts the rounds of a job (`runner enqueue FILE` with `batch_api: true` or
`--batch-api`) and enqueues one `advance` job. Each `advance` does one `BatchApiRun.step()` (submit,
poll, apply a round that ended) and, while a provider batch is still running, enqueues the next
`advance` with a delay (`Queue.enqueue_in`: RQ's scheduler, run by workers started with
`with_scheduler=True`, as `runner worker` does). A provider batch that takes 20 hours holds no
worker: it is a scheduled job in Redis between two polls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import redis as redis_lib
from rq import get_current_job

from runner.engine.backends.provider_batches import ProviderBatches
from runner.engine.client import make_client
from runner.engine.limits import LocalLimiter
from runner.engine.retry import Caller
from runner.errors import FatalAPIError, QueueError
from runner.jobs import Job
from runner.queue import execute
from runner.queue.batch import BATCH_TTL_S, Batch
from runner.queue.batch_api import LOCK_S, BatchApiRun, pb_key, start_batch_api
from runner.queue.conversations import rq_queue
from runner.queue.security import allow_job_function, signed_meta
from runner.settings import Settings, scrub
from runner.tasks import ConversationTask

ADVANCE_FUNC = "runner.queue.batch_api_jobs.advance"
allow_job_function(ADVANCE_FUNC)  # a worker runs these polls too (and nothing it was not told of)
DEFAULT_MAX_ATTEMPTS = 4
"""Tries per provider request (upload, create, poll, download) when no job says otherwise."""
RESULT_TTL_S = 3600


def provider_for(settings: Settings, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> ProviderBatches:
    """The provider's Files + Batches endpoints through one retry layer (no per-minute limits:
    batch requests are few, and the Batch API has its own queue limits)."""
    return ProviderBatches(make_client(settings), Caller(LocalLimiter(None, None), max_attempts=max_attempts))


def enqueue_advance(
    redis: redis_lib.Redis, batch_id: str, delay_s: float = 0.0, *, secret: str | None = None
) -> str:
    """Enqueue the next `advance` of a batch (after `delay_s`), signed with `secret` when one is
    set (workers holding a secret run only signed jobs); returns its RQ job id."""
    n = redis.incr(f"{pb_key(batch_id)}:polls")
    redis.expire(f"{pb_key(batch_id)}:polls", BATCH_TTL_S)
    job_id = "pb" + hashlib.sha256(batch_id.encode()).hexdigest()[:32] + f"-{n}"
    redis.set(f"{pb_key(batch_id)}:next", job_id, ex=int(delay_s) + LOCK_S)
    options: dict[str, Any] = {
        "job_id": job_id,
        "job_timeout": LOCK_S,
        "result_ttl": RESULT_TTL_S,
        "meta": signed_meta(secret, ADVANCE_FUNC, (batch_id,), {}, job_id),
    }
    queue = rq_queue(redis)
    if delay_s > 0:
        queue.enqueue_in(timedelta(seconds=delay_s), ADVANCE_FUNC, batch_id, **options)
    else:
        queue.enqueue(ADVANCE_FUNC, batch_id, **options)
    return job_id


def enqueue_batch_api(
    job: Job,
    tasks: Sequence[ConversationTask],
    *,
    redis: redis_lib.Redis,
    output: str | None = None,
    secret: str | None = None,
) -> str:
    """Start (or find again) the Batch API rounds of a job and hand them to the workers; returns
    the batch id. A batch whose polling is already scheduled gets no second chain of polls."""
    batch_id = start_batch_api(job, tasks, redis=redis, output=output)
    if redis.set(f"{pb_key(batch_id)}:next", "starting", nx=True, ex=LOCK_S):
        enqueue_advance(redis, batch_id, secret=secret)
    return batch_id


def advance(batch_id: str) -> dict[str, Any]:
    """The RQ job: one step of the batch's rounds, then the next poll scheduled if one is needed."""
    current = get_current_job()
    if current is None:
        raise QueueError("advance runs inside an RQ worker")
    redis = current.connection
    tasks = Batch(redis, batch_id).tasks()
    attempts = max((int(t.get("limits", {}).get("max_attempts", 1)) for t in tasks.values()), default=1)
    rounds = BatchApiRun(redis, batch_id, provider_for(execute.settings(), attempts))
    try:
        step = rounds.step()
    except FatalAPIError as e:
        Batch(redis, batch_id).abort(str(e))
        return {"batch": batch_id, "aborted": scrub(str(e))}
    if step.done:
        redis.delete(f"{pb_key(batch_id)}:next")
    else:
        enqueue_advance(redis, batch_id, step.wait_s, secret=execute.settings().queue_secret)
    return {"batch": batch_id, "round": step.round, "done": step.done, "next_in_s": step.wait_s}
