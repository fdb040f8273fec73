"""`runner gc` and the retention of finished batches (issue 17, item 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_engine_support import write_job

from runner.cli import main
from runner.queue.retention import parse_duration


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / ".runner"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REDIS_URL", "RUNNER_RETENTION"):
        monkeypatch.delenv(name, raising=False)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def batch_of(path: Path) -> str:
    return str(json.loads(path.read_text().splitlines()[0])["batch_id"])


def test_gc_drops_finished_batches_and_run_expires_them_after_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_job(tmp_path, "chat", conversations=2, conversation_turns=[{"user": "hello"}])
    run = ["run", str(job), "--simulate", "--workers", "1", "--no-progress"]
    assert invoke(*run, "-o", "a.jsonl").exit_code == 0
    first = batch_of(tmp_path / "a.jsonl")
    assert invoke(*run, "-o", "b.jsonl").exit_code == 0  # within the default retention: both kept
    second = batch_of(tmp_path / "b.jsonl")
    status = invoke("status").output
    assert first in status and second in status

    monkeypatch.setenv("RUNNER_RETENTION", "0")  # the next run drops every finished batch first
    assert invoke(*run, "-o", "c.jsonl").exit_code == 0
    status = invoke("status").output
    assert first not in status and second not in status and batch_of(tmp_path / "c.jsonl") in status

    gc = invoke("gc", "--older-than", "0")
    assert gc.exit_code == 0, gc.output
    assert gc.output == (
        "removed 1 finished batch older than 0; kept 0 unfinished; compacting the append-only file\n"
    )
    assert invoke("status").output.startswith("no batches")
    gone = invoke("collect", first)
    assert gone.exit_code == 2


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800)]
)
def test_gc_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_gc_bad_duration_exits_2() -> None:
    result = invoke("gc", "--older-than", "soon")
    assert result.exit_code == 2
    assert "not a duration: 'soon'" in result.stderr
