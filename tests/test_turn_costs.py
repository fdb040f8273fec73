"""Retries are visible per turn (issue 17, item 2): requests, retries with their causes, limiter
wait, and a server-side latency that `max_latency_ms` checks instead of the wall time."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from test_engine_support import RULES, make_task, turns

from runner.engine.conversation import run_conversation
from runner.engine.limits import LocalLimiter, Unlimited
from runner.settings import Settings
from runner.simulator import RunningSimulator
from runner.tasks import Api, CheckSpec


def settings_for(sim: RunningSimulator) -> Settings:
    return Settings.from_env({"OPENAI_BASE_URL": sim.base_url, "OPENAI_API_KEY": "sk-test"})


def test_turn_costs_record_retries_with_causes_and_check_the_server_latency(
    sim_factory: Callable[..., RunningSimulator], caplog: pytest.LogCaptureFixture
) -> None:
    sim = sim_factory(rules=RULES, fault_rate=0.4, seed=3)
    fast = (CheckSpec(type="max_latency_ms", value=400),)  # below one retry back-off (0.5 s)
    task = make_task(Api.CHAT, turns(*[f"hello {i}" for i in range(8)], expect=fast), max_attempts=8)
    with caplog.at_level(logging.INFO, logger="runner.engine.retry"):
        record = run_conversation(task, batch_id="b", limiter=Unlimited(), settings=settings_for(sim))

    assert record["status"] == "completed", record["error"]
    got = record["turns"]
    assert sum(t["requests"] for t in got) == record["requests"] == sim.stats()["requests_total"]
    retried = [t for t in got if t["retries"]]
    assert retried, "the seed gives faults: some turn must have been retried"
    for t in got:
        assert t["requests"] == 1 + len(t["retries"])  # chat: one request per attempt
        assert {r["cause"] for r in t["retries"]} <= {"500", "503", "dropped"}
        assert t["limiter_wait_ms"] == 0
    for t in retried:
        waited = sum(r["wait_ms"] for r in t["retries"])
        assert waited >= 375  # a back-off of at least 0.5 s less 25 % jitter
        assert t["latency_ms"] > 400 and t["latency_ms"] >= waited > t["server_latency_ms"]
        assert t["checks"][0]["passed"], t  # the wall time would fail it; the server was fast
    lines = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("retry ") for m in lines) == sum(len(t["retries"]) for t in got)


def test_turn_costs_record_the_time_spent_waiting_for_the_limiter(
    sim_factory: Callable[..., RunningSimulator],
) -> None:
    sim = sim_factory(rules=RULES)
    limiter = LocalLimiter()
    limiter.cooldown(1.0)  # as after a 429 elsewhere: nobody sends for a second
    task = make_task(Api.CHAT, turns("one", "two"))
    record = run_conversation(task, batch_id="b", limiter=limiter, settings=settings_for(sim))

    assert record["status"] == "completed", record["error"]
    first, second = record["turns"]
    assert (first["requests"], first["retries"], second["requests"], second["retries"]) == (1, [], 1, [])
    assert first["limiter_wait_ms"] >= 300 and second["limiter_wait_ms"] < 100
    assert first["server_latency_ms"] <= first["latency_ms"] - first["limiter_wait_ms"]
