"""The embedded Redis of a `runner run` found from another terminal: real processes, one directory.

A `runner run` without REDIS_URL writes its embedded Redis's URL to a 0600 file while it runs;
`runner status` and `runner view` started meanwhile (same RUNNER_HOME) read that batch instead of
starting an empty Redis of their own; the file is gone when the run ends."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_queue_support import FAKE_KEY, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "OPENAI_BASE_URL")}
    env.update(
        RUNNER_HOME=str(tmp_path / "home"),
        OPENAI_API_KEY=FAKE_KEY,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    )
    return env


def _runner(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_and_view_find_the_embedded_redis_of_a_running_run(tmp_path: Path) -> None:
    job = tmp_path / "slow.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "name": "slow-embedded",
                "api": "chat",
                "model": "gpt-4o-mini",
                "assistants": {"bot": {"instructions": "Answer."}},
                "conversations": [{"id": f"c{i}", "turns": [{"user": f"hello {i}"}]} for i in range(6)],
                "limits": {"concurrency": 1},
                "simulator": {"latency_s": 1.0},
            }
        )
    )
    env = _env(tmp_path)
    url_file = tmp_path / "home" / "redis" / "url"
    with open(tmp_path / "run.log", "w") as log:  # the child keeps its own copy of the descriptor
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runner",
                "run",
                str(job),
                "--simulate",
                "--workers",
                "1",
                "-o",
                str(tmp_path / "out.jsonl"),
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    view = None
    try:
        wait_until(url_file.exists, 60, what="the run's embedded Redis URL file")
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        status = wait_until(
            lambda: (lambda r: r if "slow-embedded-" in r.stdout else None)(
                _runner("status", env=env, cwd=tmp_path)
            ),
            30,
            0.5,
            "the batch in `runner status`",
        )
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if line.startswith("slow-embedded-"))
        assert row.split()[1:3] in (["slow-embedded", "queued"], ["slow-embedded", "running"])
        port = _free_port()
        view = subprocess.Popen(
            [sys.executable, "-m", "runner", "view", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def batches() -> list[dict[str, object]] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/batches", timeout=5) as r:
                    return json.load(r)["batches"] or None
            except OSError:
                return None

        (batch,) = wait_until(batches, 30, 0.3, "the view to answer")
        assert batch["job"] == "slow-embedded" and batch["total"] == 6
        assert run.wait(120) == 0, (tmp_path / "run.log").read_text()
    finally:
        for proc in (view, run):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)
    assert not url_file.exists()  # the run removed it when it stopped its Redis


def test_run_with_view_serves_the_batch_while_it_runs(tmp_path: Path) -> None:
    """`runner run --view=PORT`: the web view of that run's (embedded) Redis, up while it runs."""
    job = tmp_path / "viewed.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "name": "viewed-run",
                "api": "chat",
                "model": "gpt-4o-mini",
                "assistants": {"bot": {"instructions": "Answer."}},
                "conversations": [{"id": f"c{i}", "turns": [{"user": f"hello {i}"}]} for i in range(4)],
                "limits": {"concurrency": 1},
                "simulator": {"latency_s": 1.0},
            }
        )
    )
    port = _free_port()
    cmd = [sys.executable, "-m", "runner", "run", str(job), "--simulate", "--workers", "1", f"--view={port}"]
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen(cmd, env=_env(tmp_path), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:

            def page() -> str | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                        return str(answer.read().decode())
                except OSError:
                    return None

            html = wait_until(lambda: (p := page()) and "viewed-run" in p and p, 60, what="the view")
            assert "viewed-run" in html
            assert run.wait(90) == 0
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert f"runner view of this run on http://127.0.0.1:{port}/" in (tmp_path / "run.log").read_text()
