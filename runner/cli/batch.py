"""Commands of the queue: `enqueue`, `worker`, `status`, `collect`, `retry` (see `runner.queue.enqueue`).

`enqueue` and `worker` need a shared Redis (`--redis-url` or REDIS_URL). `status`, `collect` and
`retry` without one open the embedded Redis that `runner run` left under RUNNER_HOME.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import click
import redis as redis_lib

from runner.cli import main, redis_option
from runner.errors import UsageError
from runner.settings import Settings


def _need_url(redis_url: str | None, command: str) -> str:
    if not redis_url:
        raise UsageError(f"`runner {command}` needs a shared Redis: pass --redis-url or set REDIS_URL")
    return redis_url


@contextlib.contextmanager
def _open(redis_url: str | None) -> Iterator[redis_lib.Redis]:
    """The given Redis, or (none given) the embedded one of `runner run`, started for this command."""
    from runner.queue.redis_server import connect, embedded_redis

    if redis_url:
        client = connect(redis_url)
        yield client
        client.close()
        return
    settings = Settings.from_env()
    if not (settings.home / "redis").is_dir():
        raise UsageError(
            "no Redis: pass --redis-url or set REDIS_URL (no embedded Redis under RUNNER_HOME yet)"
        )
    with embedded_redis(settings.home, settings.redis_server) as server:
        client = connect(server.url)
        yield client
        client.close()


@main.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@redis_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="JSONL the batch is collected to.")
def enqueue(job_file: str, redis_url: str | None, output: str | None) -> None:
    """Validate JOB_FILE, prepare its assistants and enqueue one job per conversation; print the batch id.

    Enqueuing the same file (same output) again while its batch is unfinished adds nothing.

    \b
    Example:
      BATCH=$(runner enqueue jobs/bulk.yaml --redis-url "$REDIS_URL")
      runner worker -n 8 --burst && runner collect "$BATCH" -o out.jsonl
    """
    from runner.jobs import load_job
    from runner.queue.enqueue import enqueue_job
    from runner.queue.redis_server import connect

    job = load_job(job_file)  # exit 2 before anything is sent
    client = connect(_need_url(redis_url, "enqueue"))
    batch_id = enqueue_job(job, redis=client, output=output, settings=Settings.from_env())
    click.echo(batch_id)


@main.command()
@redis_option
@click.option("-n", "--processes", type=click.IntRange(1, 512), default=1, show_default=True, help="Workers.")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
@click.option(
    "-c", "--concurrency", type=click.IntRange(1, 2048), default=64, show_default=True,
    help="Conversations in flight per process.",
)  # fmt: skip
def worker(redis_url: str | None, processes: int, burst: bool, concurrency: int) -> None:
    """Process conversations of any batch on the Redis, under each job's shared limits, until stopped.

    Each process keeps up to --concurrency conversations in flight (one RQ job each). SIGTERM or
    Ctrl-C: each process finishes the conversations in flight, then stops; a second one stops at
    once (its conversations run again elsewhere).

    \b
    Example:
      OPENAI_API_KEY=sk-... runner worker -n 2 -c 128 --redis-url rediss://:pw@redis.internal:6380/0
    """
    from runner.queue.worker import WorkerPool

    url = _need_url(redis_url, "worker")
    WorkerPool(url, processes, settings=Settings.from_env(), burst=burst, concurrency=concurrency).run()


@main.command()
@click.argument("batch", required=False)
@redis_option
@click.option(
    "--watch", is_flag=True, help="Refresh every second until the batch is finished (Ctrl-C stops)."
)
def status(batch: str | None, redis_url: str | None, watch: bool) -> None:
    """Counts per state, rate, ETA and workers alive for BATCH, or the recent batches and schedules."""
    with _open(redis_url) as client:
        while True:
            text, finished = _status_text(client, batch)
            tty = sys.stdout.isatty()
            if watch and tty:
                click.clear()
            click.echo(text)
            if not watch or (batch is not None and finished):
                return
            time.sleep(1.0)
            if not tty:
                click.echo("")


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return (
        f"{s}s"
        if s < 120
        else f"{s // 60}m{s % 60:02d}s"
        if s < 7200
        else f"{s // 3600}h{s % 3600 // 60:02d}m"
    )


def _status_text(client: redis_lib.Redis, batch_id: str | None) -> tuple[str, bool]:
    from runner.queue.batch import Batch, recent_batches, workers_alive

    alive = workers_alive(client)
    if batch_id is not None:
        i = Batch(client, batch_id).require()
        c = i.counts
        lines = [
            f"batch     {i.id} ({i.job})",
            f"state     {i.state}; created {_when(i.created_at)}, started {_when(i.started_at)}, "
            f"ended {_when(i.ended_at)}",
            f"done      {i.done}/{i.total}: {c['passed']} passed, {c['failed']} failed, "
            f"{c['errors']} errors, {c['nochecks']} without checks",
            f"waiting   {c['running']} running, {c['queued']} queued, {c['dropped']} dropped",
            f"rate      {i.rate:.2f}/s, ETA {_eta(i.eta_s)}, {c['tokens']} tokens, {c['requests']} requests",
            f"workers   {alive} alive",
            f"output    {i.output}",
        ]
        if i.aborted:
            lines.append(f"aborted   {i.aborted}")
        return "\n".join(lines), i.finished or i.aborted is not None
    rows: list[tuple[str, ...]] = [
        ("BATCH", "JOB", "STATE", "DONE", "PASSED", "FAILED", "ERRORS", "RUNNING", "RATE/s", "ETA")
    ]
    for i in recent_batches(client):
        c = i.counts
        eta = _eta(i.eta_s) if i.state == "running" else "-"
        counts = (str(c["passed"]), str(c["failed"]), str(c["errors"]), str(c["running"]))
        rows.append((i.id, i.job, i.state, f"{i.done}/{i.total}", *counts, f"{i.rate:.2f}", eta))
    lines = _table(rows) if len(rows) > 1 else ["no batches"]
    lines.append(f"workers alive: {alive}")
    lines += _scope_lines(client)
    lines += _schedule_lines(client)
    return "\n".join(lines), False


def _scope_lines(client: redis_lib.Redis) -> list[str]:
    """The limiter's scopes (server, key fingerprint, model): budget, use in the minute, cooldown."""
    from runner.queue.scopes import scope_status

    scopes = scope_status(client)
    if not scopes:
        return []
    head = ("SERVER", "KEY", "MODEL", "RPM", "USED", "TPM", "USED", "FROM", "COOLDOWN")
    rows: list[tuple[str, ...]] = [head]
    for s in scopes:
        cool = f"{s.cooldown_s:.1f}s" if s.cooldown_s else "-"
        cells = (s.host, s.key, s.model, s.rpm or "?", s.requests_used, s.tpm or "?", s.tokens_used, s.source)
        rows.append((*(str(c) for c in cells), f"{cool} ({s.cooldowns} so far)"))
    return ["", *_table(rows)]


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _schedule_lines(client: redis_lib.Redis) -> list[str]:
    from runner.queue.schedules import schedule_status

    schedules = schedule_status(client)
    if not schedules:
        return []
    rows: list[tuple[str, ...]] = [("SCHEDULE", "CRON", "NEXT TICK", "LAST BATCH", "LAST STATUS")]
    for s in schedules:
        cells = (s["cron"], s["next_tick"], s["last_batch"], s["last_status"])
        rows.append((s["job"], *(str(x) if x else "-" for x in cells)))
    return ["", *_table(rows)]


