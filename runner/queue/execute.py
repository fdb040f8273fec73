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
* **Redis away**: a record that cannot be stored within `spool.STORE_WAIT_S` goes to the spool on
  disk (`runner.queue.spool`). A run stopped by the outage (past the limit, or the worker gave up)
  or fenced raises `LeaseLostError` out of the job: the worker leaves the job to the reaper instead
  of finishing it in RQ, so it runs again unless its record arrives (if the token moved on because a
  restarted Redis lost its last second, nobody else would run it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import redis as redis_lib
from rq import get_current_job

from runner.engine.conversation import run_conversation
from runner.engine.limits import ServerLimits
from runner.engine.retry import request_guard
from runner.errors import FatalAPIError, LeaseLostError, QueueError
from runner.queue import fence, metrics, spool
from runner.queue.batch import Batch, outcome_of
from runner.queue.conversations import error_record
from runner.queue.limits import RedisLimiter, RedisSemaphore, limiter_scope
from runner.queue.redis_server import set_outage_limit
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
    set_outage_limit(settings.redis_outage_s)  # how long every Redis call of this process waits


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
            through = ThroughOutages(limiter)
            record = run_conversation(t, batch_id=batch_id, limiter=through, attempt=attempt, settings=config)
        for turn in record["turns"] if not fence.redis_away() else ():
            # The server's time, not the wall time: a wait for budget is not work the pool sizes for.
            seconds = turn.get("server_latency_ms", turn["latency_ms"])
            if seconds is not None:
                limiter.note_turn(seconds / 1000)
    except FatalAPIError as e:
        batch.abort(str(e))
        batch.transition(conv, "dropped")
        return {"conversation": conv, "aborted": scrub(str(e))}
    except LeaseLostError as e:
        run.lost = run.lost or str(e)
        record = error_record(t, batch_id, attempt, str(e))
    except (QueueError, redis_lib.ConnectionError, redis_lib.TimeoutError) as e:
        run.lost, run.away = f"Redis unreachable: conversation stopped ({type(e).__name__})", True
        record = error_record(t, batch_id, attempt, run.lost)
    except Exception as e:  # a bug or a timeout: record it so the batch can finish
        record = error_record(t, batch_id, attempt, f"{type(e).__name__}: {e}")
    finally:
        request_guard.reset(guarded)
    if run.lost is None and record["status"] != "completed" and fence.out_of_patience():
        # The engine turned the limiter's outage error into an error record: not the conversation's.
        run.lost, run.away = "Redis unreachable: conversation stopped", True
    if run.lost is not None:  # the engine turned the guard's refusal into an error: not a result
        return _stopped(batch, conv, run)
    fence_of = (run.key, token)
    try:
        # Redis away: one quick try, then to disk (the worker delivers it when Redis is back).
        away = fence.redis_away()
        store = Batch(fence.quick(redis), batch_id) if away else batch
        wait = 0.0 if away else spool.STORE_WAIT_S
        stored = store.store_fenced(record, generation, fence=fence_of, deadline_s=wait)
    except (QueueError, redis_lib.ConnectionError, redis_lib.TimeoutError):  # the record waits on disk
        spool.put(config.home, batch_id, generation, fence_of, current.id, record)
        return {"conversation": conv, "status": record["status"], "spooled": True}
    if stored < 0:
        log.warning("job %s: lease lost (token %d): its record refused", current.id, token)
        raise LeaseLostError(f"job {current.id}: record refused (token {token} fenced)")
    if stored == 1:
        _count(record)
    return {"conversation": conv, "status": record["status"], "stored": stored == 1}


class ThroughOutages:
    """The shared limiter as one conversation uses it: taking budget waits for Redis (the budget is
    shared by every worker); correcting it (`settle`, `cooldown`, `learn`) is best effort, skipped
    while Redis is away, so an answer already received goes on to its store (or the spool) at once."""

    def __init__(self, limiter: RedisLimiter) -> None:
        self.limiter = limiter

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        self.limiter.acquire(requests, tokens)

    def settle(self, estimated: int, actual: int) -> None:
        with contextlib.suppress(QueueError, redis_lib.RedisError):
            if not fence.redis_away():
                self.limiter.settle(estimated, actual)

    def cooldown(self, seconds: float) -> None:
        with contextlib.suppress(QueueError, redis_lib.RedisError):
            if not fence.redis_away():
                self.limiter.cooldown(seconds)

    def learn(self, limits: ServerLimits) -> None:
        with contextlib.suppress(QueueError, redis_lib.RedisError):
            if not fence.redis_away():
                self.limiter.learn(limits)


def _stopped(batch: Batch, conv: str, run: fence.Fence) -> dict[str, Any]:
    """A run that may not go on: dropped if its batch was aborted; else (fenced, or Redis away)
    `LeaseLostError`, so the worker leaves the job to the reaper (module docstring)."""
    if not run.away:
        with contextlib.suppress(redis_lib.RedisError, QueueError):
            if batch.aborted():
                batch.transition(conv, "dropped")
                return {"conversation": conv, "stopped": run.lost}
    raise LeaseLostError(run.lost or "conversation stopped")


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
