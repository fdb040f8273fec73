"""`runner run FILE` on the queue: Redis (embedded unless a URL is given), local worker processes,
a progress line while records are collected as they arrive, the JSONL, everything stopped.

`--workers 0` relies on workers elsewhere serving the same Redis. Ctrl-C stops the local workers
after a short grace, writes what has arrived and says how to finish the batch (run it again).

Without `--workers`, the local pool is sized to fill the limit (`pool_size`): by Little's law, the
conversations in flight that a budget of R requests per minute needs are R/60 x the time a turn
takes at the server. R is the job's `requests_per_minute`, or what the workers learned of the
server's limit (stored in the scope), and the turn time is the one they observed; a stated limit
with no observed turn time assumes a few seconds, and with nothing stated or learned the pool starts
at `START_IN_FLIGHT`. CPU: a process runs its threads under one GIL, so a known rate above
`PER_PROCESS_RPS` requests per second gets more processes (up to the machine's cores).

The workers learn during the run (the limit from the first answers' headers, the turn time from the
first turns), so `LocalPool.check` re-sizes every few seconds: it adds processes (never stops one
mid-run) and re-splits the conversations in flight over them through a Redis key each worker reads
at its beat (`runner worker --in-flight-key`). The pool starts small and grows rather than the
other way round: a conversation waiting for budget still holds its thread and memory, and a process
gives little of it back once it has grown.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import redis as redis_lib

from runner.engine.client import check_reachable
from runner.errors import FatalAPIError, Interrupted, UsageError
from runner.jobs import Job, load_job
from runner.queue.batch import Batch, workers_alive
from runner.queue.collector import Collector, sorted_records
from runner.queue.enqueue import enqueue_tasks, ensure_enqueued, retry_batch
from runner.queue.leases import reap
from runner.queue.limits import KEY_PREFIX, as_text
from runner.queue.redis_server import connect, embedded_redis, mask_url, retrying
from runner.queue.retention import DEFAULT_RETENTION, expire_finished, parse_duration
from runner.queue.scopes import scope_for
from runner.queue.worker import DEFAULT_CONCURRENCY, LocalWorkers, local_workers
from runner.records import write_records
from runner.run.options import RunOptions, RunOutcome, aborted
from runner.run.progress import Progress
from runner.run.simulated import simulated_environment
from runner.settings import Settings
from runner.tasks import ConversationTask

INTERRUPT_GRACE_S = 2.0
"""On Ctrl-C, workers get this long to finish the conversation in hand (the rest resume later)."""

NO_WORKER_WARN_S = 5.0
"""`--workers 0`: warn when no live worker has served the queue for this long."""

REPAIR_AFTER_S = 30.0
"""`runner run` re-checks that every unfinished conversation has a job after this long without progress."""

log = logging.getLogger(__name__)

PER_PROCESS = 512
"""Conversations in flight per local worker process at most (then another process)."""

START_IN_FLIGHT = DEFAULT_CONCURRENCY
"""Conversations in flight while no limit is stated or learned yet (the pool grows once one is)."""

ASSUMED_TURN_S = 5.0
"""A turn time not observed yet."""

PER_PROCESS_RPS = 60
"""Requests per second one worker process carries without its one core (the GIL) pacing it: a streamed
turn costs it ~12 ms of CPU (bench/scale.py: 46 turns/s took 56 % of a core), so one process tops out
near 80/s, less under load."""

RESIZE_EVERY_S = 5.0
"""How often `runner run` re-sizes its pool from what the workers learned."""

POOL_KEY_TTL_S = 24 * 3600
"""The pool's in-flight key outlives a `runner run` that was SIGKILLed by this long at most."""

MIN_IN_FLIGHT = 16
HEADROOM = 1.25
"""Conversations also spend time in the limiter, in retries and between turns."""


def pool_size(
    conversations: int,
    rpm: int | None,
    turn_s: float | None,
    concurrency: int | None,
    cores: int | None = None,
) -> tuple[int, int]:
    """(processes, conversations in flight per process) that keep `rpm` busy with turns of `turn_s`."""
    if rpm:
        in_flight = max(MIN_IN_FLIGHT, math.ceil(rpm / 60 * (turn_s or ASSUMED_TURN_S) * HEADROOM))
    else:
        in_flight = START_IN_FLIGHT
    if concurrency:
        in_flight = min(in_flight, concurrency)  # more would only wait for the job's slots
    in_flight = max(1, min(in_flight, conversations))
    processes = max(math.ceil(in_flight / PER_PROCESS), cpu_processes(rpm, in_flight, turn_s, cores))
    return processes, math.ceil(in_flight / processes)


