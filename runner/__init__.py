"""assistant-runner: scripted conversations against OpenAI-style assistants, at scale.

The Python API (the CLI is a thin layer over it)::

    from runner import RunOptions, run_job, read_records

    outcome = run_job("jobs/quickstart.yaml", RunOptions(simulate=True, inline=True))
    for record in outcome.records:
        print(record["conversation_id"], record["status"], record["passed"])

The flow, one folder per layer (see README, Architecture): `jobs/` loads and expands a job file
into tasks, `engine/` carries one conversation through a backend, `queue/` spreads conversations
over workers through Redis, `run/` is `runner run`, `reports/` reads transcripts back, and
`records.py` is the transcript record itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner.errors import (
    BackendError,
    FatalAPIError,
    Interrupted,
    JobFileError,
    Problem,
    QueueError,
    RunnerError,
    ServerUnavailableError,
    SimulatorError,
    UnknownBatchError,
    UsageError,
)
from runner.records import Outcome, Record, outcome, read_records, write_records
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.jobs import expand, load_job
    from runner.run import RunOptions, RunOutcome, run_job
    from runner.simulator import start_simulator

__version__ = "0.1.0"

# Lazy: `import runner` (every CLI command does) must not load the engine, the SDK or the simulator.
_LAZY = {
    "load_job": "runner.jobs",
    "expand": "runner.jobs",
    "run_job": "runner.run",
    "RunOptions": "runner.run",
    "RunOutcome": "runner.run",
    "start_simulator": "runner.simulator",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "BackendError",
    "FatalAPIError",
    "Interrupted",
    "JobFileError",
    "Outcome",
    "Problem",
    "QueueError",
    "Record",
    "RunOptions",
    "RunOutcome",
    "RunnerError",
    "ServerUnavailableError",
    "Settings",
    "SimulatorError",
    "UnknownBatchError",
    "UsageError",
    "expand",
    "load_job",
    "outcome",
    "read_records",
    "run_job",
    "start_simulator",
    "write_records",
]
