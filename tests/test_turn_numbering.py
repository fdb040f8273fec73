"""One turn numbering for people (issue 17, item 3): messages, summaries, JUnit and HTML count turns
from 1; records keep the 0-based `index`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from junitparser import Error, JUnitXml
from test_engine_support import RULES, write_job

from runner.cli import main
from runner.simulator import RunningSimulator


def test_turn_numbering_is_1_based_in_every_message_and_0_based_in_records(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = sim_factory(rules=RULES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / ".runner"))
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    script = [{"user": "hello"}, {"user": "this is broken"}, {"user": "never sent"}]
    job = write_job(tmp_path, "chat", conversation_turns=script, limits={"max_attempts": 1})
    result = CliRunner().invoke(
        main, ["run", str(job), "--inline", "--no-progress", "-o", "out.jsonl", "--junit", "j.xml"]
    )
    assert result.exit_code == 1, result.output

    (record,) = [json.loads(line) for line in Path("out.jsonl").read_text().splitlines()]
    assert [t["index"] for t in record["turns"]] == [0, 1]
    assert record["error"].startswith("turn 2: ")
    assert "c00#r0: turn 2: error: HTTP 500" in result.output
    (case,) = next(iter(JUnitXml.fromfile("j.xml")))
    (error,) = case.result
    assert isinstance(error, Error)
    assert error.message.startswith("turn 2: error: ")
    assert error.text.startswith("turn 2: ")
    report = CliRunner().invoke(main, ["report", "out.jsonl"])
    assert "turn 2: error: " in report.output and "turn 1:" not in report.output
