"""One RQ job per conversation: the queue, job ids, putting one job on the queue, the error record.

* **One RQ job per conversation**, on the queue `runner`, with `JSONSerializer` only (a shared Redis
  must never hand code to workers). Its id is a hash of (batch id, conversation id), its arguments
  are the task as JSON and the batch id: no secrets.
* The job function is `JOB_FUNC` (`runner.queue.execute.run_task`); its keyword arguments carry
  the record generation it must produce and the attempt (how many times it was started).
* With a queue secret (`RUNNER_QUEUE_SECRET`), each job is signed (`runner.queue.security`): workers
  holding the secret run only jobs whose payload it signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis as redis_lib
from rq import Queue
from rq.serializers import JSONSerializer

from runner.queue.batch import BATCH_TTL_S
from runner.queue.security import signed_meta
from runner.records import Record, new_record
from runner.settings import scrub
from runner.tasks import ConversationTask

QUEUE_NAME = "runner"
"""The one RQ queue every batch goes through (workers process any batch on the Redis)."""

JOB_FUNC = "runner.queue.execute.run_task"
RESULT_TTL_S = 600
"""RQ keeps a finished job this long (for rq-dashboard); the record itself lives in the batch."""

CHUNK = 500
"""Conversations enqueued per Redis transaction."""


def rq_queue(redis: redis_lib.Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer)


def job_id_for(batch_id: str, conversation_id: str) -> str:
    """RQ job ids allow [A-Za-z0-9_-] only: a hash of the pair, stable across enqueues."""
    return "c" + hashlib.sha256(f"{batch_id}\0{conversation_id}".encode()).hexdigest()[:40]


def job_timeout_s(task: ConversationTask) -> int:
    """RQ kills a job after this: far beyond what its turns may take, only against a hung worker."""
    per_turn = task.limits.run_timeout_s * 2 + 60
    return int(300 + len(task.turns) * per_turn * max(1, task.limits.max_attempts))


def enqueue_one(
    queue: Queue,
    task: dict[str, Any],
    batch_id: str,
    generation: int,
    attempt: int,
    pipeline: Any = None,
    *,
    secret: str | None,
) -> None:
    """Put one conversation on the queue, signed with `secret` when one is set."""
    conv = task["conversation_id"]
    job_id = job_id_for(batch_id, conv)
    args, kwargs = (task, batch_id), {"generation": generation, "attempt": attempt}
    queue.enqueue_call(
        JOB_FUNC,
        args=args,
        kwargs=kwargs,
        job_id=job_id,
        timeout=job_timeout_s(ConversationTask.model_validate(task)),
        result_ttl=RESULT_TTL_S,
        failure_ttl=BATCH_TTL_S,
        description=conv,  # what RQ logs and rq-dashboard shows, instead of the whole task
        meta={"batch": batch_id, "conversation": conv, **signed_meta(secret, JOB_FUNC, args, kwargs, job_id)},
        pipeline=pipeline,
    )


def transaction(redis: redis_lib.Redis) -> Any:
    """A MULTI pipeline opened up front: RQ's enqueue calls `multi()` itself, which fails once
    other commands are queued."""
    pipe = redis.pipeline()
    pipe.multi()
    return pipe


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def error_record(task: ConversationTask, batch_id: str, attempt: int, message: str) -> Record:
    """The record of a conversation that could not be carried out at all (status `error`)."""
    now = datetime.now(UTC)
    return new_record(
        task, batch_id=batch_id, attempt=attempt, status="error", started=now, finished=now,
        error=scrub(message),
    )  # fmt: skip
