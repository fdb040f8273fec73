"""`runner worker -n N` as users run it: `--burst` stops once the queue is empty; SIGTERM stops
warmly (the conversations in flight are finished and recorded, the rest stays queued for others)."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_queue_support import started_redis, wait_until, worker_pool, write_job

from runner.jobs import load_job
from runner.queue.batch import WORKERS_KEY, Batch
from runner.queue.conversations import rq_queue
from runner.queue.enqueue import enqueue_job
from runner.queue.leases import LEASE_PREFIX
from runner.simulator import SimulatorConfig, start_simulator

pytestmark = pytest.mark.slow


def test_worker_burst_stops_when_the_queue_is_empty(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "burst", conversations=6))
    with (
        start_simulator(SimulatorConfig(latency_s=0.05)) as sim,
        started_redis(tmp_path / "redis") as (server, client),
    ):
        batch_id = enqueue_job(job, redis=client)
        with worker_pool(server.url, 2, tmp_path / "w.log", base_url=sim.base_url, burst=True) as pool:
            assert pool.process is not None
            assert pool.process.wait(90) == 0
        assert Batch(client, batch_id).require().finished
        assert client.zcard(WORKERS_KEY) == 0  # they said goodbye


def test_worker_sigterm_finishes_the_conversations_in_flight_then_stops(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "warm-stop", conversations=6))
    with (
        start_simulator(SimulatorConfig(latency_s=1.5, jitter=0.0)) as sim,
        started_redis(tmp_path / "redis") as (server, client),
        worker_pool(server.url, 1, tmp_path / "w.log", base_url=sim.base_url, concurrency=2) as pool,
    ):
        batch_id = enqueue_job(job, redis=client)
        wait_until(lambda: len(list(client.scan_iter(f"{LEASE_PREFIX}*"))) == 2, 60, 0.05, "2 in flight")
        assert pool.process is not None
        pool.process.send_signal(signal.SIGTERM)
        assert pool.process.wait(30) == 0
        info = Batch(client, batch_id).require()
        assert (info.done, info.counts["running"]) == (2, 0)  # both finished and recorded, none abandoned
        assert rq_queue(client).count == 4  # the rest waits for other workers
        assert not list(client.scan_iter(f"{LEASE_PREFIX}*"))


def test_worker_runs_delayed_jobs_without_a_scheduler_process(tmp_path: Path) -> None:
    """RQ's scheduler runs in a thread of the worker: jobs scheduled for later (as the Batch API's
    polls are) still run, and a pool of one is a single process (no pool parent, no forked scheduler)."""
    import psutil
    from rq.scheduler import RQScheduler

    job = load_job(write_job(tmp_path / "job.yaml", "later", conversations=3))
    with (
        start_simulator(SimulatorConfig(latency_s=0.05)) as sim,
        started_redis(tmp_path / "redis") as (server, client),
    ):
        batch_id = enqueue_job(job, redis=client)
        queue = rq_queue(client)
        when = datetime.now(UTC) + timedelta(seconds=1)
        for job_id in queue.get_job_ids():
            rq_job = queue.fetch_job(job_id)
            assert rq_job is not None
            queue.remove(job_id)
            queue.schedule_job(rq_job, when)
        assert queue.count == 0 and len(queue.scheduled_job_registry) == 3
        log = tmp_path / "w.log"
        with worker_pool(server.url, 1, log, base_url=sim.base_url, concurrency=4, pooled=False) as pool:
            assert pool.process is not None
            wait_until(lambda: Batch(client, batch_id).require().finished, 60, 0.1, "the delayed jobs ran")
            assert psutil.Process(pool.process.pid).children(recursive=True) == []
        assert Batch(client, batch_id).require().done == 3
        assert len(queue.scheduled_job_registry) == 0
        # Stopped, it handed RQ's scheduler lock back: another worker schedules at once.
        assert not client.exists(RQScheduler.get_locking_key(queue.name))
