"""`runner run --inline`: the engine end to end through the CLI, against real simulators.

For each of the three APIs: a passing job (exit 0), a failing check (exit 1), a server under RPM
pressure and one dropping/failing 20 % of requests (every conversation recorded exactly once),
and a rejected key or an exhausted quota (exit 3, one request, nothing retried).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_engine_support import RULES, TOOL_OUTPUT, write_job

from runner.cli import main
from runner.simulator import RunningSimulator
from runner.simulator import ratelimits as sim_ratelimits

APIS = ["assistants", "responses", "chat"]
REQUIRED = {
    "batch_id", "conversation_id", "job", "api", "model", "assistant", "thread_id", "vars", "status",
    "passed", "turns", "usage", "attempts", "error", "started_at", "finished_at",
}  # fmt: skip
TURN_KEYS = {
    "index",
    "user",
    "assistant",
    "run_id",
    "run_status",
    "tool_calls",
    "usage",
    "latency_ms",
    "checks",
}
SUMMARY = re.compile(
    r"^(\d+) conversations: (\d+) passed, (\d+) failed, (\d+) errors.*; (\d+) tokens; [\d.]+s$", re.M
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / ".runner"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RUNNER_ASSISTANTS_WAIT", "RUNNER_RESPONSES_WAIT"):
        monkeypatch.delenv(name, raising=False)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", *args, "--inline", "--no-progress"], catch_exceptions=False)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def point_at(sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch, key: str = "sk-test") -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", key)


@pytest.mark.parametrize("api", APIS)
def test_engine_run_inline_simulated_job_passes_and_writes_the_contract_record(
    api: str, tmp_path: Path
) -> None:
    job = write_job(tmp_path, api, conversations=3)
    result = run(str(job), "--simulate", "-o", "out.jsonl")

    assert result.exit_code == 0, result.output
    summary = SUMMARY.search(result.stdout)
    assert summary is not None and summary.groups()[:4] == ("3", "3", "0", "0")
    assert "transcripts: out.jsonl" in result.stdout
    got = records(tmp_path / "out.jsonl")
    assert [r["conversation_id"] for r in got] == [f"engine-{api}/c0{i}#r0" for i in range(3)]
    for r in got:
        assert set(r) >= REQUIRED
        assert all(set(t) >= TURN_KEYS for t in r["turns"])
        assert (r["api"], r["status"], r["passed"], r["error"], r["attempts"]) == (
            api,
            "completed",
            True,
            None,
            1,
        )
        assert re.fullmatch(rf"engine-{api}-\d{{8}}T\d{{6}}-[0-9a-f]{{4}}", r["batch_id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["started_at"])
        assert r["finished_at"] >= r["started_at"]
        assert [c["passed"] for t in r["turns"] for c in t["checks"]] == [True, True, True]
        assert r["turns"][1]["tool_calls"][0]["name"] == "lookup_order"
        assert r["assistant"]["name"] == "Support Bot"
        assert (r["assistant"]["id"] or "").startswith("asst_") == (api == "assistants")
        assert r["requests"] >= 3
    assert len({r["batch_id"] for r in got}) == 1


@pytest.mark.parametrize("api", APIS)
def test_engine_run_inline_failing_check_exits_1(api: str, tmp_path: Path) -> None:
    turns = [{"user": "I want a refund", "expect": [{"contains": "90 days"}]}, {"user": "Thanks!"}]
    job = write_job(tmp_path, api, conversation_turns=turns)
    result = run(str(job), "--simulate", "-o", "out.jsonl")

    assert result.exit_code == 1, result.output
    assert SUMMARY.search(result.stdout).groups()[:4] == ("1", "0", "1", "0")  # type: ignore[union-attr]
    (r,) = records(tmp_path / "out.jsonl")
    assert (r["status"], r["passed"]) == ("completed", False)
    assert r["turns"][0]["checks"][0]["passed"] is False
    assert len(r["turns"]) == 2  # a failed check does not stop the conversation


@pytest.mark.parametrize("api", APIS)
def test_engine_run_inline_records_every_conversation_under_rpm_pressure(
    api: str,
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The simulator's sliding window shrunk from a minute to 1.5 s, so the pressure passes quickly.
    monkeypatch.setattr(sim_ratelimits, "WINDOW_S", 1.5)
    sim = sim_factory(rules=RULES, rpm=6)
    point_at(sim, monkeypatch)
    turns = [{"user": "I want a refund", "expect": [{"contains": "30 days"}]}, {"user": "Thanks!"}]
    job = write_job(tmp_path, api, conversations=6, conversation_turns=turns, limits={"max_attempts": 8})
    result = run(str(job), "-o", "out.jsonl")

    assert result.exit_code == 0, result.output
    got = records(tmp_path / "out.jsonl")
    assert sorted(r["conversation_id"] for r in got) == [f"engine-{api}/c0{i}#r0" for i in range(6)]
    assert all(r["status"] == "completed" and r["passed"] is True for r in got)
    stats = sim.stats()
    assert stats["429_rate_limit"] > 0  # the pressure was real
    prepare = 2 if api == "assistants" else 0  # list + create
    assert sum(r["requests"] for r in got) + prepare == stats["requests_total"]  # every request counted


@pytest.mark.parametrize("api", APIS)
def test_engine_run_inline_records_every_conversation_at_fault_rate_0_2(
    api: str,
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory(rules=RULES, fault_rate=0.2, seed=7)
    point_at(sim, monkeypatch)
    turns = [{"user": "I want a refund", "expect": [{"contains": "30 days"}]}, {"user": "Where is my order?"}]
    job = write_job(tmp_path, api, conversations=8, conversation_turns=turns, limits={"max_attempts": 8})
    result = run(str(job), "-o", "out.jsonl")

    got = records(tmp_path / "out.jsonl")
    ids = [r["conversation_id"] for r in got]
    assert ids == sorted(set(ids)) == [f"engine-{api}/c0{i}#r0" for i in range(8)]  # each once, none lost
    assert all(r["status"] == "completed" for r in got), [r["error"] for r in got]
    assert result.exit_code == 0, result.output
    stats = sim.stats()
    assert stats["faults"] > 0  # 500s, 503s or dropped connections really happened, and were survived
    # Every turn answered, every tool call (a failed run asked again may call again) answered.
    assert all(len(r["turns"]) == 2 and r["turns"][1]["tool_calls"] for r in got)
    assert all(c["output"] == TOOL_OUTPUT for r in got for c in r["turns"][1]["tool_calls"])


@pytest.mark.parametrize("api", APIS)
def test_engine_run_inline_rejected_key_exits_3_after_one_request(
    api: str,
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory(rules=RULES)
    point_at(sim, monkeypatch, key="sk-invalid")  # the simulator answers this key with 401
    job = write_job(tmp_path, api, conversations=3, limits={"concurrency": 1})
    result = run(str(job), "-o", "out.jsonl")

    assert result.exit_code == 3
    not_run = "" if api == "assistants" else "; nothing recorded, 3 not run"  # assistants: at prepare
    assert result.stderr == (
        f"error: the API rejected the credentials (401 authentication error): check OPENAI_API_KEY{not_run}\n"
    )
    assert "sk-invalid" not in result.output
    assert sim.stats()["requests_total"] == 1  # nothing retried, nothing else sent
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("api", APIS)
def test_engine_run_inline_exhausted_quota_exits_3_after_one_request(
    api: str,
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory(rules=RULES, quota_exhausted=True)
    point_at(sim, monkeypatch)
    job = write_job(tmp_path, api, conversations=3, limits={"concurrency": 1})
    result = run(str(job), "-o", "out.jsonl")

    assert result.exit_code == 3
    not_run = "" if api == "assistants" else "; nothing recorded, 3 not run"  # assistants: at prepare
    assert result.stderr == (
        "error: the API reports the quota is exhausted (insufficient_quota): check the plan and billing"
        f"{not_run}\n"
    )
    stats = sim.stats()
    assert stats["requests_total"] == stats["429_quota"] == 1


def test_engine_run_inline_missing_key_is_a_usage_error(tmp_path: Path) -> None:
    result = run(str(write_job(tmp_path, "chat")), "-o", "out.jsonl")
    assert result.exit_code == 2
    assert (
        result.stderr == "error: OPENAI_API_KEY is not set (or use --simulate to run against the simulator)\n"
    )


def test_engine_run_inline_unreachable_server_exits_3_with_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-unreachable")
    job = write_job(tmp_path, "assistants", conversations=2, limits={"max_attempts": 2})
    result = run(str(job), "-o", "out.jsonl")

    assert result.exit_code == 3
    assert result.stderr == (
        f"error: could not reach the API at http://127.0.0.1:{port}/v1: "
        "connection refused (check OPENAI_BASE_URL)\n"
    )
    assert not (tmp_path / "out.jsonl").exists()
