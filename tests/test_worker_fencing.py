"""Fencing: a worker stalled past its lease (SIGSTOP) while its conversation runs again elsewhere
sends nothing more once it wakes up (SIGCONT), and its record is refused.

Real processes throughout: redis-server, a `runner worker -n 2` pool, the simulator over HTTP; the
requests are counted by the simulator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_queue_support import (
    FAKE_KEY,
    conversation_ids,
    job_runs,
    read_jsonl,
    started_redis,
    wait_finished,
    wait_until,
    worker_pool,
    write_job,
)

from runner.jobs import load_job
from runner.queue.batch import Batch
from runner.queue.collector import collect
from runner.queue.enqueue import enqueue_job
from runner.queue.fence import fence_key
from runner.queue.leases import LEASE_PREFIX
from runner.simulator import SimulatorConfig, start_simulator

pytestmark = pytest.mark.slow


# turns=1: stopped during its only request, it wakes up to store a record: refused.
# turns=3: stopped during its first request, it wakes up before its second: not sent.
@pytest.mark.parametrize("turns", [1, 3])
def test_stalled_worker_is_fenced(tmp_path: Path, turns: int) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "fence", conversations=1, turns=turns))
    with (
        start_simulator(SimulatorConfig(latency_s=2.0, jitter=0.0)) as sim,
        started_redis(tmp_path / "redis") as (server, client),
        worker_pool(server.url, 2, tmp_path / "workers.log", base_url=sim.base_url, concurrency=1),
    ):
        batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
        lease = wait_until(
            lambda: next(iter(client.scan_iter(f"{LEASE_PREFIX}*")), None), 60, 0.05, "a lease"
        )
        job_id = lease.decode()[len(LEASE_PREFIX) :]
        pid = int(client.hget(f"rq:worker:{client.get(lease).decode()}", "pid"))
        time.sleep(0.5)  # its first request is in flight (the simulator takes 2 s)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(3)  # the request in flight is answered (into the stopped process's socket)
            before = job_runs(sim.stats())
            assert before == 1
            wait_finished(client, batch_id, timeout=90)  # re-run by the other worker after the lease
            assert int(client.get(fence_key(job_id))) >= 3  # claimed, bumped by the reaper, claimed
            rerun = job_runs(sim.stats())
            assert rerun == 1 + turns
        finally:
            os.kill(pid, signal.SIGCONT)
        batch = Batch(client, batch_id)
        wait_until(lambda: batch.require().counts["fenced"] >= 1, 30, 0.1, "the stalled run fenced")
        time.sleep(2 * 2.0)  # time enough for a request it should not send to reach the simulator
        assert job_runs(sim.stats()) == rerun, "the fenced worker sent no further request"
        records = read_jsonl(collect(batch_id, client))
        assert len(records) == 1 == len(conversation_ids(records))
        assert records[0]["attempts"] == 2 and records[0]["status"] == "completed"
        assert batch.require().counts["fenced"] == 1
        assert "lease lost" in (tmp_path / "workers.log").read_text()


def test_burst_worker_reaps_a_dead_workers_conversation(tmp_path: Path) -> None:
    """`runner worker --burst` after a worker was SIGKILLed mid-conversation: the burst worker runs
    that conversation again (once its lease lapses) before it quits, so collect is complete."""
    job = load_job(write_job(tmp_path / "job.yaml", "burst", conversations=4))
    with (
        start_simulator(SimulatorConfig(latency_s=2.0, jitter=0.0)) as sim,
        started_redis(tmp_path / "redis") as (server, client),
    ):
        with worker_pool(server.url, 1, tmp_path / "dead.log", base_url=sim.base_url, concurrency=1) as pool:
            batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
            wait_until(lambda: next(iter(client.scan_iter(f"{LEASE_PREFIX}*")), None), 60, 0.05, "a lease")
            assert pool.process is not None
            os.killpg(pool.process.pid, signal.SIGKILL)  # the pool and its worker: nobody respawns it
        env = {**os.environ, "OPENAI_BASE_URL": sim.base_url, "OPENAI_API_KEY": FAKE_KEY}
        burst = subprocess.run(
            [sys.executable, "-m", "runner", "worker", "--burst", "-n", "1", "--redis-url", server.url],
            env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        assert burst.returncode == 0, burst.stderr.decode()[-2000:]
        records = read_jsonl(collect(batch_id, client))
        assert len(set(conversation_ids(records))) == len(records) == 4
        assert sorted(r["attempts"] for r in records) == [1, 1, 1, 2]


def test_auth_failure_stops_every_thread_before_its_next_request(tmp_path: Path) -> None:
    """The key is revoked mid-batch (every request from then on gets 401). One worker process runs
    4 conversations at once; after the first 401 the batch is aborted and every thread checks the
    abort flag before each request, so no new request starts. Bound: the requests already sent
    when the first 401 came back (≤ concurrency − 1) plus, rarely, one racing the abort by a few
    milliseconds; before fencing each of the 4 threads went on to its own 401."""
    calls: list[bool] = []

    def revoked_after_6(key: str) -> bool:
        calls.append(len(calls) >= 6)
        return calls[-1]

    job = load_job(write_job(tmp_path / "job.yaml", "auth", conversations=8, turns=3))
    with (
        start_simulator(SimulatorConfig(latency_s=1.0, reject_keys=revoked_after_6)) as sim,
        started_redis(tmp_path / "redis") as (server, client),
        worker_pool(server.url, 1, tmp_path / "workers.log", base_url=sim.base_url, concurrency=4),
    ):
        batch_id = enqueue_job(job, redis=client, output=str(tmp_path / "out.jsonl"))
        batch = Batch(client, batch_id)
        wait_until(lambda: batch.require().aborted, 60, 0.05, "the batch aborted")
        wait_until(lambda: batch.require().counts["running"] == 0, 30, 0.1, "every conversation stopped")
        time.sleep(2.0)  # a request that should not be sent would reach the simulator by now
        rejected = sum(calls)
        print(f"requests answered 401: {rejected} (concurrency 4)")
        assert 1 <= rejected <= 2
        assert sim.stats()["by_route"].get("POST /v1/chat/completions", 0) >= 6
