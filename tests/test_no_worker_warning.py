"""`runner run --workers 0` with no live worker says so instead of waiting silently (issue 17, item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from test_engine_support import RULES, write_job

from runner.queue.redis_server import RedisServer
from runner.simulator import RunningSimulator


def test_no_worker_warning_after_a_few_seconds_says_how_to_start_one(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator]
) -> None:
    sim = sim_factory(rules=RULES)
    job = write_job(tmp_path, "chat", conversations=3)
    env = {
        **os.environ,
        "RUNNER_HOME": str(tmp_path / ".runner"),
        "OPENAI_BASE_URL": sim.base_url,
        "OPENAI_API_KEY": "sk-test",
    }
    with RedisServer(tmp_path / "redis") as server:
        args = ["run", str(job), "--workers", "0", "--redis-url", server.url, "-o", str(tmp_path / "o.jsonl")]
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            began, lines = time.monotonic(), []
            assert proc.stderr is not None
            while time.monotonic() - began < 30:
                line = proc.stderr.readline()
                lines.append(line)
                if "warning:" in line or not line:
                    break
            waited = time.monotonic() - began
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=20)  # reads the rest and closes the pipe
    warning = lines[-1]
    assert warning.startswith("warning: no worker is serving the queue at unix://"), lines
    assert "runner worker --redis-url URL" in warning
    assert 4 < waited < 20
