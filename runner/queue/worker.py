"""Workers: RQ workers that carry many conversations at once, each under its own lease, and a pool
of them (`runner worker -n N --concurrency C`).

`RunnerWorker` is an RQ worker on the queue `runner` with the JSON serializer. It keeps up to
`concurrency` conversations in flight in one process: its main thread runs RQ's own work loop, which
dequeues a job only while fewer than `concurrency` are in flight (so it never holds a job it cannot
start), accepts it (`_accept`, the one place a dequeued job is let in), leases it and registers its
execution the RQ way (`prepare_execution`: RQ's StartedJobRegistry and the worker's executions, as
rq-dashboard shows them), then hands it to one of its threads, which runs RQ's `perform_job`
(`prepare_job_execution`, `job.perform()`, `handle_job_success` / `handle_job_failure`). Threads,
not asyncio: the engine and its backends are synchronous, the SDK's synchronous client is
thread-safe, and `bench/mechanism.py` measured no gain from asyncio (same turns/s, more CPU per
turn). Job timeouts raise RQ's timeout in the job's thread as RQ's `TimerDeathPenalty` does (signals
reach only the main thread), but one watchdog thread serves every job (`SharedTimerDeathPenalty`)
instead of a timer thread per job.

Delayed jobs (the Batch API's polls, `Queue.enqueue_in`) are moved to the queue when due by RQ's own
`RQScheduler`, run in a thread of the worker (`_schedule`, under RQ's scheduler lock so one worker
does it) rather than as the forked process `with_scheduler=True` starts: that process cost ~100 MB
and half a second at every stop, and is idle unless a Batch API job is polling.

A keeper thread beats every `BEAT_S` seconds: it refreshes the worker's liveness (`runner:workers`,
what `runner status` counts), the lease of every job in flight, and, under a short Redis lock so one
worker does it at a time, calls `runner.queue.leases.reap` to requeue the jobs of workers that died.
A SIGKILLed worker's conversations thus all run again within `LEASE_TTL_S + REAP_EVERY_S` seconds
(about 15 s), each once, not after RQ's 10-minute maintenance.

A `--burst` worker quits when the queue is empty *and* no other worker's conversation is still
started: until then it reaps, so a dead worker's conversations run again before the burst ends and
`runner worker --burst && runner collect` gives complete output.

Redis away (`_ride_out`): the main thread takes no new work and waits for Redis with a growing
pause, logging one line when the outage starts and one when it ends. Conversations in flight go on
(`runner.queue.fence` says when one waits for Redis before a request), records that cannot be
stored go to the spool (`runner.queue.spool`) and each job's RQ bookkeeping waits for Redis
(`_patiently`). Past RUNNER_REDIS_OUTAGE_S (`runner worker --redis-outage`, default 60 s, counted
from the last beat that reached Redis) the worker gives up: its conversations stop at their next
request (their jobs left to the reaper), spooled records stay on disk, and it exits with
`EXIT_REDIS_OUTAGE` (69); the pool starts another (with a growing pause while Redis stays away),
which delivers the spool once it reaches Redis.

SIGTERM/SIGINT: no new job is taken and every conversation in flight is finished (warm stop); a
second signal stops at once, handing the leases back so the conversations run again elsewhere.

`WorkerPool` forks N such workers and replaces any that dies. `local_workers` runs a pool as a
subprocess of `runner run`, in its own session so Ctrl-C reaches `run`, which stops it in order; a
pool of one is that worker itself (`runner worker --no-pool`: no parent process, no preload of
everything before a fork; `runner run` restarts it if it dies).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue as queue_lib
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import openai
import redis as redis_lib
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from runner.engine.client import shared_client, warm_models
from runner.errors import LeaseLostError, QueueError
from runner.queue import batch_api_jobs, execute, fence, metrics, security, spool
from runner.queue.batch import WORKERS_KEY
from runner.queue.conversations import QUEUE_NAME, rq_queue
from runner.queue.leases import LEASE_TTL_S, lease_key, reap
from runner.queue.redis_server import abandon, abandoned, connect, die_with_parent
from runner.settings import Settings

log = logging.getLogger("runner.queue.worker")

WORKER_TTL_S = 30
"""RQ's worker key TTL; the worker blocks on the queue for WORKER_TTL_S - 15 seconds at a time."""

