"""Shared fixtures: running simulators, and OpenAPI validation of everything they send.

- `sim_factory(**config) -> RunningSimulator`: start a simulator (SimulatorConfig fields as keyword
  arguments; `rules` may be a dict in the job file's `simulator:` shape). Every simulator started
  is stopped at teardown. Defaults here: latency_s=0.05 (fast tests).
- `simulator`: one running simulator with those defaults.
- `openai_client(sim, api_key="sk-test", **kw)`: a real `openai.OpenAI` on `sim` (max_retries=0)
  whose every JSON body and stream event is validated against the OpenAPI subset; the test fails
  at teardown if anything did not match.
- `openai_schema`: the loaded OpenAPI subset (`.validate(name, obj)`, `.errors(name, obj)`);
  `validate_against(name, obj)` as a fixture too (also importable from tests/openapi.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import openapi` from any test module

from openapi import OpenAPISchema, TrafficValidator, checked_client, load_schema

from runner.simulator import RunningSimulator, SimulatorConfig, SimulatorRules, start_simulator

TEST_LATENCY_S = 0.05

# Every simulator of the suite, in this process or in a child, checks what it answers against
# OpenAI's response schemas (requests are always checked: a bad one is a 400).
os.environ.setdefault("RUNNER_SIMULATOR_VALIDATE", "1")


def missing_component(what: str) -> None:
    """A real component (Chromium, a model server, ...) is not here: in CI (`.ci/run` sets
    RUNNER_REQUIRE_COMPONENTS=1) the test fails, so a green run never hides a skipped check;
    elsewhere it is skipped, saying why."""
    if os.environ.get("RUNNER_REQUIRE_COMPONENTS"):
        pytest.fail(f"required component missing: {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., RunningSimulator]]:
    started: list[RunningSimulator] = []

    audited: list[RunningSimulator] = []

    def make(*, audit_clean: bool = True, **config: Any) -> RunningSimulator:
        """`audit_clean`: fail the test at teardown if the simulator sent anything off-schema."""
        rules = config.pop("rules", None)
        if isinstance(rules, dict):
            rules = SimulatorRules.model_validate(rules)
        if rules is not None:
            config["rules"] = rules
        config.setdefault("latency_s", TEST_LATENCY_S)
        sim = start_simulator(SimulatorConfig(**config))
        started.append(sim)
        if audit_clean:
            audited.append(sim)
        return sim

    yield make
    violations = []
    for sim in started:
        if sim in audited:
            stats = sim.stats()
            violations += stats.get("schema_violation_samples", []) if stats.get("schema_violations") else []
        sim.stop()
    assert not violations, f"the simulator answered off-schema: {violations}"


@pytest.fixture
def simulator(sim_factory: Callable[..., RunningSimulator]) -> RunningSimulator:
    return sim_factory()


@pytest.fixture
def openai_client() -> Iterator[Callable[..., openai.OpenAI]]:
    validators: list[TrafficValidator] = []
    clients: list[openai.OpenAI] = []

    def make(sim: RunningSimulator, api_key: str = "sk-test", **kwargs: Any) -> openai.OpenAI:
        client, validator = checked_client(sim.base_url, api_key, **kwargs)
        validators.append(validator)
        clients.append(client)
        client.traffic = validator  # type: ignore[attr-defined]
        return client

    yield make
    for c in clients:
        c.close()
    for v in validators:
        v.assert_clean()


@pytest.fixture(scope="session")
def openai_schema() -> OpenAPISchema:
    return load_schema()


@pytest.fixture(scope="session")
def validate_against(openai_schema: OpenAPISchema) -> Callable[[str, Any], None]:
    return openai_schema.validate
