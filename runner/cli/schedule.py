"""Command: `runner schedule FILE...`, the long-running scheduler (see `runner.schedule`)."""

from __future__ import annotations

import logging

import click

from runner.cli import main, redis_option


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
def schedule(job_files: tuple[str, ...], redis_url: str | None, lease_ttl: float) -> None:
    """Enqueue a batch of every job file that has `schedule:` at each of its cron ticks, until stopped.

    Run it on two machines for availability: one holds a lease per job and enqueues its ticks, the
    other stands by and takes over when the first dies; each tick is enqueued once. `runner worker`
    processes the batches; `runner status` shows the schedules. Files are re-read when they change.

    \b
    Cron (UTC unless prefixed with CRON_TZ=<zone>):
      schedule: "0 6 * * *"                       # 06:00 UTC every day
      schedule: "CRON_TZ=Europe/Paris 0 6 * * 1-5" # 06:00 Paris time on weekdays
      schedule: "*/30 * * * * *"                   # every 30 seconds (6 fields: seconds first)
    \b
    Example:
      runner schedule jobs/*.yaml --redis-url "$REDIS_URL"
    """
    from runner.schedule import serve

    # One line per tick enqueued or skipped is the scheduler's output, whatever -v says.
    logger = logging.getLogger("runner.schedule")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    serve(job_files, redis=_connect(redis_url), lease_ttl_s=lease_ttl)


def _connect(redis_url: str | None):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(redis_url or "redis://localhost:6379/0")
