"""Command: `runner run FILE`, the main job."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from runner.cli import main, redis_option
from runner.errors import UsageError
from runner.records import ERROR, FAILED, Record
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.run import RunOptions, RunOutcome

FAILURES_SHOWN = 10
"""Failed conversations listed at the end of `runner run` (the rest are in `runner report`)."""


@main.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="JSONL to write (default: the job's `output`)."
)
@click.option(
    "--workers",
    type=click.IntRange(0, 256),
    default=None,
    help="Local worker processes (default: sized to fill the rate limit; 0: only workers already"
    " serving --redis-url).",
)
@click.option("--simulate", is_flag=True, help="Run against the built-in simulator on a free loopback port.")
@redis_option
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write a JUnit XML report.")
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False), help="Also write a self-contained HTML report."
)
@click.option(
    "--fail-under", type=click.FloatRange(0, 1), help="Exit 1 only when the pass rate is below this."
)
@click.option("--inline", is_flag=True, help="No queue: run in this process (for debugging).")
@click.option(
    "--batch-api",
    is_flag=True,
    help="Through the provider's Batch API: half the price, results within 24 h (chat, responses).",
)
@click.option("--no-progress", is_flag=True, help="No live progress line.")
@click.option(
    "--view",
    "view_port",
    type=click.IntRange(0, 65535),
    default=None,
    is_flag=False,
    flag_value=8765,
    help="Serve the live web view of this run on 127.0.0.1 (port 8765, or --view=PORT) while it runs.",
)
def run(
    job_file: str,
    output: str | None,
    workers: int | None,
    simulate: bool,
    redis_url: str | None,
    junit: str | None,
    html_path: str | None,
    fail_under: float | None,
    inline: bool,
    batch_api: bool,
    no_progress: bool,
    view_port: int | None,
) -> None:
    """Run every conversation of JOB_FILE and write one transcript line per conversation.

    \b
    Examples:
      runner run jobs/quickstart.yaml --simulate
      runner run suite.yaml -o out.jsonl --junit junit.xml --workers 8
    """
    from runner.run import RunOptions, run_job  # lazy: the engine and the SDK load only for a run

    if view_port is not None and inline:
        raise UsageError("--view shows the queue: it does not go with --inline")
    options = RunOptions(
        output=output,
        workers=workers,
        simulate=simulate,
        redis_url=redis_url,
        inline=inline,
        batch_api=batch_api,
        junit=junit,
        html=html_path,
        fail_under=fail_under,
        progress=not no_progress,
        progress_to=sys.stderr,
        on_queue=None if view_port is None else _viewer(view_port),
    )
    settings = Settings.from_env()
    result = run_job(job_file, options, settings)
    raise SystemExit(finish_run(result, options, settings))


def _viewer(port: int) -> Callable[[Any, str], None]:
    """`--view`: once the run's Redis is up, serve the read-only web view on it in a thread (it
    ends with the run)."""

    def start(client: Any, url: str) -> None:
        from runner.queue.redis_server import mask_url
        from runner.view import ViewConfig, create_app
        from runner.view.server import ViewServer, allowed_hosts

        config = ViewConfig(redis=client, redis_label=mask_url(url), allowed_hosts=allowed_hosts("127.0.0.1"))
        server = ViewServer(create_app(config), "127.0.0.1", port).start()
        click.echo(f"runner view of this run on {server.url}", err=True)

    return start


def finish_run(result: RunOutcome, options: RunOptions, settings: Settings | None = None) -> int:
    """Print the summary of a finished `runner run`, write the optional reports, return the exit code."""
    settings = settings or Settings.from_env()
    from runner.reports.files import write_reports
    from runner.reports.pricing import DEFAULT_PRICES, PriceTable, load_prices
    from runner.reports.summary import MARK, exit_code, outcome, problems, summarize, tokens_total_text

    records: list[Record] = result.records
    s = summarize(records)
    click.echo(
        f"{s.conversations} conversations: {s.passed} passed, {s.failed} failed, {s.errors} errors"
        f"{f', {s.no_checks} without checks' if s.no_checks else ''}; {tokens_total_text(s)} tokens; "
        f"{result.wall_s:.1f}s"
    )
    click.echo(f"transcripts: {result.output}")
    bad = [r for r in records if outcome(r) in (FAILED, ERROR)]
    for r in bad[:FAILURES_SHOWN]:
        click.echo(f"  {MARK[outcome(r)]} {r['conversation_id']}: {problems(r)[0]}")
    if len(bad) > FAILURES_SHOWN:
        click.echo(f"  … and {len(bad) - FAILURES_SHOWN} more (runner report {result.output})")
    if options.junit or options.html:
        try:
            prices = load_prices(settings.prices)
        except UsageError as e:  # the run is done: a bad $RUNNER_PRICES must not lose its result
            click.echo(f"warning: {e}; using the built-in prices", err=True)
            prices = PriceTable(DEFAULT_PRICES)
        written = write_reports(
            records, junit=options.junit, html=options.html, prices=prices, source=str(result.output)
        )
        for line in written:
            click.echo(line)
    return exit_code(s, options.fail_under)
