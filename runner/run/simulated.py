"""`runner run --simulate`: the built-in simulator for the length of a run, answering by the job's rules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from runner.jobs import Job
from runner.settings import Settings
from runner.simulator import SimulatorConfig, start_simulator

SIMULATOR_API_KEY = "sk-simulator"
"""The key sent to the built-in simulator when the user has none set (it accepts any)."""


@contextlib.contextmanager
def simulated_environment(job: Job, settings: Settings) -> Iterator[Settings]:
    """Start the simulator with the job's `simulator:` block; yield the settings pointing at it
    (worker processes get them through their environment); stop it afterwards."""
    rules = job.simulator
    # Any model name: a job written for another server (vLLM, Ollama, ...) names its own models.
    config = SimulatorConfig(models=("*",))
    if rules is not None:
        latency = rules.latency_s if rules.latency_s is not None else config.latency_s
        config = SimulatorConfig(rules=rules, latency_s=latency, models=("*",))
    sim = start_simulator(config)
    try:
        yield settings.replace(base_url=sim.base_url, api_key=settings.api_key or SIMULATOR_API_KEY)
    finally:
        sim.stop()
