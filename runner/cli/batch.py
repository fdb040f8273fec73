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
    """The given Redis, or (none given) the embedded one of a `runner run` serving it right now, or
    that embedded Redis's data, started for this command."""
    from runner.queue.redis_server import connect, embedded_redis, live_embedded_url

    settings = Settings.from_env()
    redis_url = redis_url or live_embedded_url(settings.home)
    if redis_url:
        client = connect(redis_url)
        yield client
        client.close()
        return
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
@click.option(
    "--batch-api",
    is_flag=True,
    help="Through the provider's Batch API, polled by the workers' scheduled jobs.",
)
def enqueue(job_file: str, redis_url: str | None, output: str | None, batch_api: bool) -> None:
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
    if batch_api or job.batch_api:
        from runner.jobs import expand
        from runner.queue.batch_api_jobs import enqueue_batch_api

        click.echo(
            enqueue_batch_api(
                job, expand(job), redis=client, output=output, secret=Settings.from_env().queue_secret
            )
        )
        return
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
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics of the pool on this port (http://HOST:PORT/metrics).",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics port binds to."
)
@click.option(
    "--redis-outage",
    type=click.FloatRange(0),
    default=None,
    metavar="SECONDS",
    help="Ride out an unreachable Redis this long, then stop (exit 69). [default: RUNNER_REDIS_OUTAGE_S, 60]",
)
@click.option("--no-pool", is_flag=True, hidden=True, help="-n 1 with no parent to restart it (runner run).")
@click.option("--in-flight-key", hidden=True, help="Redis key: how many conversations to carry (runner run).")
def worker(
    redis_url: str | None,
    processes: int,
    burst: bool,
    concurrency: int,
    metrics_port: int | None,
    metrics_host: str,
    redis_outage: float | None,
    no_pool: bool,
    in_flight_key: str | None,
) -> None:
    """Process conversations of any batch on the Redis, under each job's shared limits, until stopped.

    Each process keeps up to --concurrency conversations in flight (one RQ job each). SIGTERM or
    Ctrl-C: each process finishes the conversations in flight, then stops; a second one stops at
    once (its conversations run again elsewhere). Workers run only the runner's own jobs; with
    RUNNER_QUEUE_SECRET set, only jobs signed with it.

    Redis unreachable: no new conversation is taken, those in flight go on and records wait in a
    spool under RUNNER_HOME until Redis is back. Past --redis-outage a process stops its
    conversations (they run again elsewhere) and exits with code 69; the pool starts another, which
    delivers the spooled records once it reaches Redis.

    \b
    Example:
      OPENAI_API_KEY=sk-... RUNNER_QUEUE_SECRET=... runner worker -n 2 -c 128 --redis-url rediss://:pw@redis.internal:6380/0
    """
    from runner.queue.security import MIN_SECRET_LEN, is_local_redis

    url = _need_url(redis_url, "worker")
    settings = Settings.from_env()
    if redis_outage is not None:
        settings = settings.replace(redis_outage_s=redis_outage)
    if settings.queue_secret is None and not is_local_redis(url):
        click.echo(
            "warning: RUNNER_QUEUE_SECRET is not set and this Redis is reachable from other machines:"
            " anyone who can write to it can have these workers run conversations with your API key"
            " (set the same RUNNER_QUEUE_SECRET for `runner run`/`enqueue` and every worker)",
            err=True,
        )
    elif settings.queue_secret is not None and len(settings.queue_secret) < MIN_SECRET_LEN:
        click.echo(
            f"warning: RUNNER_QUEUE_SECRET is shorter than {MIN_SECRET_LEN} characters: the signatures"
            " stored in Redis let anyone reading it guess a short secret; use a long random one",
            err=True,
        )
    if metrics_port is not None:
        from runner.queue.metrics import start_metrics_server

        # Before the pool forks (and before anything imports prometheus_client): every worker
        # process then writes its figures where this server sums them.
        start_metrics_server(metrics_port, metrics_host)
        click.echo(f"metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    from runner.queue.worker import WorkerPool

    pooled = not no_pool
    WorkerPool(
        url, processes, settings=settings, burst=burst, concurrency=concurrency, pooled=pooled,
        in_flight_key=in_flight_key,
    ).run()  # fmt: skip


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
    from runner.queue.security import refused_count

    alive, refused = workers_alive(client), refused_count(client)
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
        if c["fenced"]:
            lines.append(f"fenced    {c['fenced']} run(s) stopped: lease lost, re-run elsewhere")
        if refused:
            lines.append(f"refused   {refused} foreign, unsigned or altered jobs on this Redis (any batch)")
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
    lines.append(f"refused jobs: {refused}")
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
    pending = info.counts.get("queued", 0) + info.counts.get("running", 0)
    unfinished = not info.finished or pending > 0
    if unfinished and not missing:  # e.g. retried: the file holds their records from before
        click.echo(
            f"warning: batch {batch} is not finished ({pending} conversations queued or running);"
            " records written for them are from before they were retried",
            err=True,
        )
    raise SystemExit(1 if missing or unfinished else exit_code(summarize(records)))


@main.command()
@click.argument("batch")
@redis_option
@click.option(
    "--workers",
    type=click.IntRange(0, 256),
    default=4,
    show_default=True,
    help="Embedded Redis, no worker serving it: run them here with N processes (0: only enqueue).",
)
@click.option("--simulate", is_flag=True, help="Run them against the simulator (embedded Redis only).")
@click.option("--no-progress", is_flag=True, help="No live progress line.")
def retry(batch: str, redis_url: str | None, workers: int, simulate: bool, no_progress: bool) -> None:
    """Enqueue again only BATCH's conversations that failed a check or errored.

    On a shared Redis, the workers serving it run them: their new records replace the old ones as
    they finish; then `runner collect BATCH`. On the embedded Redis of `runner run` (no --redis-url),
    where no worker runs, they are run here, like `runner run` does, and the JSONL is rewritten.
    """
    if redis_url:
        from runner.queue.enqueue import retry_batch

        if simulate:
            raise UsageError("--simulate runs the conversations here: only without --redis-url")
        with _open(redis_url) as client:
            n = retry_batch(batch, client, secret=Settings.from_env().queue_secret)
        click.echo(f"{n} conversation{'s' if n != 1 else ''} of batch {batch} enqueued again")
        return
    from runner.cli.run import finish_run
    from runner.run import RunOptions
    from runner.run.queued import retry_here

    settings = Settings.from_env()
    if not (settings.home / "redis").is_dir():
        raise UsageError(
            "no Redis: pass --redis-url or set REDIS_URL (no embedded Redis under RUNNER_HOME yet)"
        )
    options = RunOptions(
        workers=workers, simulate=simulate, progress=not no_progress, progress_to=sys.stderr
    )
    n, result = retry_here(batch, options, settings)
    click.echo(f"{n} conversation{'s' if n != 1 else ''} of batch {batch} enqueued again")
    if result is not None:
        raise SystemExit(finish_run(result, options, settings))
    if n:
        click.echo(f"they run when a worker serves this Redis; then: runner collect {batch}")


@main.command()
@redis_option
@click.option(
    "--older-than",
    default=lambda: Settings.from_env().retention or "1d",
    show_default="$RUNNER_RETENTION, or 1d",
    metavar="DURATION",
    help="Drop finished batches whose last change is at least this old (90s, 30m, 12h, 7d, 0: all).",
)
def gc(redis_url: str | None, older_than: str) -> None:
    """Drop finished and aborted batches (their records, tasks and RQ jobs) past the retention now,
    and compact the Redis append-only file. Unfinished batches are kept (they can be resumed).

    `runner run` on the embedded Redis does the same at start with $RUNNER_RETENTION (default 1d).

    \b
    Examples:
      runner gc                  # the embedded Redis of `runner run`, batches finished a day ago
      runner gc --older-than 0   # every finished batch
    """
    from runner.queue.retention import compact, expire_finished, parse_duration

    seconds = parse_duration(older_than)
    with _open(redis_url) as client:
        expired = expire_finished(client, seconds)
        compacted = compact(client)
    n = len(expired.batches)
    click.echo(
        f"removed {n} finished batch{'es' if n != 1 else ''} older than {older_than}"
        f"; kept {expired.kept_unfinished} unfinished"
        + ("; compacting the append-only file" if compacted else "")
    )


@main.command()
@click.argument("batch")
@redis_option
def cancel(batch: str, redis_url: str | None) -> None:
    """Cancel BATCH: its queued conversations are dropped, running ones finish and are recorded.
    A batch run through the provider's Batch API (--batch-api) has its provider batches cancelled
    too, and its unfinished conversations recorded as cancelled.

    Running the same job file again (same output) resumes it: the dropped conversations run then.
    """
    from runner.queue.enqueue import cancel_batch
    from runner.run.batch_api import cancel_provider_batches

    with _open(redis_url) as client:
        ids = cancel_provider_batches(batch, client, Settings.from_env())
        if ids is None:  # an ordinary batch: its RQ jobs
            n = cancel_batch(batch, client)
    if ids is not None:
        shown = ", ".join(ids) if ids else "none in flight"
        click.echo(f"batch {batch} cancelled; provider batches cancelled: {shown}")
        return
    click.echo(f"batch {batch} cancelled: {n} queued conversation{'s' if n != 1 else ''} dropped")
