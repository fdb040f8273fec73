"""JUnit XML: read back with junitparser (a real consumer), counts, messages, errors vs failures."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from junitparser import Error, Failure, JUnitXml, TestCase, TestSuite

from runner.cli import main
from runner.reports.junit import write_junit

try:
    from test_report_runs import JOB, Runs, make_check, make_record, make_turn, read, runs
except ImportError:  # collected as a package (tests/__init__.py)
    from tests.test_report_runs import JOB, Runs, make_check, make_record, make_turn, read, runs

__all__ = ["runs"]  # the shared session fixture


@pytest.fixture(scope="module")
def suite(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> TestSuite:
    path = tmp_path_factory.mktemp("junit") / "junit.xml"
    result = CliRunner().invoke(main, ["report", str(runs.main), "--junit", str(path)])
    assert result.exit_code == 1, result.output
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    return suites[0]


def _case(suite: TestSuite, name: str) -> TestCase:
    (case,) = [c for c in suite if c.name == name]
    return case


def test_junit_counts_match_the_run(suite: TestSuite) -> None:
    assert (suite.name, suite.tests, suite.failures, suite.errors, suite.skipped) == (JOB, 14, 4, 4, 0)
    assert sum(1 for _ in suite) == 14
    assert all(c.classname == JOB for c in suite)


def test_junit_failure_names_turn_check_expected_and_reply(suite: TestSuite) -> None:
    case = _case(suite, "refund-wrong#r0")
    assert case.is_failure and not case.is_error
    (failure,) = case.result
    assert isinstance(failure, Failure)
    assert failure.type == "contains"
    # turn, check, expected value, what the assistant said (the middle is the check's own detail)
    assert failure.message.startswith('turn 1: contains "60 days" failed (')
    assert failure.message.endswith('); assistant said: "A refund is possible within 30 days."')
    assert failure.text == failure.message  # the body lists every failed check: here, just this one
    assert "Can I get a refund after 45 days?" in (case.system_out or "")


def test_junit_errors_are_distinct_from_failures(suite: TestSuite) -> None:
    for name in ("order-no-output#r0", "crash#r1"):
        case = _case(suite, name)
        assert case.is_error and not case.is_failure
        (error,) = case.result
        assert isinstance(error, Error)
        assert error.type in {"error", "failed", "cancelled", "expired", "incomplete"}
        assert error.message.startswith("turn 1: ")
    (no_output,) = _case(suite, "order-no-output#r0").result
    assert "lookup_order" in no_output.message


def test_junit_passing_and_unchecked_conversations_pass(suite: TestSuite, runs: Runs) -> None:
    ok = _case(suite, "refund-ok#r1")
    assert ok.is_passed and ok.result == []
    record = next(r for r in read(runs.main) if r["conversation_id"] == f"{JOB}/refund-ok#r1")
    assert ok.time == pytest.approx(sum(t["latency_ms"] for t in record["turns"]) / 1000, abs=0.001)
    assert ok.time > 0
    smalltalk = _case(suite, "smalltalk#r0")
    assert smalltalk.is_passed and (smalltalk.system_out or "").endswith("(no checks)")


def test_junit_untrusted_reply_round_trips(suite: TestSuite) -> None:
    (failure,) = _case(suite, "html-reply#r0").result
    assert 'Here is <b>bold</b> & <script>alert(\\"x\\")</script>' in failure.message


def test_junit_groups_jobs_counts_many_failures_and_strips_invalid_xml(tmp_path: Path) -> None:
    bad = make_record(
        "a/x#r0",
        [
            make_turn(0, "one", "nul\x00 and \x1b[31mred", [make_check("contains", "y", False, "no y")]),
            make_turn(1, "two", "z", [make_check("equals", "w", False), make_check("contains", "z")]),
        ],
        job="a",
    )
    other = make_record("b/y#r0", [make_turn(0, "hi", None)], status="expired", error="run expired", job="b")
    path = write_junit([bad, other], tmp_path / "sub" / "j.xml")  # type: ignore[list-item]
    ET.parse(path)  # well-formed, despite the NUL and ESC in the reply
    xml = JUnitXml.fromfile(str(path))
    suites = {s.name: s for s in xml}
    assert (xml.tests, xml.failures, xml.errors) == (2, 1, 1)
    (failure,) = next(iter(suites["a"])).result
    assert failure.message.startswith(
        'turn 1: contains "y" failed (no y); assistant said: "nul\\u0000 and \\u001b[31mred"'
    )
    assert "assistant: nul\\x00 and \\x1b[31mred" in (next(iter(suites["a"])).system_out or "")
    assert failure.message.endswith("(+1 more)")
    assert 'turn 2: equals "w" failed; assistant said: "z"' in failure.text
    (error,) = next(iter(suites["b"])).result
    assert (error.type, error.message) == ("expired", "turn 1: expired: run expired")
    assert suites["a"].timestamp == "2026-11-26T21:00:00"
