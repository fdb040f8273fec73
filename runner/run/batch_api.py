"""`runner run FILE --batch-api` (or `batch_api: true`): the conversations through the provider's
Batch API, at half the price, polled by this process.

The rounds and their exactly-once bookkeeping are `runner.queue.batch_api`; this module gives
them a Redis (embedded unless a URL is given), polls until every conversation has its record,
shows progress and writes the JSONL. Ctrl-C leaves the provider batches running (they are paid
for): running the same command again picks them up; `runner cancel BATCH` cancels them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.errors import Interrupted
from runner.jobs import Job
from runner.queue.batch import Batch
from runner.queue.batch_api import BatchApiRun, pb_key, start_batch_api
from runner.queue.batch_api_jobs import DEFAULT_MAX_ATTEMPTS, provider_for
from runner.queue.collector import sorted_records
from runner.queue.redis_server import connect, embedded_redis
from runner.records import write_records
from runner.run.options import RunOptions, RunOutcome
from runner.run.progress import Progress
from runner.settings import Settings
from runner.tasks import ConversationTask


def run_batch_api(
    job: Job, tasks: Sequence[ConversationTask], options: RunOptions, settings: Settings
) -> RunOutcome:
    began = time.monotonic()
    url = options.redis_url or settings.redis_url
    with contextlib.ExitStack() as stack:
        if not url:
            url = stack.enter_context(embedded_redis(settings.home, settings.redis_server)).url
        redis = connect(url)
        stack.callback(redis.close)
        if options.on_queue is not None:
            options.on_queue(redis, url)
        batch_id = start_batch_api(job, tasks, redis=redis, output=options.output)
        batch = Batch(redis, batch_id)
        output = Path(batch.require().output)
        rounds = BatchApiRun(redis, batch_id, provider_for(settings, job.limits.max_attempts))
        progress = Progress(batch.require().total, enabled=options.progress, stream=options.progress_to)
        progress.start()
        try:
            while True:
                step = rounds.step()
                info = batch.require()
                c = info.counts
                progress.update(
                    done=info.done,
                    failed=c["failed"] + c["errors"],
                    in_flight=info.total - info.done,
                    tokens=c["tokens"],
                    total=info.total,
                )
                if step.done:
                    break
                time.sleep(step.wait_s)
        except KeyboardInterrupt:
            progress.close()
            ids = ", ".join(rounds.provider_batch_ids()) or "none yet"
            raise Interrupted(
                f"interrupted: the provider batches keep running ({ids}); run the same command again"
                f" to pick them up, or `runner cancel {batch_id}` to cancel them"
            ) from None
        progress.close()
        records = sorted_records(batch.records().values())
        write_records(output, records)
    return RunOutcome(batch_id=batch_id, output=output, records=records, wall_s=time.monotonic() - began)


def cancel_provider_batches(batch_id: str, redis: Any, settings: Settings) -> list[str] | None:
    """`runner cancel BATCH` for a `--batch-api` batch: cancel its provider batches in flight and
    record its unfinished conversations as cancelled. Returns the provider batch ids asked to
    cancel, or None when BATCH is not a Batch API batch (nothing done)."""
    Batch(redis, batch_id).require()  # an unknown id: exit 2
    if not redis.exists(pb_key(batch_id)):
        return None
    return BatchApiRun(redis, batch_id, provider_for(settings, DEFAULT_MAX_ATTEMPTS)).cancel()
