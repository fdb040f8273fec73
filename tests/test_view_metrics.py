"""Prometheus metrics of a worker pool: what forked workers record is summed by the pool's
`/metrics` (prometheus-client multiprocess mode), scraped over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from test_queue_support import FAKE_KEY, started_redis, wait_finished, wait_until, write_job

from runner.cli import main
from runner.queue.batch import Batch
from runner.simulator import RunningSimulator

ROOT = Path(__file__).resolve().parents[1]

POOL = textwrap.dedent("""
    import multiprocessing, sys, time
    from runner.queue import metrics
    metrics.start_metrics_server(int(sys.argv[1]))

    def work(n):
        for _ in range(n):
            metrics.conversation_finished("completed", "passed")
            metrics.turn_finished("completed", 1.5, 10, 5)
        metrics.conversation_finished("error", "error")
        metrics.request_sent(2)
        metrics.rate_limited()
        metrics.limiter_waited(0.25)
        with metrics.in_flight():
            pass

    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=work, args=(n,)) for n in (2, 3)]
    for c in children: c.start()
    for c in children: c.join(); metrics.process_dead(c.pid)
    print("ready", flush=True)
    time.sleep(60)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_sum_what_forked_workers_record() -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-c", POOL, str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        m = scrape(port)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert m[("runner_conversations_total", (("outcome", "passed"), ("status", "completed")))] == 5
    assert m[("runner_conversations_total", (("outcome", "error"), ("status", "error")))] == 2
    assert m[("runner_turns_total", (("status", "completed"),))] == 5
    assert m[("runner_tokens_total", (("kind", "prompt"),))] == 50
    assert m[("runner_tokens_total", (("kind", "completion"),))] == 25
    assert m[("runner_requests_total", ())] == 4
    assert m[("runner_rate_limited_total", ())] == 2
    assert m[("runner_limiter_wait_seconds_total", ())] == 0.5
    assert m[("runner_turn_latency_seconds_count", ())] == 5
    assert m[("runner_turn_latency_seconds_bucket", (("le", "2.0"),))] == 5
    assert m[("runner_turn_latency_seconds_bucket", (("le", "1.0"),))] == 0
    assert ("runner_conversations_in_flight", ()) not in m  # dead workers no longer count (livesum)


THREADS = textwrap.dedent("""
    import os, sys, tempfile, threading
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    from runner.queue import metrics
    start, failed = threading.Barrier(32), []

    def conversation():
        start.wait()
        try:
            with metrics.in_flight():  # the first metric of the process, from every thread at once
                metrics.conversation_finished("completed", "passed")
        except Exception as e:
            failed.append(repr(e))

    threads = [threading.Thread(target=conversation) for _ in range(32)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(failed)
""")


def test_a_workers_threads_making_the_metrics_at_once_all_record() -> None:
    """A threaded worker's conversations start together: the metrics must be made once, not once
    per thread (prometheus-client refuses a second `runner_conversations`, which failed the
    conversation that tried)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", THREADS], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == "[]\n"


def _finished(m: dict[Any, float]) -> float:
    return sum(v for (name, _), v in m.items() if name == "runner_conversations_total")


@pytest.mark.slow
def test_metrics_of_a_worker_pool_equal_its_records(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    sim = sim_factory()
    port = _free_port()
    with started_redis(tmp_path / "redis") as (srv, client):
        job = write_job(
            tmp_path / "job.yaml",
            "metrics",
            conversations=4,
            expect=[{"contains": "hello 1"}],
            messages=["hello 0", "hello 1"],
        )
        batch_id = CliRunner().invoke(main, ["enqueue", str(job), "--redis-url", srv.url]).output.strip()
        env = {
            **os.environ,
            "OPENAI_BASE_URL": sim.base_url,
            "REDIS_URL": srv.url,
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        pool = subprocess.Popen(
            [sys.executable, "-m", "runner", "worker", "-n", "2", "--metrics-port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_finished(client, batch_id, 60)
            records = Batch(client, batch_id).records().values()
            time.sleep(0.5)
            # A record is stored first and counted right after: wait until the last one is counted.
            m = wait_until(lambda: (got := scrape(port)) and _finished(got) >= 4 and got, 20, what="/metrics")
        finally:
            pool.terminate()
            pool.wait(20)
    done = sum(v for (name, _), v in m.items() if name == "runner_conversations_total")
    assert done == len(records) == 4
    passed = m[("runner_conversations_total", (("outcome", "passed"), ("status", "completed")))]
    assert passed == sum(r["passed"] is True for r in records) == 2
    assert m[("runner_requests_total", ())] == sum(r["requests"] for r in records)
