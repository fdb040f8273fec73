"""`runner run --inline`: every conversation in this process, in threads, under a local limiter.

No Redis and no worker processes: for debugging, for small jobs, and where a queue is not wanted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

from runner.engine.client import check_reachable, make_client
from runner.engine.conversation import prepare_tasks, run_conversation
from runner.engine.limits import LocalLimiter
from runner.errors import FatalAPIError
from runner.jobs import Job, render_output
from runner.records import Record, new_batch_id, write_records
from runner.run.options import RunOptions, RunOutcome, aborted
from runner.run.progress import Progress
from runner.settings import Settings
from runner.tasks import ConversationTask

INLINE_CONCURRENCY = 64
"""Conversations in flight when the job's `limits:` set no `concurrency`."""


def run_inline(
    job: Job, tasks: Sequence[ConversationTask], options: RunOptions, settings: Settings
) -> RunOutcome:
    """Every task in this process, `limits.concurrency` at a time; writes the JSONL.

    A FatalAPIError (401/403/quota) stops everything: nothing new starts, and it propagates."""
    began = time.monotonic()
    now = datetime.now(UTC)
    batch_id = new_batch_id(job.name, now)
    output = (
        Path(options.output)
        if options.output
        else render_output(job.output, name=job.name, batch=batch_id, now=now)
    )
    limits = job.limits
    limiter = LocalLimiter(limits.requests_per_minute, limits.tokens_per_minute)
    client = make_client(settings)
    check_reachable(settings)  # a server that is not there: exit 3 now, not after every retry
    tasks = prepare_tasks(job, tasks, limiter, client=client, settings=settings)
    stop = threading.Event()
    records: list[Record] = []

    with Progress(len(tasks), enabled=options.progress, stream=options.progress_to) as progress:

        def work(task: ConversationTask) -> None:
            if stop.is_set():
                return
            progress.started()
            try:
                record = run_conversation(
                    task, batch_id=batch_id, limiter=limiter, client=client, settings=settings
                )
            except BaseException:
                stop.set()
                raise
            records.append(record)
            progress.finished(record)

        with ThreadPoolExecutor(
            max_workers=max(1, min(limits.concurrency or INLINE_CONCURRENCY, len(tasks))),
            thread_name_prefix="conv",
        ) as pool:
            futures: list[Future[None]] = [pool.submit(work, t) for t in tasks]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: start nothing new; what is in flight ends on its own
                stop.set()
                raise
            finally:
                for f in futures:
                    f.cancel()
        for f in futures:
            error = None if f.cancelled() else f.exception()
            if isinstance(error, FatalAPIError):
                raise aborted(error, records, len(tasks), output) from None
            if error is not None:
                raise error

    records.sort(key=lambda r: r["conversation_id"])
    write_records(output, records)
    return RunOutcome(batch_id=batch_id, output=output, records=records, wall_s=time.monotonic() - began)
