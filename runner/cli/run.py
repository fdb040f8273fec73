"""Command: `runner run FILE`, the main job."""

from __future__ import annotations

import click

from runner.cli import main, redis_option
from runner.pipeline import RunOptions, run_job


@main.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="JSONL to write (default: the job's `output`)."
)
@click.option(
    "--workers",
    type=click.IntRange(0, 256),
    default=4,
    show_default=True,
    help="Local worker processes (0: only workers already serving --redis-url).",
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
@click.option("--no-progress", is_flag=True, help="No live progress line.")
def run(
    job_file: str,
    output: str | None,
    workers: int,
    simulate: bool,
    redis_url: str | None,
    junit: str | None,
    html_path: str | None,
    fail_under: float | None,
    inline: bool,
    no_progress: bool,
) -> None:
    """Run every conversation of JOB_FILE and write one transcript line per conversation.

    \b
    Examples:
      runner run jobs/quickstart.yaml --simulate
      runner run suite.yaml -o out.jsonl --junit junit.xml --workers 8
    """
    from runner.report import finish_run

    options = RunOptions(
        output=output,
        workers=workers,
        simulate=simulate,
        redis_url=redis_url,
        inline=inline,
        junit=junit,
        html=html_path,
        fail_under=fail_under,
        progress=not no_progress,
    )
    outcome = run_job(job_file, options)
    raise SystemExit(finish_run(outcome, options))
