"""Redis away mid-batch, real components: redis-server (append-only) SIGKILLed and restarted from
its AOF on the same port, under a real `runner worker` pool, against the simulator over HTTP.

* Within the outage limit (default 60 s): the worker process rides it out (same PID, one log line
  when it starts and one when it ends), records that could not be stored wait in the spool under
  RUNNER_HOME and are delivered when Redis is back: every conversation exactly once, spool empty.
* Past a short limit (RUNNER_REDIS_OUTAGE_S=3): the worker stops its conversations and exits 69,
  its spooled records stay on disk, and the worker the pool starts once Redis is back delivers
  them: every conversation exactly once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
from test_queue_support import (
    conversation_ids,
    job_runs,
    read_jsonl,
    started_redis,
    wait_finished,
    wait_until,
    worker_pool,
    write_job,
)

from runner.jobs import expand, load_job
from runner.queue.batch import Batch
from runner.queue.collector import collect
from runner.queue.enqueue import enqueue_job
from runner.queue.spool import pending
from runner.queue.worker import EXIT_REDIS_OUTAGE
from runner.simulator import SimulatorConfig, start_simulator

pytestmark = pytest.mark.slow


def _worker_pids(client: redis.Redis) -> set[int]:
    """The PIDs of the RQ workers registered on this Redis (a worker that gave up stays listed)."""
    keys = wait_until(lambda: list(client.scan_iter("rq:worker:*")), 30, 0.1, "a registered worker")
    pids = {int(client.hget(k, "pid") or 0) for k in keys if client.type(k) == b"hash"}
    return pids - {0}


def _worker_pid(client: redis.Redis) -> int:
    pids = _worker_pids(client)
    assert len(pids) == 1, pids
    return pids.pop()


def _kill(server: object) -> None:
    process = server.process  # type: ignore[attr-defined]
    assert process is not None
    process.kill()  # no shutdown, no fsync: at most the last second of the append-only file is lost
    process.wait()


def test_worker_rides_out_a_15s_redis_outage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = tmp_path / "workers.log"
    job = load_job(write_job(tmp_path / "job.yaml", "outage", conversations=12, turns=2))
    with (
        # No jitter: the 4 conversation threads send in step, 4 requests per 5 s wave.
        start_simulator(SimulatorConfig(latency_s=5.0, jitter=0.0)) as sim,
        started_redis(tmp_path / "redis", appendonly=True, unix_socket=False) as (server, client),
        worker_pool(server.url, 1, log, base_url=sim.base_url, concurrency=4, env={"RUNNER_HOME": str(home)}),
    ):
        batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
        batch = Batch(client, batch_id)
        # The second wave is the last turn of 4 conversations: their answers come back while Redis
        # is away, so their records go to the spool.
        wait_until(lambda: job_runs(sim.stats()) >= 8, 60, 0.02, "the second wave sent")
        pid = _worker_pid(client)
        _kill(server)
        time.sleep(15)
        server.start()  # same port, same data directory: the AOF is read back

        wait_finished(client, batch_id, timeout=180)
        records = read_jsonl(collect(batch_id, client))
        assert conversation_ids(records) == sorted(t.conversation_id for t in expand(job))  # each once
        assert all(r["status"] == "completed" for r in records)
        info = batch.require()
        assert (info.done, info.counts["running"], info.counts["queued"]) == (12, 0, 0)
        text = log.read_text()
        spooled = text.count("spooled to")
        assert spooled >= 1, "answers that came back during the outage went to the spool"
        assert pending(home) == 0  # and were delivered

        # The same process rode it out and still works: a second batch, nobody respawned.
        os.kill(pid, 0)
        second = load_job(write_job(tmp_path / "second.yaml", "after", conversations=4))
        again = enqueue_job(second, redis=client, output=str(tmp_path / "second.jsonl"))
        wait_finished(client, again, timeout=60)
        assert len(read_jsonl(collect(again, client))) == 4
        assert _worker_pid(client) == pid
        text = log.read_text()
        assert "exited (" not in text, "the pool had to start another worker"
        # One line when the outage starts, one when it ends (no log flood).
        assert text.count("Redis unreachable: taking no new work") == 1
        assert text.count("Redis reachable again after") == 1
        # Leases re-taken after the restart: no conversation ran twice, no request was sent twice.
        assert job_runs(sim.stats()) == 12 * 2 + 4
        print(
            f"chat completions: {job_runs(sim.stats())} for 28 turns (12 x 2 + 4);"
            f" spooled: {spooled}; fenced: {info.counts['fenced']}"
        )


def test_outage_past_the_limit_exits_69_and_the_next_worker_delivers_the_spool(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = tmp_path / "workers.log"
    job = load_job(write_job(tmp_path / "job.yaml", "long-outage", conversations=12, turns=1))
    env = {"RUNNER_HOME": str(home), "RUNNER_REDIS_OUTAGE_S": "3"}
    with (
        start_simulator(SimulatorConfig(latency_s=5.0, jitter=0.0)) as sim,
        started_redis(tmp_path / "redis", appendonly=True, unix_socket=False) as (server, client),
        worker_pool(server.url, 1, log, base_url=sim.base_url, concurrency=4, env=env),
    ):
        batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
        # Four conversations in flight, each with its only request at the simulator (5 s).
        wait_until(lambda: job_runs(sim.stats()) >= 4, 60, 0.02, "4 requests sent")
        pid = _worker_pid(client)
        _kill(server)

        exited = f"worker {pid} exited ({EXIT_REDIS_OUTAGE})"
        wait_until(lambda: exited in log.read_text(), 120, 0.2, "the worker's exit 69")
        spooled = pending(home)
        assert spooled >= 1, "the answers that came back during the outage wait on disk"
        assert f"exiting with code {EXIT_REDIS_OUTAGE}: {spooled} spooled record(s) stay" in log.read_text()

        server.start()  # the pool's next worker reaches Redis and delivers the spool
        wait_finished(client, batch_id, timeout=180)
        records = read_jsonl(collect(batch_id, client))
        assert conversation_ids(records) == sorted(t.conversation_id for t in expand(job))  # each once
        assert all(r["status"] == "completed" for r in records)
        assert pending(home) == 0
        assert _worker_pids(client) - {pid}, "the pool's next worker delivered them"
        print(f"spooled at exit: {spooled}; chat completions: {job_runs(sim.stats())} for 12 conversations")
