"""The queue's commands without workers: what `enqueue` puts in Redis (JSON only, no secrets,
nothing twice), what `status` shows of it, and the errors: missing or unreachable Redis, bad job
files, unknown batches; exact messages and exit codes, passwords masked."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from test_queue_support import FAKE_KEY, scan_for, started_redis, write_job

from runner.cli import main
from runner.queue.conversations import QUEUE_NAME, job_id_for, rq_queue
from runner.queue.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RedisServer, redis.Redis]]:
    with started_redis(tmp_path / "redis", unix_socket=False, password="pw-cli-1234") as pair:
        yield pair


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


def test_queue_enqueue_prints_the_batch_id_and_enqueues_each_conversation_once(
    tmp_path: Path, server: tuple[RedisServer, redis.Redis]
) -> None:
    srv, client = server
    job = write_job(tmp_path / "job.yaml", "cli-enqueue", conversations=3)
    runner = CliRunner()
    first = runner.invoke(main, ["enqueue", str(job), "--redis-url", srv.url])
    assert first.exit_code == 0, first.output
    assert re.fullmatch(r"cli-enqueue-\d{8}T\d{6}-[0-9a-f]{4}\n", first.output)
    batch_id = first.output.strip()
    second = runner.invoke(main, ["enqueue", str(job), "--redis-url", srv.url])
    assert (second.exit_code, second.output) == (0, first.output)  # the same, unfinished batch
    queue = rq_queue(client)
    expected = sorted(job_id_for(batch_id, f"cli-enqueue/c00{i}#r0") for i in range(3))
    assert sorted(queue.get_job_ids()) == expected  # three jobs, not six

    # JSON only: the job's payload is JSON naming our function, the task and the batch, no secret.
    data = json.loads(zlib.decompress(client.hget(f"rq:job:{expected[0]}", "data")))
    assert data[0] == "runner.queue.execute.run_task"
    assert data[2][1] == batch_id and data[2][0]["job"] == "cli-enqueue"
    assert data[3] == {"generation": 1, "attempt": 1}
    assert scan_for(client, [FAKE_KEY, "pw-cli-1234"]) == []

    status = runner.invoke(main, ["status", batch_id, "--redis-url", srv.url])
    assert status.exit_code == 0
    assert status.output.splitlines()[1].startswith("state     queued; created 20")
    assert status.output.splitlines()[3] == "waiting   0 running, 3 queued, 0 dropped"
    assert status.output.splitlines()[5] == "workers   0 alive"


@pytest.mark.parametrize("command", [["enqueue", "JOB"], ["worker"]])
def test_queue_commands_that_need_a_shared_redis_say_so(tmp_path: Path, command: list[str]) -> None:
    job = write_job(tmp_path / "job.yaml", "no-redis")
    args = [str(job) if a == "JOB" else a for a in command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output == (
        f"error: `runner {command[0]}` needs a shared Redis: pass --redis-url or set REDIS_URL\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", "JOB", "--redis-url", "URL"],
        ["worker", "--redis-url", "URL"],
        ["status", "--redis-url", "URL"],
        ["collect", "some-batch", "--redis-url", "URL"],
        ["retry", "some-batch", "--redis-url", "URL"],
        ["run", "JOB", "--redis-url", "URL", "--no-progress"],
    ],
)
def test_queue_unreachable_redis_exits_3_with_the_password_masked(tmp_path: Path, args: list[str]) -> None:
    url = "redis://:hunter2-secret@127.0.0.1:1/0"
    job = write_job(tmp_path / "job.yaml", "unreachable")
    args = [str(job) if a == "JOB" else url if a == "URL" else a for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3
    assert result.output.startswith("error: cannot reach Redis at redis://:***@127.0.0.1:1/0: ")
    assert "hunter2-secret" not in result.output


def test_queue_bad_job_file_exits_2_before_touching_redis(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nassistants: {a: {}}\nconversations: []\n")
    result = CliRunner().invoke(main, ["enqueue", str(bad), "--redis-url", "redis://127.0.0.1:1/0"])
    assert (result.exit_code, result.output) == (2, f"error: {bad}:3: conversations: must not be empty\n")


def test_queue_unknown_batch_exits_2(server: tuple[RedisServer, redis.Redis]) -> None:
    for command in (["status", "nope"], ["collect", "nope"], ["retry", "nope"]):
        result = CliRunner().invoke(main, [*command, "--redis-url", server[0].url])
        assert (result.exit_code, result.output) == (
            2,
            "error: no batch nope on this Redis (batches are kept 7 days)\n",
        )


def test_queue_status_lists_recent_batches(tmp_path: Path, server: tuple[RedisServer, redis.Redis]) -> None:
    srv, _ = server
    runner = CliRunner()
    assert runner.invoke(main, ["status", "--redis-url", srv.url]).output == (
        "no batches\nworkers alive: 0\nrefused jobs: 0\n"
    )
    ids = []
    for name in ("list-a", "list-b"):
        job = write_job(tmp_path / f"{name}.yaml", name, conversations=2)
        ids.append(runner.invoke(main, ["enqueue", str(job), "--redis-url", srv.url]).output.strip())
    lines = runner.invoke(main, ["status", "--redis-url", srv.url]).output.splitlines()
    assert lines[0].split()[:4] == ["BATCH", "JOB", "STATE", "DONE"]
    assert [line.split()[:4] for line in lines[1:3]] == [
        [ids[1], "list-b", "queued", "0/2"],
        [ids[0], "list-a", "queued", "0/2"],
    ]
    assert lines[3] == "workers alive: 0"


def test_queue_run_workers_0_needs_a_redis_url(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.yaml", "zero")
    result = CliRunner().invoke(main, ["run", str(job), "--workers", "0"])
    assert (result.exit_code, result.output) == (
        2,
        "error: --workers 0 needs --redis-url (or REDIS_URL): a Redis that other workers serve\n",
    )


def test_queue_status_without_any_redis_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["status"])
    assert (result.exit_code, result.output) == (
        2,
        "error: no Redis: pass --redis-url or set REDIS_URL (no embedded Redis under RUNNER_HOME yet)\n",
    )


def test_queue_name_is_ours() -> None:
    assert QUEUE_NAME == "runner"
