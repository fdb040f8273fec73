"""Transcripts for the report tests: real runs against the simulator, and hand-made records.

`real_runs()` runs small job files (written here) through `runner.run.job.run_job` with
`inline=True, simulate=True`, once per test session, and keeps the JSONL files:

- `main`: repeat 2 of six conversations: one passing (with a tool call), one failing a check, one
  whose tool call has no canned output (status error), one the simulator fails (`fail: true`),
  one without checks, and one whose reply holds HTML (escaping).
- `rerun`: the same job file run again (nothing changed but ids of threads, runs, latencies).
- `changed`: the job file edited: a reply changed so a passing conversation fails (regression),
  the failing one now passes (improvement), one conversation removed and one added.
- `flaky`: `main` with the second run of the passing conversation taken from `changed`, where it
  failed: the same conversation passed once and failed once (the simulator is deterministic, so
  flakiness is assembled from two real runs, as `runner retry` would).

The other report test modules import from here; the tests below check the runs are what they
claim to be, so a change in the engine or the simulator shows up here first.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

JOB = "report-demo"

MAIN_JOB = """\
name: report-demo
api: {api}
model: gpt-4o-mini
assistants:
  support:
    name: Report Demo Bot
    instructions: You help customers with refunds and orders.
    tools:
      - type: function
        function:
          name: lookup_order
          description: Look an order up
          parameters: {{type: object, properties: {{order_id: {{type: string}}}}, required: [order_id]}}
conversations:
  - id: refund-ok
    turns:
      - user: I want a refund for my laptop
        expect:
          - contains: refund
          - max_latency_ms: 60000
      - user: Thanks!
        expect:
          - starts_with: You said
  - id: refund-wrong
    turns:
      - user: Can I get a refund after 45 days?
        expect:
          - contains: 60 days
  - id: order-ok
    tool_outputs:
      lookup_order: '{{"status": "shipped"}}'
    turns:
      - user: Where is my order?
        expect:
          - tool_called: lookup_order
          - contains: shipped
  - id: order-no-output
    turns:
      - user: Where is my order A2?
        expect:
          - contains: shipped
  - id: crash
    turns:
      - user: please crash now
        expect:
          - contains: anything
{extra}repeat: 2
limits:
  max_attempts: 1
simulator:
  latency_s: 0.05
  rules:
    - when: '(?i)crash'
      fail: true
    - when: '(?i)html'
      reply: 'Here is <b>bold</b> & <script>alert("x")</script> for you'
    - when: '(?i)refund'
      reply: {refund_reply}
    - when: '(?i)order'
      call: lookup_order
      arguments: {{order_id: A1}}
      then: 'Your order is {{{{tool_output}}}}.'
  default: 'You said: {{{{message}}}}'
"""

MAIN_EXTRA = """\
  - id: smalltalk
    turns:
      - user: Hello there
  - id: html-reply
    turns:
      - user: Show me some html please
        expect:
          - not_contains: script
"""

CHANGED_EXTRA = """\
  - id: smalltalk
    turns:
      - user: Hello there
  - id: brand-new
    turns:
      - user: Hi, new conversation
        expect:
          - contains: new conversation
"""

# Per conversation (without the repeat suffix): the outcome both runs of `main` must have.
MAIN_OUTCOMES = {
    "refund-ok": "passed",
    "refund-wrong": "failed",
    "order-ok": "passed",
    "order-no-output": "error",
    "crash": "error",
    "smalltalk": "no checks",
    "html-reply": "failed",
}


@dataclass(frozen=True)
class Runs:
    main: Path
    rerun: Path
    changed: Path
    flaky: Path
    job_file: Path


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _run(job_text: str, job_path: Path, out: Path) -> Path:
    from runner.run.job import RunOptions, run_job

    job_path.write_text(job_text, encoding="utf-8")
    with mock.patch.dict(os.environ):  # restored afterwards, whatever the run set
        os.environ.pop("OPENAI_BASE_URL", None)
        run_job(str(job_path), RunOptions(output=str(out), inline=True, simulate=True, progress=False))
    return out


@functools.cache
def _build(root: Path) -> Runs:
    main_text = MAIN_JOB.format(
        api="chat", extra=MAIN_EXTRA, refund_reply="A refund is possible within 30 days."
    )
    # The edit: refunds now answered with "60 days" and no word "refund": refund-ok regresses
    # (contains: refund), refund-wrong improves (contains: 60 days); html-reply removed, brand-new added.
    changed_text = MAIN_JOB.format(
        api="assistants", extra=CHANGED_EXTRA, refund_reply="Returns within 60 days."
    )
    root.mkdir(parents=True, exist_ok=True)
    job_file = root / "report-demo.yaml"
    main = _run(main_text, job_file, root / "main.jsonl")
    rerun = _run(main_text, root / "report-demo-again.yaml", root / "rerun.jsonl")
    changed = _run(changed_text, root / "report-demo-changed.yaml", root / "changed.jsonl")
    job_file.write_text(main_text, encoding="utf-8")
    swapped = {
        r["conversation_id"]: r for r in read(changed) if r["conversation_id"] == f"{JOB}/refund-ok#r1"
    }
    flaky = write_jsonl(root / "flaky.jsonl", [swapped.get(r["conversation_id"], r) for r in read(main)])
    return Runs(main, rerun, changed, flaky, job_file)


def real_runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The runs above, made once per session (every module that asks shares them)."""
    return _build(tmp_path_factory.getbasetemp() / "report-runs")


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return real_runs(tmp_path_factory)


