"""Redis away mid-batch: redis-server SIGKILLed for ~10 s and restarted from its append-only file,
under a real worker pool. Conversations in flight finish, records that could not be stored wait in
the spool under RUNNER_HOME and are delivered when Redis is back: every conversation exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
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
from runner.queue.spool import spool_dir
from runner.simulator import SimulatorConfig, start_simulator

pytestmark = pytest.mark.slow


def test_redis_sigkilled_for_10s_every_conversation_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    job = load_job(write_job(tmp_path / "job.yaml", "outage", conversations=40, turns=2))
    with (
        start_simulator(SimulatorConfig(latency_s=1.0)) as sim,
        started_redis(tmp_path / "redis", appendonly=True, unix_socket=False) as (server, client),
        worker_pool(
            server.url, 2, tmp_path / "workers.log", base_url=sim.base_url, concurrency=4,
            env={"RUNNER_HOME": str(home)},
        ),  # fmt: skip
    ):
        batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
        batch = Batch(client, batch_id)
        wait_until(lambda: batch.require().done >= 6, 90, 0.05, "a few conversations done")
        assert server.process is not None
        server.process.kill()  # no fsync: at most the last second of the append-only file is lost
        server.process.wait()
        time.sleep(10)
        server.start()  # same port, same data directory: the AOF is read back

        wait_finished(client, batch_id, timeout=180)
        records = read_jsonl(collect(batch_id, client))
        ids = conversation_ids(records)
        assert ids == sorted(t.conversation_id for t in expand(job))  # each once, none missing
        info = batch.require()
        assert (info.done, info.counts["running"], info.counts["queued"]) == (40, 0, 0)
        assert not list(spool_dir(home).glob("*.json"))  # everything spooled was delivered
        runs = job_runs(sim.stats())
        print(f"chat completions: {runs} for 80 turns; spooled: {_spooled(tmp_path / 'workers.log')}")
        assert runs >= 80
        client.close()
        server.stop()


def _spooled(log: Path) -> int:
    return log.read_text().count("record of job")