def cpu_processes(rpm: int | None, in_flight: int, turn_s: float | None, cores: int | None = None) -> int:
    """The worker processes whose CPU a known budget (stated or learned, not the assumed one) needs."""
    if not rpm:
        return 1
    # The request rate the pool can reach: the budget's, or less with few conversations in flight.
    rate = min(rpm / 60, in_flight / (turn_s or ASSUMED_TURN_S))
    return max(1, min(cores or os.cpu_count() or 1, math.ceil(rate / PER_PROCESS_RPS)))


def _learned(
    redis: redis_lib.Redis, job: Job, tasks: Sequence[ConversationTask], settings: Settings
) -> tuple[int | None, float | None]:
    """What workers learned of this job's scope on earlier runs: (rpm, turn seconds), None unknown."""
    if not tasks:
        return None, None
    scope = scope_for(redis, settings.server, settings.api_key, tasks[0].model)
    state = {as_text(k): as_text(v) for k, v in redis.hgetall(f"{KEY_PREFIX}{scope.name}:state").items()}
    rpm = state.get("rpm") if state.get("mode") == "headers" else None
    turn_s = state.get("turn_s")
    return (int(rpm) if rpm else None), (float(turn_s) if turn_s else None)


def run_batch(
    job: Job, tasks: Sequence[ConversationTask], options: RunOptions, settings: Settings
) -> RunOutcome:
    """`runner run FILE` without --inline: Redis (embedded unless a URL is given), `options.workers`
    local worker processes (0: rely on workers elsewhere), enqueue or resume, follow with a
    progress line while collecting, write the JSONL, stop everything, return the `RunOutcome`."""
    started = time.monotonic()
    url = options.redis_url or settings.redis_url
    if not url and options.workers == 0:
        raise UsageError("--workers 0 needs --redis-url (or REDIS_URL): a Redis that other workers serve")
    with contextlib.ExitStack() as stack:
        embedded = not url
        if not url:
            url = stack.enter_context(embedded_redis(settings.home, settings.redis_server)).url
        redis = connect(url)
        stack.callback(redis.close)
        if options.on_queue is not None:
            options.on_queue(redis, url)
        if embedded:  # ours alone: drop what is past the retention before adding more
            expire_finished(redis, parse_duration(settings.retention or DEFAULT_RETENTION))
        if options.workers != 0 and settings.api_key:  # this machine's workers call the API: is it there?
            check_reachable(settings)
        workers = None
        sizer: Callable[[], tuple[int, int] | None] | None = None
        if options.workers is None:

            def sized() -> tuple[int, int] | None:  # (processes, conversations each); None: keep
                rpm, turn_s = _learned(redis, job, tasks, settings)
                if job.limits.requests_per_minute:
                    rpm = job.limits.requests_per_minute
                elif turn_s is None and rpm:
                    return None  # a learned limit, no turn time yet: an assumed one would overshoot
                return pool_size(len(tasks), rpm, turn_s, job.limits.concurrency)

            sizer = sized
            processes, concurrency = sized() or (1, START_IN_FLIGHT)
        else:
            processes, concurrency = options.workers, DEFAULT_CONCURRENCY
        if processes:  # started first: their start-up overlaps preparing and enqueuing
            log_path = settings.home / "logs" / f"workers-{job.name}.log"
            workers = LocalPool(stack, redis, url, log_path, settings, sizer)
            workers.add(processes, concurrency)
        batch_id = enqueue_tasks(job, tasks, redis=redis, output=options.output, settings=settings)
        batch = Batch(redis, batch_id)
        output = Path(batch.require().output)
        collector = Collector(batch)
        progress = Progress(
            batch.require().total, enabled=options.progress, stream=options.progress_to
        ).start()
        try:
            _follow(redis, batch, collector, workers, progress, settings.queue_secret, url=url)
        except BaseException as e:
            progress.close()
            interrupted = isinstance(e, KeyboardInterrupt)
            if interrupted and workers is not None:
                workers.stop(grace_s=INTERRUPT_GRACE_S)  # conversations about to finish still land
            collector.poll()
            if isinstance(e, FatalAPIError):  # what ran is kept; no empty file when nothing did
                raise aborted(e, list(collector.records.values()), batch.require().total, output) from None
            collector.write(output)
            if interrupted:
                total = batch.require().total
                raise Interrupted(
                    f"interrupted: {len(collector.records)} of {total} conversations in {output};"
                    " run the same command again to finish the batch"
                ) from None
            raise
        progress.close()
        collector.records.clear()  # the full set is read next: one copy of the records at the peak, not two
        records = sorted_records(batch.records().values())
        write_records(output, records)
    return RunOutcome(batch_id=batch_id, output=output, records=records, wall_s=time.monotonic() - started)