BEAT_S = 2.0
"""How often the keeper refreshes liveness and the running job's lease."""

REAP_EVERY_S = 3.0
"""How often (across all workers) someone looks for the jobs of dead workers."""

SCHEDULE_EVERY_S = 1.0
"""How often a worker moves due delayed jobs to the queue (RQ's scheduler interval)."""

REAPER_LOCK = "runner:reaper"
RESPAWN_BACKOFF_MAX_S = 30.0
LOG_ROTATE_BYTES = 10 * 2**20
"""`runner run` appends its workers' log under RUNNER_HOME/logs; past this size it starts a new one."""

STOP_GRACE_S = 10.0
"""`runner run` gives its workers this long to stop after the batch is done, then kills them."""

EXIT_REDIS_OUTAGE = 69
"""A worker's exit code after Redis stayed away past RUNNER_REDIS_OUTAGE_S (EX_UNAVAILABLE)."""

_REDIS_AWAY = (redis_lib.ConnectionError, redis_lib.TimeoutError, redis_lib.BusyLoadingError)

DEFAULT_CONCURRENCY = 64
"""Conversations in flight per worker process (`runner worker --concurrency`): at 1 request per
turn and runs of a few seconds, enough for one process to fill a tier of ~1,000+ requests/minute."""


# The Batch API's polls are the other job kind a worker runs (registered with the allow-list).
assert batch_api_jobs.ADVANCE_FUNC in security.JOB_FUNCTIONS


