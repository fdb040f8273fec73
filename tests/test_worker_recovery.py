"""Nothing is lost: a worker SIGKILLed mid-conversation, and a Redis restarted mid-batch (with
append-only persistence); either way the batch completes with every conversation exactly once.

Real processes throughout: redis-server, `runner worker -n N` pools, the simulator over HTTP.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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
from runner.queue.leases import LEASE_PREFIX
from runner.simulator import RunningSimulator, SimulatorConfig, start_simulator

pytestmark = pytest.mark.slow


@pytest.fixture
def slow_sim() -> Iterator[RunningSimulator]:
    """Chat completions that take ~1 s: long enough to kill a worker in the middle of one."""
    with start_simulator(SimulatorConfig(latency_s=1.0, jitter=0.0)) as sim:
        yield sim


def test_worker_sigkilled_mid_conversation_loses_nothing(tmp_path: Path, slow_sim: RunningSimulator) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "kill-one", conversations=8))
    with (
        started_redis(tmp_path / "redis") as (server, client),
        # One conversation per process: the one killed is known (many: test_worker_concurrency).
        worker_pool(
            server.url, 2, tmp_path / "workers.log", base_url=slow_sim.base_url, concurrency=1
        ) as pool,
    ):
        batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
        lease = wait_until(
            lambda: next(iter(client.scan_iter(f"{LEASE_PREFIX}*")), None), 60, 0.05, "a lease"
        )
        worker_name = client.get(lease).decode()
        pid = int(client.hget(f"rq:worker:{worker_name}", "pid"))
        job_id = lease.decode()[len(LEASE_PREFIX) :]
        assert pid in pool_children(pool.process.pid)
        time.sleep(0.3)  # well inside its 1 s chat completion
        os.kill(pid, signal.SIGKILL)
        killed_at = datetime.now(UTC)

        wait_finished(client, batch_id, timeout=90)
        records = read_jsonl(collect(batch_id, client))
        assert conversation_ids(records) == sorted(t.conversation_id for t in expand(job))
        rerun = [r for r in records if r["attempts"] == 2]
        assert len(rerun) == 1, "exactly the killed conversation ran again"
        finished = datetime.strptime(rerun[0]["finished_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert (finished - killed_at).total_seconds() < 60  # not RQ's ten-minute maintenance
        # Every other conversation reached the simulator once (the killed request may not count:
        # its client died before the answer).
        assert job_runs(slow_sim.stats()) in (8, 9)
        assert not client.exists(f"{LEASE_PREFIX}{job_id}")
        info = Batch(client, batch_id).require()
        assert (info.done, info.counts["running"], info.counts["queued"]) == (8, 0, 0)
        assert pool.process.poll() is None  # the pool replaced its dead worker and kept going


def pool_children(pool_pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pool_pid).children(recursive=True)]


def test_worker_redis_restarted_mid_batch_loses_nothing(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "restart", conversations=30))
    with (
        start_simulator(SimulatorConfig(latency_s=0.2)) as sim,
        started_redis(tmp_path / "redis", appendonly=True, unix_socket=False) as (server, client),
        worker_pool(server.url, 3, tmp_path / "workers.log", base_url=sim.base_url),
    ):
        batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
        batch = Batch(client, batch_id)
        wait_until(lambda: batch.require().done >= 6, 60, 0.05, "a few conversations done")
        port = server.port
        server.restart()  # SIGTERM (the server fsyncs its append-only file), then the same port again
        assert server.port == port
        assert batch.require().done >= 6  # what was done before the restart is still there

        wait_finished(client, batch_id, timeout=120)
        records = read_jsonl(collect(batch_id, client))
        assert conversation_ids(records) == sorted(t.conversation_id for t in expand(job))
        info = batch.require()
        assert (info.done, info.counts["running"], info.counts["queued"]) == (30, 0, 0)
        # A conversation in flight at the restart may have run twice; its record is still there once.
        assert 30 <= job_runs(sim.stats()) <= 33
