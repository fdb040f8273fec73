"""Many conversations in flight in one worker process, each its own RQ job under its own lease.

Real processes throughout: redis-server, `runner worker -n 1 --concurrency 16` as users run it, the
simulator over HTTP. Runs active at once are counted from the simulator: chat completions it has
received minus conversations recorded (a thread sends its next request only after storing a record).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
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
from runner.queue.conversations import QUEUE_NAME, job_id_for, rq_queue
from runner.queue.enqueue import enqueue_job
from runner.queue.leases import LEASE_PREFIX
from runner.queue.scopes import scope_status
from runner.simulator import RunningSimulator, SimulatorConfig, start_simulator

pytestmark = pytest.mark.slow

CONVERSATIONS = 40
CONCURRENCY = 16


@pytest.fixture
def two_second_runs() -> Iterator[RunningSimulator]:
    with start_simulator(SimulatorConfig(latency_s=2.0, jitter=0.0)) as sim:
        yield sim


class ActiveRuns:
    """Samples, every 20 ms, how many chat completions the simulator holds that are not recorded yet."""

    def __init__(self, sim: RunningSimulator, batch: Batch) -> None:
        self.sim, self.batch = sim, batch
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            done = self.batch.require().done
            self.peak = max(self.peak, job_runs(self.sim.stats()) - done)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_worker_concurrency_one_process_keeps_many_runs_active(
    tmp_path: Path, two_second_runs: RunningSimulator
) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "wide", conversations=CONVERSATIONS))
    with (
        started_redis(tmp_path / "redis") as (server, client),
        worker_pool(
            server.url, 1, tmp_path / "w.log", base_url=two_second_runs.base_url, concurrency=CONCURRENCY
        ),
    ):
        batch_id = enqueue_job(job, redis=client)
        batch = Batch(client, batch_id)
        active = ActiveRuns(two_second_runs, batch)
        in_registry = wait_until(lambda: _started(client) >= 10, 60, 0.02, "10 jobs in RQ's started registry")
        wait_finished(client, batch_id, timeout=120)
        peak = active.stop()
        records = read_jsonl(collect(batch_id, client))

    assert in_registry  # each conversation is its own RQ job, visible as started (rq-dashboard)
    assert 10 <= peak <= CONCURRENCY, f"{peak} runs active at once"
    assert conversation_ids(records) == sorted(t.conversation_id for t in expand(job))
    assert {r["status"] for r in records} == {"completed"}
    assert job_runs(two_second_runs.stats()) == CONVERSATIONS  # each ran once


def test_a_running_worker_carries_what_runner_runs_pool_key_says(
    tmp_path: Path, two_second_runs: RunningSimulator
) -> None:
    """`runner run` re-splits its pool over the processes it has: a worker started with `-c 16`
    carries what the key says from its next beat on, fewer (no new conversation taken) and then more
    than its threads (threads added)."""
    job = load_job(write_job(tmp_path / "job.yaml", "resized", conversations=CONVERSATIONS))
    key = "runner:pool:test:in_flight"
    with started_redis(tmp_path / "redis") as (server, client):
        client.set(key, 3)
        with worker_pool(
            server.url, 1, tmp_path / "w.log", base_url=two_second_runs.base_url,
            concurrency=CONCURRENCY, in_flight_key=key,
        ):  # fmt: skip
            batch_id = enqueue_job(job, redis=client)
            batch = Batch(client, batch_id)
            active = ActiveRuns(two_second_runs, batch)
            wait_until(lambda: batch.require().done >= 9, 60, 0.05, "three rounds of conversations")
            few = active.stop()
            client.set(key, 24)
            active = ActiveRuns(two_second_runs, batch)
            wait_finished(client, batch_id, timeout=120)
            more = active.stop()
            records = read_jsonl(collect(batch_id, client))
    assert 1 <= few <= 3, f"{few} runs active at once with the key at 3"
    assert more > CONCURRENCY, f"{more} runs active at once with the key at 24 (started with 16)"
    assert conversation_ids(records) == sorted(t.conversation_id for t in expand(job))
    assert job_runs(two_second_runs.stats()) == CONVERSATIONS  # each ran once


def test_worker_concurrency_sigkill_reruns_every_conversation_in_flight_once(
    tmp_path: Path, two_second_runs: RunningSimulator
) -> None:
    job = load_job(write_job(tmp_path / "job.yaml", "kill-many", conversations=CONVERSATIONS))
    with (
        started_redis(tmp_path / "redis") as (server, client),
        worker_pool(
            server.url, 1, tmp_path / "w.log", base_url=two_second_runs.base_url, concurrency=CONCURRENCY
        ),
    ):
        batch_id = enqueue_job(job, redis=client)
        batch = Batch(client, batch_id)
        wait_until(lambda: len(_leases(client)) >= 10, 60, 0.02, "10 conversations in flight")
        worker_name = client.get(next(iter(_leases(client)))).decode()
        pid = int(client.hget(f"rq:worker:{worker_name}", "pid"))
        os.kill(pid, signal.SIGKILL)
        # The leases of the dead process name every conversation it had in flight (a lease goes only
        # when its conversation has finished), and RQ's intermediate queue the one it had just
        # dequeued, if any; those recorded before the kill do not run again.
        leased = {key.decode()[len(LEASE_PREFIX) :] for key in _leases(client)}
        leased |= set(rq_queue(client).intermediate_queue.get_job_ids())
        recorded = set(batch.records())
        by_job = {job_id_for(batch_id, t.conversation_id): t.conversation_id for t in expand(job)}
        in_flight = {by_job[j] for j in leased} - recorded
        assert len(in_flight) >= 10

        wait_finished(client, batch_id, timeout=120)
        records = read_jsonl(collect(batch_id, client))

    assert conversation_ids(records) == sorted(t.conversation_id for t in expand(job))  # each once
    assert {r["status"] for r in records} == {"completed"}
    rerun = {r["conversation_id"] for r in records if r["attempts"] == 2}
    assert rerun == in_flight
    assert CONVERSATIONS <= job_runs(two_second_runs.stats()) <= CONVERSATIONS + len(in_flight)


def test_worker_concurrency_learns_the_limit_from_headers_with_few_429s(tmp_path: Path) -> None:
    # No `limits:` at all: the budget comes from the server's x-ratelimit-* headers. 130 requests
    # against 120 per minute: the last ones wait for the minute to slide instead of meeting 429s.
    job = load_job(write_job(tmp_path / "job.yaml", "learner", conversations=130))
    with (
        start_simulator(SimulatorConfig(latency_s=0.05, rpm=120)) as sim,
        started_redis(tmp_path / "redis") as (server, client),
        worker_pool(server.url, 1, tmp_path / "w.log", base_url=sim.base_url, concurrency=CONCURRENCY),
    ):
        batch_id = enqueue_job(job, redis=client)
        wait_finished(client, batch_id, timeout=150)
        records = read_jsonl(collect(batch_id, client))
        [scope] = scope_status(client)
        stats = sim.stats()

    assert len(records) == 130 and {r["status"] for r in records} == {"completed"}
    assert (scope.source, scope.rpm, scope.model) == ("headers", 120, "gpt-4o-mini")
    assert stats["429_rate_limit"] <= 3, stats


def _leases(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(f"{LEASE_PREFIX}*"))


def _started(client: redis.Redis) -> int:
    return StartedJobRegistry(QUEUE_NAME, connection=client, serializer=JSONSerializer).count
