"""`runner run FILE` on the queue, as users run it: a private embedded Redis and worker processes,
everything stopped afterwards; and resuming a run interrupted with Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from test_queue_support import conversation_ids, job_runs, read_jsonl, wait_until, write_job

from runner.cli import main
from runner.simulator import SimulatorConfig, start_simulator

pytestmark = pytest.mark.slow


def test_queue_run_with_embedded_redis_and_workers_then_stops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    job = write_job(tmp_path / "job.yaml", "embedded", conversations=6, expect=[{"contains": "hello"}])
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    result = runner.invoke(
        main, ["run", str(job), "--simulate", "-o", str(out), "--workers", "2", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("6 conversations: 6 passed, 0 failed, 0 errors;")
    records = read_jsonl(out)
    assert conversation_ids(records) == [f"embedded/c00{i}#r0" for i in range(6)]
    batch_id = records[0]["batch_id"]
    assert {r["batch_id"] for r in records} == {batch_id}
    assert psutil.Process().children(recursive=True) == []  # no Redis, no worker left behind
    assert (tmp_path / "home" / "redis" / "appendonly.aof").exists()
    assert (tmp_path / "home" / "logs" / "workers-embedded.log").exists()

    # The embedded Redis kept the batch: status and collect (no URL) open it again.
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if line.startswith(batch_id))
    assert row.split()[1:5] == ["embedded", "finished", "6/6", "6"]
    again = tmp_path / "again.jsonl"
    result = runner.invoke(main, ["collect", batch_id, "-o", str(again)])
    assert (result.exit_code, result.output) == (0, f"6 conversations written to {again}\n")
    assert again.read_text() == out.read_text()
    assert psutil.Process().children(recursive=True) == []


def test_queue_run_resumes_after_an_interrupt_without_rerunning_finished_conversations(
    tmp_path: Path,
) -> None:
    # One conversation at a time (the job's cap), so the interrupt finds some finished, most not.
    job = write_job(tmp_path / "job.yaml", "resume", conversations=10, limits={"concurrency": 1})
    out = tmp_path / "out.jsonl"
    with start_simulator(SimulatorConfig(latency_s=0.4, jitter=0.0)) as sim:
        env = dict(
            os.environ,
            RUNNER_HOME=str(tmp_path / "home"),
            OPENAI_BASE_URL=sim.base_url,
            OPENAI_API_KEY="sk-test-resume",
        )
        env.pop("REDIS_URL", None)
        command = [
            sys.executable,
            "-m",
            "runner",
            "run",
            str(job),
            "-o",
            str(out),
            "--workers",
            "1",
            "--no-progress",
        ]
        # Output to a file, not a pipe nobody reads while we wait (a full pipe would block the run).
        err_path = tmp_path / "first.stderr"
        with (
            open(err_path, "w") as err,
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True) as first,
        ):
            try:
                wait_until(lambda: job_runs(sim.stats()) >= 3, 90, 0.05, "three conversations done")
                time.sleep(0.2)  # the third is in flight: the workers' grace lets it finish
                first.send_signal(signal.SIGINT)
                first.wait(timeout=60)
            finally:
                if first.poll() is None:
                    first.kill()
        stderr = err_path.read_text()
        assert first.returncode == 130, stderr
        partial = {r["conversation_id"]: r for r in read_jsonl(out)}
        assert 3 <= len(partial) < 10
        assert (
            f"interrupted: {len(partial)} of 10 conversations in {out}; run the same command again" in stderr
        )
        before = job_runs(sim.stats())

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert second.stdout.startswith("10 conversations: 0 passed, 0 failed, 0 errors, 10 without checks;")
        final = {r["conversation_id"]: r for r in read_jsonl(out)}
        assert sorted(final) == [f"resume/c{i:03d}#r0" for i in range(10)]
        assert len({r["batch_id"] for r in final.values()}) == 1  # the same batch, finished
        for conv, record in partial.items():
            assert final[conv] == record  # finished before the interrupt: not run again
        # Only the unfinished ones ran in the second run (plus, at most, the one cut off mid-way).
        assert (
            10 - len(partial)
            <= job_runs(sim.stats()) - before + (before - len(partial))
            <= 10 - len(partial) + 1
        )
    assert psutil.Process().children(recursive=True) == []
