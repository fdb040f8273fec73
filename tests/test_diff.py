"""`runner diff OLD NEW`: regressions, improvements, changed replies, added/removed, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.reports.diff import diff_records, render_diff

try:
    from test_report_runs import JOB, Runs, make_check, make_record, make_turn, read, runs, write_jsonl
except ImportError:  # collected as a package (tests/__init__.py)
    from tests.test_report_runs import JOB, Runs, make_check, make_record, make_turn, read, runs, write_jsonl

__all__ = ["runs"]  # the shared session fixture


def diff(old: Path, new: Path, *extra: str) -> Any:
    return CliRunner().invoke(main, ["diff", str(old), str(new), *extra])


def test_diff_no_change_between_two_runs_of_the_same_job_exits_0(runs: Runs) -> None:
    result = diff(runs.main, runs.rerun)
    assert result.exit_code == 0, result.output
    assert (
        result.output
        == "0 regressions, 0 improvements, 0 changed replies, 0 added, 0 removed (7 conversations compared)\n"
    )


def test_diff_regression_exits_1_and_says_why(runs: Runs) -> None:
    result = diff(runs.main, runs.changed)
    assert result.exit_code == 1
    out = result.output
    assert out.startswith(
        f"regressions (1):\n  {JOB}/refund-ok  2/2 runs passed → 0/2 runs passed\n"
        f'    {JOB}/refund-ok#r0: turn 1: contains "refund" failed'
    )
    assert f"improvements (1):\n  {JOB}/refund-wrong  0/2 runs passed → 2/2 runs passed\n" in out
    assert (
        f"  {JOB}/refund-ok#r0 turn 1:\n    @@ -1 +1 @@\n    -A refund is possible within 30 days.\n"
        "    +Returns within 60 days.\n"
    ) in out
    assert f"added (1):\n  {JOB}/brand-new\nremoved (1):\n  {JOB}/html-reply\n" in out
    assert out.endswith(
        "1 regression, 1 improvement, 4 changed replies, 1 added, 1 removed (6 conversations compared)\n"
    )


def test_diff_improvement_alone_exits_0(runs: Runs, tmp_path: Path) -> None:
    fixed = {r["conversation_id"]: r for r in read(runs.changed) if "/refund-wrong#" in r["conversation_id"]}
    new = write_jsonl(tmp_path / "new.jsonl", [fixed.get(r["conversation_id"], r) for r in read(runs.main)])
    result = diff(runs.main, new, "--no-replies")
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"improvements (1):\n  {JOB}/refund-wrong  0/2 runs passed → 2/2 runs passed\n"
        "0 regressions, 1 improvement, 2 changed replies, 0 added, 0 removed (7 conversations compared)\n"
    )


def test_diff_repeats_are_judged_together(runs: Runs, tmp_path: Path) -> None:
    # One of two runs now fails: a regression of the conversation, named with the failing run.
    result = diff(runs.main, runs.flaky, "--no-replies")
    assert result.exit_code == 1
    assert result.output.startswith(
        f"regressions (1):\n  {JOB}/refund-ok  2/2 runs passed → 1/2 runs passed\n"
        f'    {JOB}/refund-ok#r1: turn 1: contains "refund" failed'
    )
    # More repeats on one side is not a change when every run still passes.
    first_only = write_jsonl(
        tmp_path / "r0.jsonl", [r for r in read(runs.main) if r["conversation_id"].endswith("#r0")]
    )
    assert diff(first_only, runs.main).exit_code == 0
    assert diff(runs.main, first_only).exit_code == 0


def _one(
    cid: str, status: str = "completed", passed: bool = True, reply: str | None = "hi"
) -> dict[str, Any]:
    checks = [make_check("contains", "hi", passed)] if status == "completed" else []
    return make_record(
        cid,
        [make_turn(0, "hello", reply, checks)],
        status=status,
        error=None if status == "completed" else "boom",
    )


@pytest.mark.parametrize(
    ("old", "new", "regressed", "improved"),
    [
        (_one("d/a#r0"), _one("d/a#r0", passed=False), True, False),
        (_one("d/a#r0", passed=False), _one("d/a#r0", "error", reply=None), True, False),  # completed -> not
        (_one("d/a#r0", "error", reply=None), _one("d/a#r0", passed=False), False, True),
        (_one("d/a#r0", "error", reply=None), _one("d/a#r0", "expired", reply=None), False, False),
        (_one("d/a#r0", passed=False), _one("d/a#r0"), False, True),
    ],
)
def test_diff_outcome_transitions(old: Any, new: Any, regressed: bool, improved: bool) -> None:
    result = diff_records([old], [new])
    assert (bool(result.regressions), bool(result.improvements)) == (regressed, improved)


def test_diff_long_reply_diff_is_cut_and_missing_turns_shown() -> None:
    old = make_record("d/a#r0", [make_turn(0, "u", "\n".join(f"line {i}" for i in range(30)))])
    new = make_record(
        "d/a#r0",
        [make_turn(0, "u", "\n".join(f"LINE {i}" for i in range(30))), make_turn(1, "more", "extra")],
    )
    text = render_diff(diff_records([old], [new]))  # type: ignore[list-item]
    assert "    … 49 more lines\n" in text
    assert "  d/a#r0 turn 2:\n    -(no reply)\n    +extra\n" in text


def test_diff_removed_conversation_is_a_regression_unless_allowed(tmp_path: Path) -> None:
    old = write_jsonl(tmp_path / "old.jsonl", [_one("d/a#r0"), _one("d/b#r0")])
    new = write_jsonl(tmp_path / "new.jsonl", [_one("d/a#r0")])
    result = diff(old, new)
    assert result.exit_code == 1, result.output
    assert (
        "removed (1):\n  d/b\nremoved conversations count as a regression (--allow-removed if intended)\n"
        in (result.output)
    )
    allowed = diff(old, new, "--allow-removed")
    assert allowed.exit_code == 0, allowed.output
    assert "count as a regression" not in allowed.output


def test_diff_of_two_different_jobs_is_refused_with_exit_2(tmp_path: Path) -> None:
    old = write_jsonl(tmp_path / "old.jsonl", [make_record("a/x#r0", [make_turn(0, "hi", "yo")], job="a")])
    new = write_jsonl(tmp_path / "new.jsonl", [make_record("b/x#r0", [make_turn(0, "hi", "yo")], job="b")])
    result = diff(old, new)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: the transcripts are runs of different jobs (a vs b):"
        " runner diff compares two runs of the same job\n"
    )
    assert result.stdout == ""
