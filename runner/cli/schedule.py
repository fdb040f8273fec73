"""Command: `runner schedule FILE...`, the long-running scheduler (see `runner.queue.scheduler`)."""

from __future__ import annotations

import logging
import signal

import click

from runner.cli import main, redis_option
from runner.errors import UsageError


@main.command()
@click.argument("job_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@redis_option
@click.option(
    "--lease-ttl",
    type=click.FloatRange(0.5, 600),
    default=5.0,
    show_default=True,
    help="Seconds a dead scheduler keeps its lease; a standby takes over after it.",
)
@click.option(
    "--collect/--no-collect",
    default=True,
    show_default=True,
    help="Write each finished batch's JSONL here (to the job's `output`, rendered with the tick time).",
)
def schedule(job_files: tuple[str, ...], redis_url: str | None, lease_ttl: float, collect: bool) -> None:
    """Enqueue a batch of every job file with `schedule:` at each of its cron ticks, until stopped.

    Run it on two machines for availability: one holds a lease per job and enqueues its ticks, the
    other stands by and takes over when the first dies; each tick is enqueued once. `runner worker`
    processes the batches, the scheduler writes their JSONL, `runner status` shows the schedules.
    Edits to the files are picked up at the next tick.

    \b
    Cron (UTC unless prefixed with CRON_TZ=<zone>):
      schedule: "0 6 * * *"                        # 06:00 UTC every day
      schedule: "CRON_TZ=Europe/Paris 0 6 * * 1-5"  # 06:00 Paris time on weekdays
      schedule: "*/30 * * * * *"                    # every 30 s (6 fields: seconds first)
    \b
    Example:
      runner schedule jobs/*.yaml --redis-url "$REDIS_URL"
    """
    from runner.queue.redis_server import connect
    from runner.queue.scheduler import Scheduler

    if not redis_url:
        raise UsageError("`runner schedule` needs a shared Redis: pass --redis-url or set REDIS_URL")
    # Its log lines (one per tick enqueued or skipped) are the scheduler's output, whatever -v says.
    logger = logging.getLogger("runner.queue.scheduler")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    scheduler = Scheduler(job_files, connect(redis_url), lease_ttl_s=lease_ttl, collect=collect)

    def on_signal(signum: int, frame: object) -> None:
        logger.info("stopping (%s)", signal.Signals(signum).name)
        scheduler.stop()  # the loop ends, the leases are released, the command exits 0

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    scheduler.run()
