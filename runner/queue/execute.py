"""The RQ job function: carry one conversation out under the shared limits, store its record once.

A worker process configures it once at start (`configure(settings)`) with the settings read from
its environment; `run_task` is what every queued conversation names (`JOB_FUNC`).

* A conversation that already has the wanted record (its worker died after storing it) is skipped.
* **Fatal API errors** (401/403/quota) abort the batch: its remaining jobs are dropped, other
  batches go on, and `runner run` exits 3.
* Any other exception becomes an `error` record, so the batch can finish.
* **Fencing** (`runner.queue.fence`): the run's token is checked before every API request (with the
  batch's abort flag, so after a fatal answer no worker starts another request) and atomically with
  the store; a run that lost its lease stops and stores nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import redis as redis_lib
from rq import get_current_job

from runner.engine.conversation import run_conversation
from runner.engine.retry import request_guard
from runner.errors import FatalAPIError, LeaseLostError, QueueError
from runner.queue import fence, metrics, spool
from runner.queue.batch import Batch, outcome_of
from runner.queue.conversations import error_record
from runner.queue.limits import RedisLimiter, RedisSemaphore, limiter_scope
from runner.queue.scopes import register, scope_for
from runner.records import Record
from runner.settings import Settings, scrub
from runner.tasks import ConversationTask, Limits

log = logging.getLogger("runner.queue.execute")

_settings: Settings | None = None
_limiters: dict[tuple[int, str, str, int | None, int | None], RedisLimiter] = {}
_limiters_lock = threading.Lock()


def configure(settings: Settings) -> None:
    """Set this worker process's settings (read from its environment once, at start)."""
    global _settings
    _settings = settings


def settings() -> Settings:
    global _settings
    if _settings is None:  # a plain `rq worker` that never called configure: its environment
        _settings = Settings.from_env()
    return _settings


def limiter_for(
    redis: redis_lib.Redis, job_name: str, limits: Limits, settings: Settings, model: str
) -> RedisLimiter:
    """The limiter of (server, key, model), with this job's caps; one per process and arguments
    (shared by the conversations a worker runs at once: what it learns, it learns once)."""
    caps = (limits.requests_per_minute, limits.tokens_per_minute)
    scope = scope_for(redis, settings.server, settings.api_key, model)  # the salt as Redis has it now
    ident = (id(redis), job_name, scope.name, *caps)
    with _limiters_lock:
        limiter = _limiters.get(ident)
        if limiter is None or limiter.redis is not redis:
            limiter = _limiters[ident] = RedisLimiter(
                redis, scope.name, *caps, job=job_name, announce=lambda: register(redis, scope)
            )
        return limiter


def run_task(task: dict[str, Any], batch_id: str, generation: int = 1, attempt: int = 1) -> dict[str, Any]:
    """The RQ job: carry one conversation out under the shared limits and store its record once."""
    current = get_current_job()
    if current is None:
        raise QueueError("run_task runs inside an RQ worker")
    redis = current.connection
    config = settings()
    t = ConversationTask.model_validate(task)
    conv = t.conversation_id
    batch = Batch(redis, batch_id)
    if batch.has_record(conv, generation):
        return {"conversation": conv, "skipped": "already recorded"}  # ran before its worker died
    if batch.aborted():
        batch.transition(conv, "dropped")
        return {"conversation": conv, "skipped": "batch aborted"}
    token = fence.take(current.id)
    if token is None:  # a plain `rq worker`: the run takes its token here
        token = fence.claim(redis, current.id)
    run = fence.Fence(redis, current.id, token, batch.key)
    batch.transition(conv, "running")
    limiter = limiter_for(redis, t.job, t.limits, config, t.model)
    guarded = request_guard.set(run.check)  # this thread's requests, until the conversation ends
    try:
        with _slot(redis, t, config, current.id), metrics.in_flight():
            record = run_conversation(t, batch_id=batch_id, limiter=limiter, attempt=attempt, settings=config)
        for turn in record["turns"]:
            if turn["latency_ms"] is not None:
                limiter.note_turn(turn["latency_ms"] / 1000)
    except FatalAPIError as e:
        batch.abort(str(e))
        batch.transition(conv, "dropped")
        return {"conversation": conv, "aborted": scrub(str(e))}
    except LeaseLostError as e:
        run.lost = run.lost or str(e)
        record = error_record(t, batch_id, attempt, str(e))
    except Exception as e:  # a bug, a timeout or an outage: record it so the batch can finish
        record = error_record(t, batch_id, attempt, f"{type(e).__name__}: {e}")
    finally:
        request_guard.reset(guarded)
    if run.lost is not None:  # the engine turned the guard's refusal into an error: not a result
        return _stopped(batch, conv, run)
    try:
        stored = batch.store_fenced(record, generation, fence=(run.key, token), deadline_s=spool.STORE_WAIT_S)
    except QueueError:  # Redis away: the record waits on disk, the keeper delivers it
        spool.put(config.home, batch_id, generation, (run.key, token), current.id, record)
        return {"conversation": conv, "status": record["status"], "spooled": True}
    if stored == 1:
        _count(record)
    elif stored < 0:
        log.warning("job %s: lease lost (token %d): its record refused", current.id, token)
    return {"conversation": conv, "status": record["status"], "stored": stored == 1, "fenced": stored < 0}


def _stopped(batch: Batch, conv: str, run: fence.Fence) -> dict[str, Any]:
    """A run that may not go on: dropped if its batch was aborted, else left to the run that holds
    the lease now (or to the reaper, after an outage)."""
    with contextlib.suppress(redis_lib.RedisError, QueueError):
        if batch.aborted():
            batch.transition(conv, "dropped")
    return {"conversation": conv, "stopped": run.lost}


def _count(record: Record) -> None:
    """The operator's figures of a stored record (no-ops unless `runner worker --metrics-port`)."""
    metrics.conversation_finished(record["status"], outcome_of(record))
    metrics.request_sent(record.get("requests", 0))  # grading requests included
    for turn in record["turns"]:
        latency = turn.get("server_latency_ms", turn["latency_ms"])
        usage = turn["usage"]
        metrics.turn_finished(
            turn["run_status"],
            None if latency is None else latency / 1000,
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        for retry in turn.get("retries", []):
            if retry["cause"] == "429":
                metrics.rate_limited()
        metrics.limiter_waited(turn.get("limiter_wait_ms", 0) / 1000)


def _slot(redis: redis_lib.Redis, task: ConversationTask, config: Settings, member: str) -> Any:
    """The job's `limits.concurrency` across all workers, when it sets one."""
    if task.limits.concurrency is None:
        return contextlib.nullcontext()
    slots = RedisSemaphore(redis, limiter_scope(task.job, config.server), task.limits.concurrency)
    return slots.hold(member)
