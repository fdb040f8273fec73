"""The main job, `runner run FILE`: validate, (simulate), execute inline or on the queue, write, report.

The command in `runner.cli.run` only parses options and prints; everything it does is here so the
Python API (`from runner.pipeline import run_job`) behaves exactly like the CLI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.transcripts import Record

SIMULATOR_API_KEY = "sk-simulator"
"""The key sent to the built-in simulator when the user has none set (it accepts any)."""


@dataclass(frozen=True)
class RunOptions:
    output: str | None = None
    workers: int = 4
    simulate: bool = False
    redis_url: str | None = None
    inline: bool = False
    junit: str | None = None
    html: str | None = None
    fail_under: float | None = None
    progress: bool = True


@dataclass
class RunOutcome:
    batch_id: str
    output: Path
    records: list[Record] = field(default_factory=list)
    wall_s: float = 0.0


@contextlib.contextmanager
def simulated_environment(job_path: str) -> Iterator[str]:
    """Start the built-in simulator with the job's `simulator:` block; point the SDK (and every
    worker process we spawn, which inherits the environment) at it; stop it afterwards."""
    from runner.jobfile import load_job
    from runner.simulator import SimulatorConfig, start_simulator

    job = load_job(job_path)
    rules = job.simulator
    config = SimulatorConfig(rules=rules) if rules is not None else SimulatorConfig()
    if rules is not None and rules.latency_s is not None:
        config = SimulatorConfig(rules=rules, latency_s=rules.latency_s)
    sim = start_simulator(config)
    saved = {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    os.environ["OPENAI_BASE_URL"] = sim.base_url
    os.environ.setdefault("OPENAI_API_KEY", SIMULATOR_API_KEY)
    try:
        yield sim.base_url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sim.stop()


def run_job(job_path: str, options: RunOptions) -> RunOutcome:
    """Run every conversation of the job file once and write its JSONL; returns what happened."""
    from runner.jobfile import expand, load_job

    job = load_job(job_path)  # raises JobFileError (exit 2) before anything is sent
    tasks = expand(job)
    with contextlib.ExitStack() as stack:
        if options.simulate:
            stack.enter_context(simulated_environment(job_path))
        if options.inline:
            from runner.engine import run_inline

            outcome = run_inline(job, tasks, options)
        else:
            from runner.queue import run_batch

            outcome = run_batch(job, tasks, options)
    return outcome
