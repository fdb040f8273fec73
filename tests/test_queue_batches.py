"""Batches on a real Redis (password-protected, append-only) with 4 real worker processes
(`runner worker -n 4`) against the real simulator: exactly once, idempotent enqueue, retry,
collect/status/retry commands, fatal API errors, `run --workers 0`, and no secret left in Redis.

One Redis, one simulator and one worker pool serve the whole module (starting workers costs
seconds); every test uses its own job name, so batches and limiter scopes do not mix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from test_queue_support import (
    FAKE_KEY,
    conversation_ids,
    job_runs,
    read_jsonl,
    scan_for,
    started_redis,
    wait_finished,
    wait_until,
    worker_pool,
    write_job,
)

from runner.cli import main
from runner.jobs import expand, load_job
from runner.queue.batch import Batch
from runner.queue.collector import collect
from runner.queue.enqueue import enqueue_job, retry_batch
from runner.queue.redis_server import RedisServer
from runner.queue.worker import LocalWorkers
from runner.simulator import RunningSimulator, SimulatorConfig, SimulatorRules, start_simulator

pytestmark = pytest.mark.slow

PASSWORD = "pw-9d2c6e1b7a"


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    rules = SimulatorRules.model_validate({"rules": [{"when": "QUOTA-BOMB", "quota_exhausted": True}]})
    with start_simulator(SimulatorConfig(latency_s=0.05, rules=rules)) as s:
        yield s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, redis.Redis]]:
    directory = tmp_path_factory.mktemp("redis")
    with started_redis(directory, appendonly=True, password=PASSWORD, unix_socket=False) as pair:
        yield pair


@pytest.fixture(scope="module")
def client(server: tuple[RedisServer, redis.Redis]) -> redis.Redis:
    return server[1]


@pytest.fixture(scope="module")
def url(server: tuple[RedisServer, redis.Redis]) -> str:
    return server[0].url


@pytest.fixture(scope="module")
def pool(url: str, sim: RunningSimulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorkers]:
    log = tmp_path_factory.mktemp("logs") / "workers.log"
    with worker_pool(url, 4, log, base_url=sim.base_url) as workers:
        yield workers


def test_queue_200_conversations_over_4_workers_each_exactly_once(
    tmp_path: Path, client: redis.Redis, pool: LocalWorkers, sim: RunningSimulator
) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "two-hundred", conversations=2, repeat=100))
    sim.reset_stats()
    batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
    wait_finished(client, batch_id, timeout=150)
    path = collect(batch_id, client)
    ids = conversation_ids(read_jsonl(path))
    assert path == tmp_path / "out.jsonl"
    assert len(ids) == 200
    assert ids == sorted({t.conversation_id for t in expand(job)})
    assert job_runs(sim.stats()) == 200  # nothing ran twice
    info = Batch(client, batch_id).require()
    assert (info.done, info.counts["nochecks"], info.counts["running"], info.counts["queued"]) == (
        200,
        200,
        0,
        0,
    )


def test_queue_enqueue_twice_runs_nothing_twice(
    tmp_path: Path, client: redis.Redis, pool: LocalWorkers, sim: RunningSimulator
) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "twice", conversations=12))
    sim.reset_stats()
    out = str(tmp_path / "out.jsonl")
    first = enqueue_job(job, redis=client, output=out)
    second = enqueue_job(job, redis=client, output=out)  # the unfinished batch is found again
    third = enqueue_job(job, redis=client, batch_id=first)
    assert first == second == third
    wait_finished(client, first, timeout=60)
    assert enqueue_job(job, redis=client, batch_id=first) == first  # finished: still nothing to do
    assert len(read_jsonl(collect(first, client))) == 12
    assert job_runs(sim.stats()) == 12
    # A finished batch is not reopened by enqueue: the same file and output start a new batch.
    assert enqueue_job(job, redis=client, output=out) != first


def test_queue_retry_reruns_only_the_failed(
    tmp_path: Path, client: redis.Redis, url: str, pool: LocalWorkers, sim: RunningSimulator
) -> None:
    path = write_job(
        tmp_path / "job.yaml",
        "retry-some",
        conversations=10,
        messages=["hello there", "fail me"],
        expect=[{"contains": "hello"}],
    )
    job = load_job(path)
    batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
    wait_finished(client, batch_id, timeout=60)
    before = {r["conversation_id"]: r for r in read_jsonl(collect(batch_id, client))}
    failed = sorted(c for c, r in before.items() if r["passed"] is False)
    assert len(failed) == 5
    sim.reset_stats()

    result = CliRunner().invoke(main, ["retry", batch_id, "--redis-url", url])
    assert (result.exit_code, result.output) == (0, f"5 conversations of batch {batch_id} enqueued again\n")
    wait_finished(client, batch_id, timeout=60)
    assert job_runs(sim.stats()) == 5
    after = {r["conversation_id"]: r for r in read_jsonl(collect(batch_id, client))}
    assert sorted(after) == sorted(before)
    for conv, record in after.items():
        if conv in failed:
            assert record["attempts"] == 2 and record["finished_at"] >= before[conv]["finished_at"]
        else:
            assert record == before[conv]  # untouched
    assert retry_batch(batch_id, client, secret=None) == 5  # failed again: a second retry takes them again
    wait_finished(client, batch_id, timeout=60)


def test_queue_collect_and_status_commands(
    tmp_path: Path, client: redis.Redis, url: str, pool: LocalWorkers
) -> None:
    job = load_job(
        write_job(tmp_path / "job.yaml", "cli-cmds", conversations=4, expect=[{"contains": "said"}])
    )
    batch_id = enqueue_job(job, redis=client)
    wait_finished(client, batch_id, timeout=60)
    runner = CliRunner()
    out = tmp_path / "collected.jsonl"
    result = runner.invoke(main, ["collect", batch_id, "-o", str(out), "--redis-url", url])
    assert (result.exit_code, result.output) == (0, f"4 conversations written to {out}\n")
    assert conversation_ids(read_jsonl(out)) == [f"cli-cmds/c00{i}#r0" for i in range(4)]

    result = runner.invoke(main, ["status", batch_id, "--redis-url", url])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"batch     {batch_id} (cli-cmds)"
    assert lines[1].startswith("state     finished; created 20")
    assert lines[2] == "done      4/4: 4 passed, 0 failed, 0 errors, 0 without checks"
    assert lines[3] == "waiting   0 running, 0 queued, 0 dropped"
    assert re.fullmatch(r"rate      \d+\.\d\d/s, ETA 0s, \d+ tokens, 4 requests", lines[4])
    assert lines[5] == "workers   4 alive"
    assert lines[6] == f"output    {(tmp_path / 'runs' / f'cli-cmds-{batch_id}.jsonl').resolve()}"

    result = runner.invoke(main, ["status", "--redis-url", url])
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split() == [
        "BATCH", "JOB", "STATE", "DONE", "PASSED", "FAILED", "ERRORS", "RUNNING", "RATE/s", "ETA"
    ]  # fmt: skip
    row = next(line for line in result.output.splitlines() if line.startswith(batch_id))
    assert row.split()[1:8] == ["cli-cmds", "finished", "4/4", "4", "0", "0", "0"]
    assert "workers alive: 4" in result.output

    result = runner.invoke(main, ["status", "no-such-batch", "--redis-url", url])
    assert result.exit_code == 2
    assert "no batch no-such-batch on this Redis" in result.output


def test_queue_fatal_api_error_aborts_only_its_batch(
    tmp_path: Path, client: redis.Redis, url: str, pool: LocalWorkers
) -> None:
    bomb = load_job(write_job(tmp_path / "bomb.yaml", "bomb", conversations=20, messages=["QUOTA-BOMB"]))
    fine = load_job(write_job(tmp_path / "fine.yaml", "fine", conversations=20))
    bomb_id = enqueue_job(bomb, redis=client)
    fine_id = enqueue_job(fine, redis=client)
    wait_finished(client, fine_id, timeout=60)
    info = wait_until(
        lambda: (i := Batch(client, bomb_id).require()).aborted and i.counts["running"] == 0 and i, 30
    )
    assert "quota" in info.aborted.lower()
    assert info.done < 20 and info.counts["dropped"] > 0
    assert Batch(client, fine_id).require().done == 20  # the other batch went on

    # `runner run` on the same file resumes the aborted batch, meets the error again and exits 3.
    result = CliRunner().invoke(
        main, ["run", str(tmp_path / "bomb.yaml"), "--redis-url", url, "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 3
    assert f"error: batch {bomb_id} aborted: " in result.output


def test_queue_run_with_redis_url_and_remote_workers_only(
    tmp_path: Path, url: str, pool: LocalWorkers
) -> None:
    job = write_job(tmp_path / "job.yaml", "remote-only", conversations=6, expect=[{"contains": "hello"}])
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        main, ["run", str(job), "--redis-url", url, "--workers", "0", "-o", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("6 conversations: 6 passed, 0 failed, 0 errors;")
    assert len(read_jsonl(out)) == 6


def test_queue_no_secret_in_redis_records_or_logs_after_runs(
    tmp_path: Path, client: redis.Redis, pool: LocalWorkers
) -> None:
    """Runs last in the module: every batch above (and its errors) is in Redis now."""
    job = load_job(write_job(tmp_path / "job.yaml", "secrets", conversations=5))
    batch_id = enqueue_job(job, redis=client)
    wait_finished(client, batch_id, timeout=60)
    assert client.dbsize() > 50
    assert scan_for(client, [FAKE_KEY, PASSWORD]) == []
    log = pool.log_path.read_text()
    assert "Job OK" in log
    assert FAKE_KEY not in log and PASSWORD not in log
    collected = collect(batch_id, client, tmp_path / "out.jsonl").read_text()
    assert FAKE_KEY not in collected and PASSWORD not in collected