class _Queue(Queue):
    """RQ's queue, whose blocking dequeue lets an unreachable Redis through to the worker's
    `heartbeat` (which rides the outage out) instead of RQ's own retry loop, which logs each try."""

    @classmethod
    def dequeue_any(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().dequeue_any(*args, **kwargs)
        except _REDIS_AWAY:
            raise DequeueTimeout(0) from None  # RQ's loop goes round: its heartbeat meets the outage


class SharedTimerDeathPenalty(TimerDeathPenalty):
    """RQ's `TimerDeathPenalty` (the job's timeout exception raised in the job's own thread) with one
    watchdog thread per process for all jobs in flight, instead of a `threading.Timer` each."""

    _cond: ClassVar[threading.Condition] = threading.Condition()
    _due: ClassVar[dict[int, tuple[float, SharedTimerDeathPenalty]]] = {}  # id: (deadline, penalty)
    _waiting_until: ClassVar[float] = float("inf")  # the deadline the watchdog sleeps towards
    _watchdog: ClassVar[threading.Thread | None] = None

    def setup_death_penalty(self) -> None:
        if self._timeout <= 0:
            return
        cls = SharedTimerDeathPenalty
        deadline = time.monotonic() + self._timeout
        with cls._cond:
            cls._due[id(self)] = (deadline, self)
            if cls._watchdog is None or not cls._watchdog.is_alive():  # first use, or after a fork
                cls._watchdog = threading.Thread(target=cls._watch, name="runner-job-timeouts", daemon=True)
                cls._watchdog.start()
            elif deadline < cls._waiting_until:
                cls._cond.notify()

    def cancel_death_penalty(self) -> None:
        with SharedTimerDeathPenalty._cond:
            SharedTimerDeathPenalty._due.pop(id(self), None)

    @classmethod
    def _watch(cls) -> None:
        with cls._cond:
            while True:
                now = time.monotonic()
                for key, (deadline, penalty) in list(cls._due.items()):
                    if deadline <= now:
                        del cls._due[key]
                        # Under the lock: a job cancelling now gets it in its cancel, where RQ ignores it.
                        with contextlib.suppress(ValueError, SystemError):  # its thread is gone
                            penalty.handle_death_penalty()
                cls._waiting_until = min((d for d, _ in cls._due.values()), default=float("inf"))
                cls._cond.wait(None if not cls._due else max(0.0, cls._waiting_until - now))


class RunnerWorker(SimpleWorker):
    """An RQ worker with up to `concurrency` conversations in flight, each leased (module docstring)."""

    death_penalty_class = SharedTimerDeathPenalty  # a job timeout that works in any thread
    log_result_lifespan = False  # one line less per conversation
    queue_class = _Queue

    def __init__(
        self,
        connection: redis_lib.Redis,
        name: str | None = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        in_flight_key: str | None = None,
    ) -> None:
        super().__init__(
            [QUEUE_NAME],
            connection=connection,
            name=name,
            serializer=JSONSerializer,
            worker_ttl=WORKER_TTL_S,
            log_job_description=True,
            job_class=security.GuardedJob,  # imports no callback, nor a function off the allow-list
        )
        self.concurrency = max(1, concurrency)
        self.in_flight_key = in_flight_key  # `runner run`'s pool: how many each of its processes carries
        self._running: set[str] = set()  # job ids in flight (their leases are refreshed)
        self._tokens: dict[str, int] = {}  # their fencing tokens (`runner.queue.fence`)
        self._changed = threading.Condition()
        self._jobs: queue_lib.SimpleQueue[tuple[RQJob, Queue, Any] | None] = queue_lib.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stop_keeper = threading.Event()
        self._burst = False
        self._gave_up = False  # Redis stayed away past the limit: stopping, exit EXIT_REDIS_OUTAGE
        self._rq_beat_at = -float("inf")

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self._beat()
        with contextlib.suppress(redis_lib.RedisError, QueueError):  # else the keeper's next beat
            self._deliver_spool()  # records a worker of this machine could not store before it stopped
        threading.Thread(target=self._keep, name="runner-keeper", daemon=True).start()
        scheduler = RQScheduler(self.queues, connection=self.connection, serializer=JSONSerializer)
        self._rq_scheduler = scheduler
        self._schedule_due(scheduler)  # before the first dequeue: a burst worker sees what is due
        threading.Thread(target=self._schedule, args=(scheduler,), daemon=True).start()
        self._add_threads(self.concurrency)

    def _add_threads(self, n: int) -> None:
        # Daemon threads: a cold stop (second signal) must not wait for them.
        for _ in range(n):
            t = threading.Thread(target=self._serve, name=f"runner-conv-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    def _resize(self, value: bytes | str | None) -> None:
        """`runner run` re-split its pool (`in_flight_key`): carry this many conversations from now
        on. Fewer: no new one is taken until enough have finished; more: threads are added."""
        if value is None:
            return
        want = max(1, int(value))
        if want == self.concurrency:
            return
        log.info("conversations in flight: up to %d (was %d)", want, self.concurrency)
        if self._threads and want > len(self._threads):  # else bootstrap starts `concurrency` of them
            self._add_threads(want - len(self._threads))
        with self._changed:
            self.concurrency = want
            self._changed.notify_all()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        # Take a job only when a thread is free to start it: a dequeued job waiting here would have
        # no lease, and the reaper would give it to another worker.
        while True:
            with self._changed:
                if len(self._running) < self.concurrency or self._stop_requested:
                    break
                self._changed.wait(1.0)
            # Every slot busy, no Redis call here: the keeper's failing beats tell of an outage.
            if fence.since_confirmed() > 3 * BEAT_S and not fence.reachable(self.connection):
                self._ride_out()
        while True:
            if self._stop_requested:
                return None
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            if result is not None or not self._burst:
                return result
            # Burst: the queue is empty, but conversations of other workers may still run. A dead
            # worker's come back on the queue once its leases lapse: reap them, do not quit.
            try:
                if not self._others_running():
                    return None
                reap(self.connection, secret=execute.settings().queue_secret)
            except _REDIS_AWAY:
                self._ride_out()
            except (redis_lib.RedisError, QueueError):
                pass
            time.sleep(BEAT_S / 2)

    # Redis away, main thread: RQ's loop calls these between jobs; each waits the outage out.
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # part of a transaction: it fails (or waits) with it
            return super().heartbeat(timeout, pipeline)
        # RQ beats up to three times per job, three round trips each, for a key that lives minutes
        # (and that the keeper renews too): once per BEAT_S is plenty, and ~10% of the worker's CPU less.
        if timeout is None and time.monotonic() - self._rq_beat_at < BEAT_S:
            return
        base = super().heartbeat
        self._main_patiently(lambda: base(timeout))
        self._rq_beat_at = time.monotonic()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            return super().set_state(state, pipeline)
        base = super().set_state
        self._main_patiently(lambda: base(state))

    def check_for_suspension(self, burst: bool) -> None:
        base = super().check_for_suspension
        self._main_patiently(lambda: base(burst))

    def run_maintenance_tasks(self) -> None:
        self._main_patiently(super().run_maintenance_tasks)

    def _main_patiently(self, call: Any) -> None:
        while True:
            try:
                return call()
            except _REDIS_AWAY:
                self._ride_out()

    def _ride_out(self) -> None:
        """Main thread, Redis unreachable: take no new work and wait for it with a growing pause (one
        line when the outage starts, one when it ends); past the limit, give up (`_give_up`)."""
        limit = execute.settings().redis_outage_s
        away = fence.since_confirmed()
        began = time.monotonic() - away
        log.warning(
            "Redis unreachable: taking no new work, %d conversation(s) in flight go on; waiting up to %gs",
            self.in_flight, limit,
        )  # fmt: skip
        pause = 0.25
        while not fence.reachable(self.connection):
            if self._stop_requested:  # a warm stop: RQ's loop ends, `teardown` waits for the conversations
                raise StopRequested
            away = fence.since_confirmed()
            if away > limit:
                self._give_up(away)
            time.sleep(min(pause, max(0.05, limit - away)))
            pause = min(pause * 2, 5.0)
        log.warning("Redis reachable again after %.1fs", time.monotonic() - began)
        # The scheduler thread (`_schedule`) retries on its own: nothing to restart here.

    def _give_up(self, away: float) -> None:
        """Redis away past the limit: every conversation stops at its next request, every Redis
        call of this process stops waiting, and the worker exits `EXIT_REDIS_OUTAGE`."""
        self._gave_up = True
        abandon()
        log.error(
            "Redis unreachable for %.0fs (limit %gs): stopping %d conversation(s) at their next request,"
            " then exiting with code %d",
            away, execute.settings().redis_outage_s, self.in_flight, EXIT_REDIS_OUTAGE,
        )  # fmt: skip
        raise SystemExit(EXIT_REDIS_OUTAGE)

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        if isinstance(exc, redis_lib.ConnectionError):
            time.sleep(2.0)  # RQ's command channel: reconnects by itself; the main loop reports outages
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self._burst = bool(kwargs.get("burst", args[0] if args else False))
        return super().work(*args, **kwargs)

    def _others_running(self) -> bool:
        """Jobs started (or dequeued) by other workers, live or dead, that have not finished."""
        queue = self.queues[0]
        started = queue.started_job_registry.get_job_and_execution_ids(cleanup=False)
        ids = {job_id for job_id, _ in started} | set(queue.intermediate_queue.get_job_ids())
        return bool(ids - self._running)

    def _accept(self, job: RQJob, queue: Queue) -> bool:
        """The one place a dequeued job is let in before it runs: a foreign, unsigned or altered job
        is failed with its reason (`runner.queue.security`), never imported or called."""
        return security.accept(job, queue, execute.settings().queue_secret, self.name)

    def execute_job(self, job: Any, queue: Any) -> None:
        try:
            self._start(job, queue)
        except _REDIS_AWAY:
            # Not started: the job waits in RQ's intermediate queue (or started, without a
            # lease) and the reaper puts it back once Redis is here again.
            self._ride_out()

    def _start(self, job: Any, queue: Any) -> None:
        if not self._accept(job, queue):
            return  # a foreign, unsigned or altered job: failed with its reason, never imported
        # The lease exists before RQ puts the job in its StartedJobRegistry: a started job without a
        # lease can only belong to a dead worker.
        self.connection.set(lease_key(job.id), self.name, ex=LEASE_TTL_S)
        token = fence.claim(self.connection, job.id)  # this run's token: an earlier run is fenced off
        with self._changed:
            self._tokens[job.id] = token
            self._running.add(job.id)
        try:
            execution = self.prepare_execution(job)
        except BaseException:
            self._finished(job.id)
            raise
        self._jobs.put((job, queue, execution))

    def prepare_execution(self, job: RQJob) -> Execution:
        # RQ's own, plus taking the job off the intermediate queue in the same transaction: a job
        # both started and in the intermediate queue would be requeued twice by the reaper if this
        # process died before its thread got to it.
        with self.connection.pipeline() as pipeline:
            ttl = self.get_heartbeat_ttl(job)
            execution = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            pipeline.lrem(self.queues[0].intermediate_queue_key, 1, job.id)
            pipeline.execute()
        return execution

    def _serve(self) -> None:
        """One conversation thread: RQ's `perform_job` for each job handed to it."""
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, queue, execution = item
            try:
                self.perform_job(job, queue, execution)  # success and failure handled the RQ way
            except Exception:
                log.exception("job %s", job.id)
            finally:
                self._finished(job.id)

    # A conversation thread's RQ bookkeeping waits through an outage (`_patiently`); a job stopped
    # by the outage or fenced is left to the reaper (started, no lease), not failed.
    def prepare_job_execution(self, job: RQJob, remove_from_intermediate_queue: bool = False) -> None:
        base = super().prepare_job_execution
        self._patiently(lambda: base(job, remove_from_intermediate_queue))

    def _finalize_success(self, job: RQJob, queue: Queue, execution: Execution, return_value: Any) -> None:
        if isinstance(return_value, dict) and return_value.get("spooled"):
            # Its record first, while this worker still holds the job's lease.
            self._patiently(lambda: self._deliver_spool(job.id))
        base = super()._finalize_success
        self._patiently(lambda: base(job, queue, execution, return_value))

    def _finalize_failure(self, job: RQJob, queue: Queue, execution: Execution, exc_info: Any) -> None:
        error = exc_info[1]
        if isinstance(error, (QueueError, *_REDIS_AWAY)):  # LeaseLostError is a QueueError
            log.warning("job %s: %s: left to the reaper", job.id, error)
            return
        base = super()._finalize_failure
        self._patiently(lambda: base(job, queue, execution, exc_info))

    def _patiently(self, call: Any) -> None:
        """`call`, waiting through a Redis outage; `LeaseLostError` once the worker stops waiting."""
        while True:
            if abandoned():  # the worker gave up on Redis: no bookkeeping, no wait
                raise LeaseLostError("Redis unreachable: the worker stopped waiting")
            try:
                return call()
            except LeaseLostError:
                raise
            except (*_REDIS_AWAY, QueueError):
                while not fence.reachable(self.connection):
                    if fence.out_of_patience():
                        raise LeaseLostError("Redis unreachable: the worker stopped waiting") from None
                    time.sleep(1.0)

    def _deliver_spool(self, job_id: str | None = None) -> None:
        n = spool.deliver(self.connection, execute.settings().home, job_id=job_id)
        if n and job_id is None:
            log.warning("delivered %d spooled record(s)", n)

    def _finished(self, job_id: str) -> None:
        if not self._gave_up:
            with contextlib.suppress(redis_lib.RedisError):
                fence.release(self.connection, lease_key(job_id), self.name)
        with self._changed:
            self._running.discard(job_id)
            self._tokens.pop(job_id, None)
            self._changed.notify_all()

    def _drain(self) -> None:
        """Warm stop: wait for every conversation in flight to finish."""
        with self._changed:
            if self._running:
                log.info("finishing %d conversation(s) in flight", len(self._running))
            while self._running:
                self._changed.wait(1.0)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        try:
            super().request_force_stop(signum, frame)  # SystemExit, unless the signal was a duplicate
        except SystemExit:
            # Cold stop: hand the leases back, so the reaper requeues every conversation at once.
            running = list(self._running)
            self._running.clear()
            with contextlib.suppress(redis_lib.RedisError):
                if running:
                    self.connection.delete(*(lease_key(j) for j in running))
            raise

    def teardown(self) -> None:
        try:
            self._drain()
        finally:  # also after a cold stop cut the drain short
            for _ in self._threads:
                self._jobs.put(None)
            self._stop_keeper.set()
            if self._gave_up:  # Redis is away: only what needs none of it
                home = execute.settings().home
                log.error(
                    "exiting with code %d: %d spooled record(s) stay in %s for the next worker of this"
                    " RUNNER_HOME", EXIT_REDIS_OUTAGE, spool.pending(home), spool.spool_dir(home),
                )  # fmt: skip
            else:
                self._release_scheduler()
                with contextlib.suppress(redis_lib.RedisError):
                    self.connection.zrem(WORKERS_KEY, self.name)
                with contextlib.suppress(*_REDIS_AWAY):  # a warm stop during an outage
                    super().teardown()

    def _beat(self) -> None:
        sec, usec = self.connection.time()
        pipe = self.connection.pipeline(transaction=False)
        pipe.zadd(WORKERS_KEY, {self.name: sec + usec / 1e6})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", sec - 3600)
        with self._changed:
            held = dict(self._tokens)
        for job_id, token in held.items():
            # Renewed only while the token is current; re-taken after a Redis restart lost it.
            fence.relet(pipe, lease_key(job_id), job_id, self.name, token, LEASE_TTL_S)
        pipe.expire(self.key, WORKER_TTL_S + 60)
        if self.in_flight_key:
            pipe.get(self.in_flight_key)
        sent_at = time.monotonic()
        answers = pipe.execute()
        renewed = answers[2 : 2 + len(held)]
        fence.confirmed(sent_at)
        if self.in_flight_key:
            self._resize(answers[-1])
        for (job_id, token), ok in zip(held.items(), renewed, strict=True):
            if not ok:
                fence.revoke(job_id, token)  # its token moved on: the run stops at its next request

    def _schedule_due(self, scheduler: RQScheduler) -> None:
        """What RQ's scheduler process does each interval: under its lock (one worker of all), move
        the delayed jobs that are due to the queue."""
        try:
            if scheduler.acquire_locks():  # acquired, or refreshed while we hold it
                scheduler.enqueue_scheduled_jobs()
        except redis_lib.RedisError as e:
            log.debug("scheduler: %s", type(e).__name__)  # Redis away: the next pass tries again

    def _schedule(self, scheduler: RQScheduler) -> None:
        while not self._stop_keeper.wait(SCHEDULE_EVERY_S):
            self._schedule_due(scheduler)

    def _release_scheduler(self) -> None:
        """At stop: another worker takes the scheduling over at once, not after the lock's TTL."""
        scheduler: RQScheduler | None = getattr(self, "_rq_scheduler", None)
        if scheduler is not None:
            with contextlib.suppress(redis_lib.RedisError):
                scheduler.release_locks()

    def _keep(self) -> None:
        last_reap = 0.0
        while not self._stop_keeper.wait(BEAT_S):
            try:
                self._beat()
                self._deliver_spool()
                if time.monotonic() - last_reap >= REAP_EVERY_S:
                    last_reap = time.monotonic()
                    lock_ms = int(REAP_EVERY_S * 1000)
                    if self.connection.set(REAPER_LOCK, self.name, nx=True, px=lock_ms):
                        n = reap(self.connection, secret=execute.settings().queue_secret)
                        if n:
                            log.warning("requeued %d conversation(s) of dead workers", n)
            except (redis_lib.RedisError, QueueError) as e:
                log.debug("keeper: %s", type(e).__name__)  # Redis away: the next beat tries again
            except Exception:
                log.exception("keeper")


def _work(
    redis_url: str,
    burst: bool,
    logging_level: str,
    settings: Settings,
    concurrency: int,
    in_flight_key: str | None = None,
) -> None:
    """A pool child: one RunnerWorker until stopped (burst: until the queue is empty)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    pdeath = die_with_parent()
    if pdeath is not None:
        pdeath()
    try:
        redis = connect(redis_url)
    except QueueError as e:
        log.error("%s", e)  # the pool starts another, with a growing pause
        sys.exit(75)
    execute.configure(settings)
    with contextlib.suppress(Exception):  # no key yet, or another backend: built at first use then
        shared_client(settings)  # this process's HTTP client, ready before it takes its first request slot
    # Delayed jobs (the Batch API's polls) are enqueued by the worker's scheduler thread.
    worker = RunnerWorker(redis, concurrency=concurrency, in_flight_key=in_flight_key)
    worker.work(burst=burst, logging_level=logging_level)
    if burst and rq_queue(redis).count:
        sys.exit(75)  # stopped early (Redis went away mid-job): the pool starts another


def preload() -> None:
    """Load the SDK's lazily loaded API resources once, before forking: every worker shares them
    instead of spending seconds of CPU on the same imports at its first conversation."""
    client = openai.OpenAI(api_key="preload", base_url="http://127.0.0.1:9/v1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Assistants resources are deprecated
        for path in ("beta.assistants", "beta.threads.runs", "beta.threads.messages", "responses",
                     "chat.completions", "conversations.items"):  # fmt: skip
            obj: Any = client
            for name in path.split("."):
                obj = getattr(obj, name, None)
    client.close()
    warm_models()  # before forking: every worker inherits the built schemas, no thread races to build


class WorkerPool:
    """N `RunnerWorker` processes (forked), replaced when they die; stops on SIGTERM/SIGINT."""

    def __init__(
        self,
        redis_url: str,
        processes: int,
        *,
        settings: Settings,
        burst: bool = False,
        logging_level: str = "INFO",
        concurrency: int = DEFAULT_CONCURRENCY,
        pooled: bool = True,
        in_flight_key: str | None = None,
    ):
        self.redis_url = redis_url
        self.in_flight_key = in_flight_key
        self.pooled = pooled or processes > 1  # False: the one worker runs in this process
        self.settings = settings
        self.concurrency = concurrency
        self.processes = max(1, processes)
        self.burst = burst
        self.logging_level = logging_level
        self._children: dict[int, tuple[BaseProcess, float]] = {}
        self._stopping = 0
        self._ctx = multiprocessing.get_context("fork")

    def _spawn(self) -> None:
        p = self._ctx.Process(
            target=_work,
            args=self._work_args(),
            name="runner-worker",
        )
        p.start()
        assert p.pid is not None
        self._children[p.pid] = (p, time.monotonic())

    def _work_args(self) -> tuple[str, bool, str, Settings, int, str | None]:
        s = self
        return (s.redis_url, s.burst, s.logging_level, s.settings, s.concurrency, s.in_flight_key)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping += 1
        # First signal: warm stop (finish the conversation); second: RQ's cold stop.
        for p, _ in list(self._children.values()):
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(p.pid, signal.SIGTERM if self._stopping == 1 else signal.SIGINT)  # type: ignore[arg-type]

    def run(self) -> None:
        if not self.pooled:  # no fork: nothing to preload for children, no parent to keep
            _work(*self._work_args())
            return
        preload()
        connect(self.redis_url)  # fail fast (exit 3) on a wrong URL, before forking anything
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        for _ in range(self.processes):
            self._spawn()
        backoff = 1.0
        while self._children:
            time.sleep(0.2)
            for pid, (p, born) in list(self._children.items()):
                if p.is_alive():
                    continue
                p.join()
                del self._children[pid]
                metrics.process_dead(pid)  # its in-flight gauge stops counting
                if self._stopping or (self.burst and p.exitcode == 0):
                    continue
                log.warning("worker %s exited (%s); starting another", pid, p.exitcode)
                if time.monotonic() - born < 5:  # dying at start: Redis away or a broken install
                    time.sleep(backoff)
                    backoff = min(backoff * 2, RESPAWN_BACKOFF_MAX_S)
                else:
                    backoff = 1.0
                self._spawn()

    @property
    def pids(self) -> list[int]:
        return list(self._children)


class LocalWorkers:
    """A `runner worker -n N` subprocess started by `runner run` (see `local_workers`)."""

    def __init__(
        self,
        redis_url: str,
        processes: int,
        log_path: Path,
        *,
        settings: Settings | None = None,
        burst: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        pooled: bool = True,
        in_flight_key: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.in_flight_key = in_flight_key
        self.settings = settings  # None: this process's environment when the pool starts
        self.pooled = pooled  # False: one worker is that process itself (`check` restarts it)
        self.processes = processes
        self.concurrency = concurrency
        self.log_path = log_path
        self.burst = burst
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:  # keep one old generation, not all
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        package_root = str(Path(__file__).resolve().parents[2])
        # REDIS_URL, the key and the server travel in the environment: `ps` shows argv, not this.
        settings = self.settings or Settings.from_env()
        env = settings.child_env(REDIS_URL=self.redis_url)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log_file:
            command = [sys.executable, "-m", "runner", "worker", "-n", str(self.processes),
                       "--concurrency", str(self.concurrency)]  # fmt: skip
            if self.processes == 1 and not self.pooled:
                command.append("--no-pool")
            if self.in_flight_key:
                command += ["--in-flight-key", self.in_flight_key]
            self.process = subprocess.Popen(
                command + (["--burst"] if self.burst else []),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )

    def check(self) -> None:
        """Restart the pool if it died; QueueError (pointing at its log) if it keeps dying."""
        if self.process is None or self.process.poll() is None:
            return
        if self.restarts >= 3:
            raise QueueError(
                f"the worker processes keep exiting (code {self.process.returncode}); see {self.log_path}"
            )
        self.restarts += 1
        log.warning("worker pool exited (%s); restarting it", self.process.returncode)
        self.start()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        proc = self.process
        if proc is None:
            return
        self.process = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace_s)
        # Whatever is left of the pool's session (a worker stuck in a call) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


@contextlib.contextmanager
def local_workers(
    redis_url: str,
    processes: int,
    log_path: Path,
    settings: Settings,
    concurrency: int = DEFAULT_CONCURRENCY,
    in_flight_key: str | None = None,
) -> Iterator[LocalWorkers]:
    """A worker pool subprocess serving `redis_url` with these settings, for the length of a block."""
    # A pool of one needs no parent to replace its worker: `runner run` restarts it (`check`).
    workers = LocalWorkers(
        redis_url, processes, log_path, settings=settings, concurrency=concurrency, pooled=False,
        in_flight_key=in_flight_key,
    )  # fmt: skip
    workers.start()
    try:
        yield workers
    finally:
        workers.stop()