@main.command()
@click.argument("batch")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="JSONL to write (default: the batch's)."
)
@redis_option
def collect(batch: str, output: str | None, redis_url: str | None) -> None:
    """Write (or finish writing) BATCH's JSONL: each conversation exactly once, sorted by id.

    Exits 0 when the batch is complete and every check passed, 1 otherwise.
    """
    from runner.queue.batch import Batch
    from runner.queue.collector import collect as collect_batch
    from runner.records import read_records
    from runner.reports.summary import exit_code, summarize

    with _open(redis_url) as client:
        info = Batch(client, batch).require()
        path = collect_batch(batch, client, output)
    records = list(read_records(path))
    missing = info.total - len(records)
    click.echo(
        f"{len(records)} conversations written to {path}"
        + (f" ({missing} not finished yet)" if missing else "")
    )
    raise SystemExit(1 if missing else exit_code(summarize(records)))


@main.command()
@click.argument("batch")
@redis_option
def retry(batch: str, redis_url: str | None) -> None:
    """Enqueue again only BATCH's conversations that failed a check or errored.

    Their new records replace the old ones as they finish; then `runner collect BATCH`.
    """
    from runner.queue.enqueue import retry_batch

    with _open(redis_url) as client:
        n = retry_batch(batch, client)
    click.echo(f"{n} conversation{'s' if n != 1 else ''} of batch {batch} enqueued again")
