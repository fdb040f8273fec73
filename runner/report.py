"""Summaries of transcript records: the end-of-run summary, exit codes, and `runner report`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import click

from runner.transcripts import Record


@dataclass(frozen=True)
class Summary:
    conversations: int
    passed: int
    failed: int  # completed but a check failed
    errors: int  # did not complete (error, failed, cancelled, expired, incomplete)
    no_checks: int
    tokens: int

    @property
    def pass_rate(self) -> float:
        judged = self.conversations - self.no_checks
        return 1.0 if judged == 0 else self.passed / judged


def summarize(records: Iterable[Record]) -> Summary:
    n = passed = failed = errors = no_checks = tokens = 0
    for r in records:
        n += 1
        tokens += r["usage"]["total_tokens"]
        if r["status"] != "completed":
            errors += 1
        elif r["passed"] is True:
            passed += 1
        elif r["passed"] is None:
            no_checks += 1
        else:
            failed += 1
    return Summary(n, passed, failed, errors, no_checks, tokens)


def exit_code(summary: Summary, fail_under: float | None = None) -> int:
    """0 when every check passed (or the pass rate is at least `fail_under`), 1 otherwise."""
    if fail_under is not None:
        return 0 if summary.pass_rate >= fail_under else 1
    return 0 if summary.failed == 0 and summary.errors == 0 else 1


def finish_run(outcome: object, options: object) -> int:
    """Print the summary of a finished `runner run`, write the optional reports, return the exit code."""
    records: list[Record] = getattr(outcome, "records", [])
    s = summarize(records)
    wall = getattr(outcome, "wall_s", 0.0)
    click.echo(
        f"{s.conversations} conversations: {s.passed} passed, {s.failed} failed, {s.errors} errors"
        f"{f', {s.no_checks} without checks' if s.no_checks else ''}; {s.tokens} tokens; {wall:.1f}s"
    )
    click.echo(f"transcripts: {getattr(outcome, 'output', '?')}")
    return exit_code(s, getattr(options, "fail_under", None))
