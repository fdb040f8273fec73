"""`runner retry BATCH` without a shared Redis runs the retried conversations itself, and `collect`
says when a batch is not finished (issue 17, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_engine_support import write_job

from runner.cli import main


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / ".runner"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def attempts(path: Path) -> list[int]:
    return [json.loads(line)["attempts"] for line in path.read_text().splitlines()]


def test_retry_here_runs_the_failed_conversations_on_the_embedded_redis(tmp_path: Path) -> None:
    script = [{"user": "hello", "expect": [{"contains": "not in the reply"}]}]
    job = write_job(tmp_path, "chat", conversations=2, conversation_turns=script)
    first = invoke("run", str(job), "--simulate", "--workers", "1", "--no-progress", "-o", "out.jsonl")
    assert first.exit_code == 1, first.output
    assert attempts(tmp_path / "out.jsonl") == [1, 1]
    batch = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["batch_id"]

    again = invoke("retry", batch, "--simulate", "--workers", "1", "--no-progress")
    assert again.exit_code == 1, again.output  # ran, and the check still fails
    assert again.stdout.startswith(
        f"2 conversations of batch {batch} enqueued again\n2 conversations: 0 passed, 2 failed"
    )
    assert attempts(tmp_path / "out.jsonl") == [2, 2]

    # Enqueued only, nobody runs them: collect writes what it has and says the batch is unfinished.
    queued = invoke("retry", batch, "--workers", "0")
    assert queued.exit_code == 0, queued.output
    collected = invoke("collect", batch)
    assert collected.exit_code == 1
    assert collected.stderr == (
        f"warning: batch {batch} is not finished (2 conversations queued or running);"
        " records written for them are from before they were retried\n"
    )