class LocalPool:
    """`runner run`'s own worker processes. Sized (`sizer`): one worker process per part, no pool
    parent, re-sized every `RESIZE_EVERY_S` from what the workers learned (module docstring). With
    `--workers N` (no sizer): one pool of N, as asked."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        redis: redis_lib.Redis,
        url: str,
        log_path: Path,
        settings: Settings,
        sizer: Callable[[], tuple[int, int] | None] | None,
    ) -> None:
        self.stack, self.redis, self.url, self.log_path, self.settings = stack, redis, url, log_path, settings
        self.sizer = sizer
        self.key = f"runner:pool:{uuid.uuid4().hex}:in_flight" if sizer is not None else None
        self.parts: list[LocalWorkers] = []
        self.processes = self.concurrency = 0
        self.resized_at = time.monotonic()
        if self.key is not None:
            key = self.key
            stack.callback(lambda: retrying(lambda: redis.delete(key)))

    def add(self, processes: int, concurrency: int) -> None:
        for n in [1] * processes if self.key is not None else [processes]:
            part = local_workers(self.url, n, self.log_path, self.settings, concurrency, self.key)
            self.parts.append(self.stack.enter_context(part))
        self.processes += processes
        self.concurrency = concurrency

    def check(self) -> None:
        for part in self.parts:
            part.check()
        if self.sizer is None or time.monotonic() - self.resized_at < RESIZE_EVERY_S:
            return
        self.resized_at = time.monotonic()
        sized = retrying(self.sizer)
        if sized is None:
            return
        processes, each = sized
        in_flight = processes * each
        processes = max(processes, self.processes)  # a process is not stopped mid-run
        each = math.ceil(in_flight / processes)
        if each != self.concurrency:
            log.info("%d conversations in flight: %d per process (was %d)", in_flight, each, self.concurrency)
            key = self.key
            assert key is not None
            retrying(lambda: self.redis.set(key, each, ex=POOL_KEY_TTL_S))
            self.concurrency = each
        if processes > self.processes:
            log.info("adding %d worker process(es): the limit needs their CPU", processes - self.processes)
            self.add(processes - self.processes, each)

    def stop(self, grace_s: float) -> None:
        for part in self.parts:
            part.stop(grace_s=grace_s)


def _follow(
    redis: redis_lib.Redis,
    batch: Batch,
    collector: Collector,
    workers: LocalPool | LocalWorkers | None,
    progress: Progress,
    secret: str | None,
    url: str = "",
) -> None:
    last_done, last_change, last_reap, last_repair = -1, time.monotonic(), 0.0, time.monotonic()
    began, warned = time.monotonic(), False
    while True:
        progress.seen(collector.poll())
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
        elif not warned and now - began > NO_WORKER_WARN_S and not retrying(lambda: workers_alive(redis)):
            progress.note(
                f"warning: no worker is serving the queue at {mask_url(url)}: batch {batch.id} waits"
                f" until one starts, e.g. `runner worker --redis-url URL` (with OPENAI_API_KEY set)"
            )
            warned = True
        if now - last_reap > 2.0:
            retrying(lambda: reap(redis, secret=secret))
            last_reap = now
        if info.done != last_done:
            last_done, last_change = info.done, now
        elif now - last_change > REPAIR_AFTER_S and now - last_repair > REPAIR_AFTER_S:
            retrying(lambda: ensure_enqueued(redis, batch.id, secret=secret))
            last_repair = now
        time.sleep(0.25)


def retry_here(batch_id: str, options: RunOptions, settings: Settings) -> tuple[int, RunOutcome | None]:
    """`runner retry BATCH` on the embedded Redis: enqueue the failed and errored conversations
    again and, as no worker serves this Redis, run them with `options.workers` local worker
    processes (`--simulate`: against the simulator answering by the batch's job file), then write
    the batch's JSONL. Returns how many were retried and the outcome (None: nothing to run here)."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(embedded_redis(settings.home, settings.redis_server)).url
        redis = connect(url)
        stack.callback(redis.close)
        batch = Batch(redis, batch_id)
        info = batch.require()
        if options.simulate:
            source = batch.source()
            if not source or not Path(source).is_file():
                raise UsageError(f"--simulate needs the batch's job file, which is gone: {source}")
            settings = stack.enter_context(simulated_environment(load_job(source), settings))
        n = retry_batch(batch_id, redis, secret=settings.queue_secret)
        if n == 0 or workers_alive(redis) or not options.workers:
            return n, None
        log_path = settings.home / "logs" / f"workers-{info.job}.log"
        workers = stack.enter_context(local_workers(url, options.workers, log_path, settings))
        output = Path(info.output)
        collector = Collector(batch)
        progress = Progress(info.total, enabled=options.progress, stream=options.progress_to).start()
        try:
            _follow(redis, batch, collector, workers, progress, settings.queue_secret, url=url)
        finally:
            progress.close()
        records = sorted_records(batch.records().values())
        write_records(output, records)
    return n, RunOutcome(batch_id=batch_id, output=output, records=records, wall_s=time.monotonic() - started)
