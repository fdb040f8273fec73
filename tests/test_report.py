"""`runner report`: the terminal summary, exit codes, --fail-under, transcript validation, prices."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.cli.run import finish_run
from runner.reports.pricing import DEFAULT_PRICES, Price, PriceTable, estimate, load_prices
from runner.reports.summary import exit_code, percentile, render_report, summarize
from runner.run.job import RunOptions, RunOutcome
from runner.settings import Settings

try:
    from test_report_runs import JOB, Runs, make_check, make_record, make_turn, read, runs, write_jsonl
except ImportError:  # collected as a package (tests/__init__.py)
    from tests.test_report_runs import JOB, Runs, make_check, make_record, make_turn, read, runs, write_jsonl

__all__ = ["runs"]  # the shared session fixture


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


# --- on real runs -------------------------------------------------------------------------------


def test_report_real_run_lists_each_conversation_and_exits_1(runs: Runs) -> None:
    result = invoke("report", str(runs.main))
    assert result.exit_code == 1, result.output
    out = result.output
    assert out.startswith(f"{JOB} · batch ")
    rows = {cid: mark for mark, cid in re.findall(r"^  (PASS|FAIL|ERROR|-) +(\S+) ", out, re.MULTILINE)}
    assert rows[f"{JOB}/refund-ok#r0"] == "PASS"
    assert rows[f"{JOB}/refund-wrong#r1"] == "FAIL"
    assert rows[f"{JOB}/order-no-output#r0"] == "ERROR"
    assert rows[f"{JOB}/crash#r1"] == "ERROR"
    assert rows[f"{JOB}/smalltalk#r0"] == "-"
    assert "14 conversations: 4 passed, 4 failed, 4 errors, 2 without checks; pass rate 33.3% (4/12)" in out
    assert 'turn 1: contains "60 days" failed' in out
    assert 'assistant said: "A refund is possible within 30 days."' in out
    assert "latency per turn: p50 " in out and "(16 turns)" in out
    assert "estimated cost: $" in out
    assert "repeats: 2 runs per conversation; 3/7 conversations passed every run" in out
    assert "flaky: none" in out


def test_report_real_run_flaky_conversation_is_named(runs: Runs) -> None:
    result = invoke("report", str(runs.flaky))
    assert result.exit_code == 1
    assert f"flaky (1):\n  {JOB}/refund-ok  1/2 runs passed" in result.output


def test_report_all_passed_exits_0(runs: Runs, tmp_path: Path) -> None:
    passed = [r for r in read(runs.main) if r["passed"] is True]
    result = invoke("report", str(write_jsonl(tmp_path / "ok.jsonl", passed)))
    assert result.exit_code == 0, result.output
    assert "4 conversations: 4 passed, 0 failed, 0 errors; pass rate 100.0% (4/4)" in result.output


@pytest.mark.parametrize(("rate", "code", "verdict"), [("0.3", 0, "at or above"), ("0.34", 1, "below")])
def test_report_fail_under_gates_on_pass_rate(runs: Runs, rate: str, code: int, verdict: str) -> None:
    result = invoke("report", str(runs.main), "--fail-under", rate)
    assert result.exit_code == code
    assert f"pass rate 33.3% is {verdict} --fail-under {float(rate):.1%}" in result.output


def test_report_failed_only_hides_passing_rows(runs: Runs) -> None:
    out = invoke("report", str(runs.main), "--failed-only").output
    assert f"{JOB}/refund-ok#r0" not in out
    assert f"  FAIL    {JOB}/refund-wrong#r0" in out


def test_report_writes_junit_and_html_and_says_so(runs: Runs, tmp_path: Path) -> None:
    junit, html = tmp_path / "j" / "junit.xml", tmp_path / "report.html"
    result = invoke("report", str(runs.main), "--junit", str(junit), "--html", str(html))
    assert result.exit_code == 1
    assert f"junit: {junit}\nhtml: {html}\n" in result.output
    assert junit.read_text().startswith("<?xml") and "<!DOCTYPE html>" in html.read_text()


def test_report_finish_run_prints_summary_writes_reports_and_honours_fail_under(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = read(runs.main)
    outcome = RunOutcome(batch_id="b", output=runs.main, records=records, wall_s=1.25)  # type: ignore[arg-type]
    options = RunOptions(junit=str(tmp_path / "j.xml"), html=str(tmp_path / "r.html"))
    assert finish_run(outcome, options) == 1
    out = capsys.readouterr().out
    assert out.startswith("14 conversations: 4 passed, 4 failed, 4 errors, 2 without checks; ")
    assert f"transcripts: {runs.main}\n" in out
    assert f'  FAIL {JOB}/refund-wrong#r0: turn 1: contains "60 days" failed' in out
    assert f"junit: {tmp_path / 'j.xml'}" in out and (tmp_path / "r.html").exists()
    assert finish_run(outcome, RunOptions(fail_under=0.3)) == 0
    assert finish_run(outcome, RunOptions(fail_under=0.5)) == 1


def test_report_finish_run_with_no_conversations_still_writes_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit, html = tmp_path / "j.xml", tmp_path / "r.html"
    outcome = RunOutcome(batch_id="b", output=tmp_path / "o.jsonl", records=[], wall_s=0.0)
    assert finish_run(outcome, RunOptions(junit=str(junit), html=str(html))) == 0
    assert capsys.readouterr().out.startswith(
        "0 conversations: 0 passed, 0 failed, 0 errors; 0 tokens; 0.0s\n"
    )
    assert 'tests="0"' in junit.read_text() and "No turn latencies recorded." in html.read_text()


def test_report_run_command_writes_reports(runs: Runs, tmp_path: Path) -> None:
    out, junit, html = tmp_path / "o.jsonl", tmp_path / "j.xml", tmp_path / "r.html"
    args = ["run", str(runs.job_file), "--inline", "--simulate", "--no-progress", "-o", str(out)]
    result = invoke(*args, "--junit", str(junit), "--html", str(html), "--fail-under", "0.3")
    assert result.exit_code == 0, result.output
    assert junit.exists() and html.exists() and len(read(out)) == 14


# --- exit codes and figures on hand-made records -----------------------------------------------


def test_report_exit_code_rules() -> None:
    ok = make_record("demo/a#r0", [make_turn(0, "hi", "hello", [make_check("contains", "hello")])])
    bad = make_record("demo/b#r0", [make_turn(0, "hi", "nope", [make_check("contains", "x", False)])])
    none = make_record("demo/c#r0", [make_turn(0, "hi", "hello")])
    err = make_record("demo/d#r0", [make_turn(0, "hi", None)], status="error", error="boom")
    assert exit_code(summarize([ok, none])) == 0  # type: ignore[list-item]
    assert exit_code(summarize([ok, bad])) == 1  # type: ignore[list-item]
    assert exit_code(summarize([ok, err])) == 1  # type: ignore[list-item]
    assert exit_code(summarize([ok, bad]), fail_under=0.5) == 0  # type: ignore[list-item]
    assert exit_code(summarize([ok, bad, err]), fail_under=0.5) == 1  # type: ignore[list-item]


def test_report_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (50, 95, 100)
    assert percentile([7.0], 95) == 7 and percentile([], 50) is None


def test_report_table_shows_no_reply_error_turn_and_unknown_price(tmp_path: Path) -> None:
    records = [
        make_record(
            "demo/a#r0", [make_turn(0, "hi", "hello", [make_check("contains", "hello")], latency_ms=1500)]
        ),
        make_record(
            "demo/b#r0",
            [
                make_turn(0, "hi", "ok", latency_ms=100),
                make_turn(1, "and?", None, latency_ms=None, error="x"),
            ],
            status="failed",
            error="server_error: The server had an error",
            model="house-model",
        ),
    ]
    text = render_report(records, load_prices(None))  # type: ignore[arg-type]
    assert "  ERROR   demo/b#r0     failed         2       -  100 ms      30\n" in text
    assert "    turn 2: failed: server_error: The server had an error" in text
    assert "latency per turn: p50 100 ms, p95 1.50 s, max 1.50 s (2 turns)" in text
    # gpt-4o-mini: 10 prompt tokens x $0.15/1M + 5 completion x $0.60/1M = $0.0000045
    assert text.endswith("estimated cost: $0.000005 + unknown (no price for: house-model)")


# --- invalid transcripts: exit 2 with PATH:LINE -------------------------------------------------

GOOD = make_record("demo/a#r0", [make_turn(0, "hi", "hello", [make_check("contains", "hello")])])


def _mutated(**changes: Any) -> str:
    rec = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        target = rec
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target[k]
        if value is KeyError:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return json.dumps(rec)


BAD_LINES = [
    ("{not json", "not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
    ("[1, 2]", "expected a JSON object (one transcript record per line)"),
    (_mutated(conversation_id=KeyError), "conversation_id: missing"),
    (
        _mutated(status="done"),
        "status: 'done' is not one of cancelled, completed, error, expired, failed, incomplete",
    ),
    (_mutated(passed="yes"), 'passed: expected true/false or null, got "yes"'),
    (_mutated(turns={}), "turns: expected a list, got {}"),
    (_mutated(usage__total_tokens=-1), "usage.total_tokens: expected a count or null, got -1"),
    (_mutated(usage__prompt_tokens=True), "usage.prompt_tokens: expected a count or null, got true"),
    (
        _mutated(turns__0__latency_ms="fast"),
        'turns[0].latency_ms: expected an integer or a number or null, got "fast"',
    ),
    (_mutated(turns__0__checks=[1]), "turns[0].checks[0]: expected an object"),
    (_mutated(turns__0__checks__0__passed=None), "turns[0].checks[0].passed: expected true/false, got null"),
    (_mutated(turns__0__index=KeyError), "turns[0].index: missing"),
    (json.dumps(GOOD), "conversation_id 'demo/a#r0' appears twice (first on line 1)"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_report_invalid_transcript_line_exits_2(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n", encoding="utf-8")
    result = invoke("report", str(path))
    assert result.exit_code == 2
    assert result.output == f"error: {path}:3: {message}\n"


def test_report_empty_or_binary_or_missing_file_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    assert invoke("report", str(empty)).output == f"error: {empty}: no transcript records (empty file)\n"
    result = invoke("report", str(binary))
    assert result.exit_code == 2 and result.output.startswith(f"error: {binary}: not UTF-8 text")
    missing = invoke("report", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and "does not exist" in missing.output


# --- prices -------------------------------------------------------------------------------------


def test_report_price_lookup_uses_longest_prefix_and_unknown_is_not_zero() -> None:
    table = PriceTable(DEFAULT_PRICES)
    assert table.lookup("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert table.lookup("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert table.lookup("gpt-4omni") is None
    rec = make_record("demo/a#r0", [make_turn(0, "hi", "ok")], model="mystery")
    cost = estimate([rec], table)  # type: ignore[list-item]
    assert cost.describe() == "unknown (no price for: mystery)" and not cost.complete


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_report_prices_file_overrides_and_env(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / f"prices{suffix}"
    prices.write_text(json.dumps({"mystery": {"input": 1000, "output": 2000}}))
    transcript = write_jsonl(
        tmp_path / "t.jsonl", [make_record("demo/a#r0", [make_turn(0, "hi", "ok")], model="mystery")]
    )
    # 10 prompt tokens at $1000/1M + 5 completion tokens at $2000/1M = $0.02
    assert "estimated cost: $0.0200\n" in invoke("report", str(transcript), "--prices", str(prices)).output
    monkeypatch.setenv("RUNNER_PRICES", str(prices))
    assert "estimated cost: $0.0200\n" in invoke("report", str(transcript)).output
    assert load_prices(Settings.from_env().prices).lookup("mystery") == Price(1000, 2000)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- a\n- b\n", "expected a mapping of model -> {input: USD, output: USD} per 1M tokens"),
        ("m: {input: 1}\n", "m: expected {input: USD, output: USD} per 1M tokens"),
        ("m: {input: -1, output: 2}\n", "m: prices must be numbers >= 0 (USD per 1M tokens)"),
        ("m: [\n", "not valid YAML: expected the node content, but found '<stream end>'"),
    ],
)
def test_report_bad_prices_file_exits_2(tmp_path: Path, content: str, message: str) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(content)
    transcript = write_jsonl(tmp_path / "t.jsonl", [GOOD])
    result = invoke("report", str(transcript), "--prices", str(prices))
    assert result.exit_code == 2
    where = ":2" if "YAML:" in message else ""
    assert result.output == f"error: {prices}{where}: {message}\n"
