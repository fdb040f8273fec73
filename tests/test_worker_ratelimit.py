"""One limit for all: 4 worker processes against a simulator enforcing 120 requests per minute, with
the job's `requests_per_minute: 120`. No 429 from rate limiting reaches the client, and at least
85% of the budget is used over the minute (assistants API: runs are polled, polls count).

About 70 seconds: the budget is per minute.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_queue_support import FAKE_KEY, started_redis, wait_until, worker_pool, write_job

from runner.jobs import load_job
from runner.queue.batch import Batch
from runner.queue.enqueue import enqueue_job
from runner.simulator import SimulatorConfig, start_simulator

pytestmark = pytest.mark.slow

RPM = 120
POLL = {"RUNNER_ASSISTANTS_WAIT": "poll"}  # runs polled (not streamed): every poll is a request


def test_worker_pool_shares_one_rate_limit_without_429s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = {"requests_per_minute": RPM, "concurrency": 8}
    job = load_job(
        write_job(tmp_path / "job.yaml", "rpm-shared", conversations=80, api="assistants", limits=limits)
    )
    with (
        start_simulator(SimulatorConfig(latency_s=0.3, rpm=RPM)) as sim,
        started_redis(tmp_path / "redis") as (server, client),
        worker_pool(server.url, 4, tmp_path / "workers.log", base_url=sim.base_url, env=POLL) as pool,
    ):
        # The enqueuer prepares the assistant through the same limiter (same job, same server).
        monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)  # the workers' key: one scope, one budget
        wait_until(lambda: client.zcard("runner:workers") >= 4, 60, 0.1, "4 workers alive")
        began = time.monotonic()
        batch_id = enqueue_job(job, redis=client)
        time.sleep(max(0.0, 60.0 - (time.monotonic() - began)))
        stats = sim.stats()
        used = stats["requests_total"]

        assert stats["429_rate_limit"] == 0, stats
        assert used <= RPM
        assert used >= 0.85 * RPM, f"only {used} of {RPM} requests used in the minute"
        info = Batch(client, batch_id).require()
        assert 0 < info.done < 80  # it was the limit, not the work, that bounded the minute
        # Records count their requests, polls included: at least the finished ones' share of the minute.
        assert stats["by_route"].get("GET /v1/threads/{thread_id}/runs/{run_id}", 0) > 0
        assert info.counts["requests"] <= used
        assert pool.process is not None and pool.process.poll() is None
