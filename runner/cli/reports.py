"""Commands: `runner report FILE.jsonl` and `runner diff OLD.jsonl NEW.jsonl`."""

from __future__ import annotations

import click

from runner.cli import main
from runner.settings import Settings


@main.command()
@click.argument("transcript", type=click.Path(exists=True, dir_okay=False))
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write a JUnit XML report.")
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False), help="Also write a self-contained HTML report."
)
@click.option(
    "--fail-under",
    type=click.FloatRange(0, 1),
    metavar="RATE",
    help="Exit 1 only when the pass rate (0-1, of conversations with checks) is below RATE.",
)
@click.option(
    "--prices",
    type=click.Path(dir_okay=False),
    help="YAML/JSON price table (USD per 1M tokens: `model: {input: X, output: Y}`); default $RUNNER_PRICES.",
)
@click.option("--failed-only", is_flag=True, help="List only the conversations that failed or errored.")
def report(
    transcript: str,
    junit: str | None,
    html_path: str | None,
    fail_under: float | None,
    prices: str | None,
    failed_only: bool,
) -> None:
    """Summarise a transcript file: per conversation, totals, latency, tokens, cost, flakiness.

    Exits 0 when every conversation passed, 1 when one failed or did not complete (with
    --fail-under: when the pass rate is below RATE), 2 when the file is not a transcript.

    \b
    Examples:
      runner report runs/refund-bot/20260101.jsonl
      runner report out.jsonl --junit junit.xml --html report.html --fail-under 0.95
    """
    from runner.reports.files import write_reports
    from runner.reports.pricing import load_prices
    from runner.reports.summary import exit_code, load_transcripts, render_report, summarize

    records = load_transcripts(transcript)
    table = load_prices(prices or Settings.from_env().prices)
    click.echo(render_report(records, table, failed_only=failed_only))
    for line in write_reports(records, junit=junit, html=html_path, prices=table, source=transcript):
        click.echo(line)
    summary = summarize(records)
    if fail_under is not None:
        verdict = "below" if summary.pass_rate < fail_under else "at or above"
        click.echo(f"pass rate {summary.pass_rate:.1%} is {verdict} --fail-under {fail_under:.1%}")
    raise SystemExit(exit_code(summary, fail_under))


@main.command()
@click.argument("old", type=click.Path(exists=True, dir_okay=False))
@click.argument("new", type=click.Path(exists=True, dir_okay=False))
@click.option("--no-replies", is_flag=True, help="Show outcome changes only, not the replies that changed.")
@click.option(
    "--score-drop",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="A judge score falling by more than this share of its scale is a regression.",
)
@click.option(
    "--allow-removed", is_flag=True, help="Conversations missing from NEW are not a regression."
)
def diff(old: str, new: str, no_replies: bool, score_drop: float, allow_removed: bool) -> None:
    """Compare two runs of the same job, conversation by conversation.

    Lists regressions (pass -> fail, completed -> not completed, a judge score that dropped),
    improvements, replies that changed, and conversations added or removed. Exits 1 when anything
    regressed (a conversation of OLD missing from NEW counts, unless --allow-removed), so CI can
    gate on a baseline; improvements and changed replies alone exit 0. Transcripts of different
    jobs: exit 2.

    \b
    Examples:
      runner diff baseline.jsonl out.jsonl
      runner diff baseline.jsonl out.jsonl --no-replies
    """
    from runner.reports.diff import diff_records, render_diff
    from runner.reports.summary import load_transcripts

    result = diff_records(
        load_transcripts(old), load_transcripts(new), score_drop, allow_removed=allow_removed
    )
    click.echo(render_diff(result, replies=not no_replies))
    raise SystemExit(1 if result.regressed else 0)
