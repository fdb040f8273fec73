"""The sample job files in jobs/ validate and pass every check when run against the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.jobs import expand, load_job
from runner.run.job import RunOptions, run_job

JOBS = Path(__file__).resolve().parent.parent / "jobs"
SAMPLES = sorted(JOBS.glob("*.yaml"))


def test_jobfile_samples_present() -> None:
    assert [p.name for p in SAMPLES] == [
        "bulk-eval.yaml",
        "graded.yaml",
        "quickstart.yaml",
        "regression-suite.yaml",
    ]


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_jobfile_samples_validate_offline(path: Path) -> None:
    job = load_job(path)
    assert job.simulator is not None and job.simulator.rules
    assert job.simulator.latency_s is not None and 0.05 <= job.simulator.latency_s <= 0.3
    assert job.warnings == []
    assert expand(job)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_jobfile_samples_pass_against_simulator(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    options = RunOptions(
        output=str(tmp_path / "out.jsonl"), simulate=True, inline=True, progress=False, workers=4
    )
    outcome = run_job(str(path), options)
    failed = [
        (r["conversation_id"], [c for t in r["turns"] for c in t["checks"] if not c["passed"]], r["error"])
        for r in outcome.records
        if r["passed"] is not True
    ]
    assert failed == []
    assert len(outcome.records) == len(expand(load_job(path)))