def outcome_of(record: dict[str, Any]) -> str:
    from runner.reports.summary import outcome

    return outcome(record)  # type: ignore[arg-type]


def short(record: dict[str, Any]) -> str:
    """`refund-ok` from `report-demo/refund-ok#r1`."""
    return record["conversation_id"].split("/", 1)[1].split("#", 1)[0]


# --- the runs are what the other modules rely on ------------------------------------------------


def test_report_runs_main_has_every_outcome_twice(runs: Runs) -> None:
    records = read(runs.main)
    assert len(records) == 2 * len(MAIN_OUTCOMES)
    for r in records:
        assert outcome_of(r) == MAIN_OUTCOMES[short(r)], r["conversation_id"]
    assert {r["conversation_id"].rsplit("#", 1)[1] for r in records} == {"r0", "r1"}


def test_report_runs_errors_are_recorded_with_a_reason(runs: Runs) -> None:
    by_id = {r["conversation_id"]: r for r in read(runs.main)}
    no_output = by_id[f"{JOB}/order-no-output#r0"]
    crash = by_id[f"{JOB}/crash#r0"]
    assert no_output["status"] != "completed" and "lookup_order" in (no_output["error"] or "")
    assert crash["status"] != "completed" and crash["error"]


def test_report_runs_changed_differs_as_described(runs: Runs) -> None:
    old = {short(r): outcome_of(r) for r in read(runs.main)}
    new = {short(r): outcome_of(r) for r in read(runs.changed)}
    assert (old["refund-ok"], new["refund-ok"]) == ("passed", "failed")
    assert (old["refund-wrong"], new["refund-wrong"]) == ("failed", "passed")
    assert "html-reply" not in new and "brand-new" not in old


# --- hand-made records, for unit tests of edge cases --------------------------------------------


def make_check(type_: str, value: Any, passed: bool = True, detail: str | None = None) -> dict[str, Any]:
    return {"type": type_, "value": value, "passed": passed, "detail": detail}


def make_turn(
    index: int,
    user: str,
    assistant: str | None,
    checks: list[dict[str, Any]] | None = None,
    latency_ms: int | None = 200,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "index": index,
        "user": user,
        "assistant": assistant,
        "run_id": f"run_{index}",
        "run_status": "completed" if assistant is not None else "failed",
        "tool_calls": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "latency_ms": latency_ms,
        "checks": checks or [],
        **extra,
    }


def make_record(
    conversation_id: str,
    turns: list[dict[str, Any]],
    *,
    status: str = "completed",
    error: str | None = None,
    model: str = "gpt-4o-mini",
    job: str = "demo",
) -> dict[str, Any]:
    checks = [c for t in turns for c in t["checks"]]
    passed = False if status != "completed" else (all(c["passed"] for c in checks) if checks else None)
    n = len(turns)
    return {
        "batch_id": "b1",
        "conversation_id": conversation_id,
        "job": job,
        "api": "assistants",
        "model": model,
        "assistant": {"key": "bot", "name": "Bot", "id": "asst_1"},
        "thread_id": "thread_1",
        "vars": {},
        "status": status,
        "passed": passed,
        "turns": turns,
        "usage": {"prompt_tokens": 10 * n, "completion_tokens": 5 * n, "total_tokens": 15 * n},
        "attempts": 1,
        "error": error,
        "started_at": "2026-11-26T21:00:00Z",
        "finished_at": "2026-11-26T21:00:01Z",
    }
