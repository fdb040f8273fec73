"""`runner run` says what happened, once, with the right exit code (issue 17, item 6)."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from test_engine_support import RULES, write_job

from runner.cli import main
from runner.errors import Interrupted
from runner.queue.redis_server import RedisServer
from runner.simulator import RunningSimulator


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / ".runner"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def free_port() -> int:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("api", ["chat", "responses", "assistants"])
def test_run_messages_unreachable_server_exits_3_at_once_naming_the_url(
    api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-unreachable")
    job = write_job(tmp_path, api, conversations=2)
    began = time.monotonic()
    result = invoke("run", str(job), "--inline", "--no-progress", "-o", "out.jsonl")

    assert result.exit_code == 3, result.output
    assert time.monotonic() - began < 5
    assert result.stderr == (
        f"error: could not reach the API at http://127.0.0.1:{port}/v1: connection refused"
        " (check OPENAI_BASE_URL)\n"
    )
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("how", ["--inline", "--workers=1"])
def test_run_messages_quota_abort_keeps_what_ran_and_says_what_did_not(
    how: str, tmp_path: Path, sim_factory: Callable[..., RunningSimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    served = [0]

    def key_ok_then_quota_gone(key: str) -> bool:  # the simulator asks this once per request
        served[0] += 1
        if served[0] > 2:  # two conversations of one request each, then the quota runs out
            sim.simulator.config = dataclasses.replace(sim.config, quota_exhausted=True)
        return False

    sim = sim_factory(rules=RULES, reject_keys=key_ok_then_quota_gone)
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    job = write_job(
        tmp_path, "chat", conversations=5, conversation_turns=[{"user": "hello"}], limits={"concurrency": 1}
    )
    result = invoke("run", str(job), how, "--no-progress", "-o", "out.jsonl")

    assert result.exit_code == 3, result.output
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["completed", "completed"]
    assert result.stderr.startswith("error: ")
    assert "the API reports the quota is exhausted (insufficient_quota)" in result.stderr
    assert "; 2 of 5 conversations recorded in " in result.stderr
    assert result.stderr.endswith("out.jsonl, 3 not run\n")


def test_run_messages_missing_key_suggests_simulate_only_where_it_exists(tmp_path: Path) -> None:
    job = write_job(tmp_path, "assistants")
    run = invoke("run", str(job), "--inline", "--no-progress")
    assert (run.exit_code, run.stderr) == (
        2,
        "error: OPENAI_API_KEY is not set (or use --simulate to run against the simulator)\n",
    )
    with RedisServer(tmp_path / "redis") as server:
        enqueue = invoke("enqueue", str(job), "--redis-url", server.url)
    # `runner enqueue` (like the scheduler's enqueue) has no --simulate to suggest
    assert (enqueue.exit_code, enqueue.stderr) == (2, "error: OPENAI_API_KEY is not set\n")


@pytest.mark.parametrize(
    ("raised", "printed"),
    [
        (Interrupted("interrupted: 2 of 5 conversations in out.jsonl; run it again"), "interrupted: 2 of 5"),
        (KeyboardInterrupt(), "interrupted"),
    ],
)
def test_run_messages_interrupted_is_said_once(raised: KeyboardInterrupt, printed: str) -> None:
    @click.command("interrupt-me")
    def interrupt_me() -> None:
        raise raised

    main.add_command(interrupt_me)
    try:
        result = invoke("interrupt-me")
    finally:
        main.commands.pop("interrupt-me")
    assert result.exit_code == 130
    assert result.stderr.startswith(printed)
    assert result.stderr.count("interrupted") == 1, result.stderr


def test_run_messages_empty_key_with_simulate_just_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    job = write_job(tmp_path, "chat", conversation_turns=[{"user": "hello"}])
    result = invoke("run", str(job), "--simulate", "--inline", "--no-progress", "-o", "out.jsonl")
    assert result.exit_code == 0, result.output
    assert "OPENAI_API_KEY" not in result.output
