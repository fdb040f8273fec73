"""`runner run FILE` on the queue: Redis (embedded unless a URL is given), local worker processes,
a progress line while records are collected as they arrive, the JSONL, everything stopped.

`--workers 0` relies on workers elsewhere serving the same Redis. Ctrl-C stops the local workers
after a short grace, writes what has arrived and says how to finish the batch (run it again).

Without `--workers`, the local pool is sized to fill the limit (`pool_size`): by Little's law, the
conversations in flight that a budget of R requests per minute needs are R/60 x the time a turn
takes. R is the job's `requests_per_minute`, or what the workers learned of the server's limit on an
earlier run (stored in the scope), and the turn time is the one they observed there; unknown, a
typical tier's and a few seconds are assumed. Threads are cheap (a worker process carries up to
`PER_PROCESS` conversations), so the size errs on the large side: the limiter, not the pool, paces.
CPU is not: a process runs its threads under one GIL, so a known rate above `PER_PROCESS_RPS`
requests per second gets more processes (up to the machine's cores); when the limit is learned only
during the run, `runner run` adds them then (`LocalPool.check`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
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

ASSUMED_RPM = 3000
"""A limit nobody stated or learned yet: a typical paid tier's requests per minute."""

ASSUMED_TURN_S = 5.0
"""A turn time not observed yet."""

PER_PROCESS_RPS = 30
"""Requests per second one worker process carries without its one core (the GIL) pacing it: a streamed
turn costs it ~20 ms of CPU (bench/scale.py), so one process tops out near 45/s, less under load."""

RESIZE_EVERY_S = 5.0
"""How often `runner run` re-sizes its pool from what the workers learned."""

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
    turn_s = turn_s or ASSUMED_TURN_S
    in_flight = math.ceil((rpm or ASSUMED_RPM) / 60 * turn_s * HEADROOM)
    in_flight = max(MIN_IN_FLIGHT, in_flight)
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
        cpu_need: Callable[[], int] | None = None
        if options.workers is None:

            def sized() -> tuple[int, int, int]:  # processes, conversations each, processes for CPU
                rpm, turn_s = _learned(redis, job, tasks, settings)
                rpm = job.limits.requests_per_minute or rpm
                processes, each = pool_size(len(tasks), rpm, turn_s, job.limits.concurrency)
                return processes, each, cpu_processes(rpm, processes * each, turn_s)

            def cpu_need() -> int:
                return sized()[2]

            processes, concurrency, _ = sized()
        else:
            processes, concurrency = options.workers, DEFAULT_CONCURRENCY
        if processes:  # started first: their start-up overlaps preparing and enqueuing
            log_path = settings.home / "logs" / f"workers-{job.name}.log"
            workers = LocalPool(stack, url, log_path, settings, cpu_need)
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
    """`runner run`'s own worker processes: those sized at start, and more once the limit the workers
    learn shows that one process's CPU would pace the run (`pool_size`, re-read every few seconds)."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        url: str,
        log_path: Path,
        settings: Settings,
        cpu_need: Callable[[], int] | None,
    ) -> None:
        self.stack, self.url, self.log_path, self.settings = stack, url, log_path, settings
        self.cpu_need = cpu_need  # None: `--workers N`, as asked
        self.parts: list[LocalWorkers] = []
        self.processes = self.concurrency = 0
        self.resized_at = time.monotonic()

    def add(self, processes: int, concurrency: int) -> None:
        part = local_workers(self.url, processes, self.log_path, self.settings, concurrency)
        self.parts.append(self.stack.enter_context(part))
        self.processes += processes
        self.concurrency = self.concurrency or concurrency  # what the first ones carry, each

    def check(self) -> None:
        for part in self.parts:
            part.check()
        if self.cpu_need is not None and time.monotonic() - self.resized_at >= RESIZE_EVERY_S:
            self.resized_at = time.monotonic()
            # Grows for CPU only: threads are cheap, and a turn time observed under a binding limit
            # includes the wait for budget, so in-flight counts read from it overshoot.
            processes = retrying(self.cpu_need)
            for _ in range(processes - self.processes):  # grows only: a smaller need just idles threads
                log.info("adding a worker process (%d in all): the limit needs it", self.processes + 1)
                self.add(1, self.concurrency)

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


def retry_here(
    batch_id: str, options: RunOptions, settings: Settings
) -> tuple[int, RunOutcome | None]:
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
