"""The assistants backend against the real simulator over HTTP, with the real SDK."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import openai
import pytest
from test_engine_support import RULES, SPEC, TOOL, AnswerDroppingProxy, make_task, turns

from runner.engine.backends import upsert as assistants_backend
from runner.engine.backends.assistants import AssistantsBackend
from runner.engine.conversation import prepare_tasks, run_conversation
from runner.engine.limits import Unlimited
from runner.engine.retry import Caller
from runner.simulator import RunningSimulator
from runner.tasks import Api, AssistantSpec, Limits


class _Job:
    limits = Limits()


@pytest.fixture(params=["stream", "poll"])
def wait_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RUNNER_ASSISTANTS_WAIT", request.param)
    return str(request.param)


def prepared(client: openai.OpenAI, **kwargs: Any) -> Any:
    return prepare_tasks(_Job(), [make_task(Api.ASSISTANTS, **kwargs)], Unlimited(), client=client)[0]


def routes(sim: RunningSimulator) -> dict[str, int]:
    return dict(sim.stats()["by_route"])


def test_backend_assistants_prepare_finds_creates_and_updates_across_pages(
    sim_factory: Callable[..., RunningSimulator],
    openai_client: Callable[..., openai.OpenAI],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory()
    client = openai_client(sim)
    backend = AssistantsBackend(client)
    monkeypatch.setattr(assistants_backend, "PAGE_SIZE", 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's, on every Assistants method
        for i in range(6):  # more than a page before ours
            client.beta.assistants.create(model="gpt-4o-mini", name=f"other-{i}")
    sim.reset_stats()

    created = backend.prepare([SPEC], Caller(Unlimited()))
    assert routes(sim) == {"GET /v1/assistants": 2, "POST /v1/assistants": 1}
    same = backend.prepare([SPEC], Caller(Unlimited()))
    assert same == created
    assert routes(sim)["POST /v1/assistants"] == 1  # found by name, unchanged: not written again

    changed = SPEC.model_copy(update={"instructions": "Be brief.", "temperature": 0.2})
    updated = backend.prepare([changed], Caller(Unlimited()))
    assert updated == created
    assert routes(sim)["POST /v1/assistants/{assistant_id}"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server = client.beta.assistants.retrieve(created["support"])
    assert (server.instructions, server.temperature, server.name) == ("Be brief.", 0.2, "Support Bot")
    assert server.tools[0].model_dump()["function"]["name"] == TOOL["function"]["name"]


def test_backend_assistants_prepare_uses_a_given_id_as_is(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory()
    backend = AssistantsBackend(openai_client(sim))
    ids = backend.prepare([AssistantSpec(key="a", name="A", model="m", id="asst_given")], Caller(Unlimited()))
    assert ids == {"a": "asst_given"}
    assert sim.stats()["requests_total"] == 0


def test_backend_assistants_multi_turn_with_tool_call_passes(
    wait_mode: str, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    client = openai_client(sim)
    task = prepared(client)
    sim.reset_stats()
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=client)

    assert (record["status"], record["passed"], record["error"]) == ("completed", True, None)
    assert record["thread_id"] is not None and record["thread_id"].startswith("thread_")
    assert [t["assistant"] for t in record["turns"]] == [
        "Refunds are accepted within 30 days.",
        'Your order is {"status": "shipped"}.',
        "You said: Thanks!",
    ]
    assert record["turns"][1]["tool_calls"] == [
        {"name": "lookup_order", "arguments": {"order_id": "A1"}, "output": '{"status": "shipped"}'}
    ]
    assert all(t["run_status"] == "completed" and t["run_id"].startswith("run_") for t in record["turns"])
    assert all(t["usage"]["total_tokens"] > 0 for t in record["turns"])
    assert record["usage"]["total_tokens"] == sum(t["usage"]["total_tokens"] for t in record["turns"])
    assert record["requests"] == sim.stats()["requests_total"]
    by_route = routes(sim)
    # Turn 0 creates thread + run in one request; later turns carry the message on the run create.
    assert by_route["POST /v1/threads/runs"] == 1
    assert by_route["POST /v1/threads/{thread_id}/runs"] == 2
    assert by_route["POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs"] == 1
    assert "POST /v1/threads/{thread_id}/messages" not in by_route
    if wait_mode == "stream":
        assert record["requests"] == 4  # one per run, one per tool round: the floor
    else:
        assert by_route["GET /v1/threads/{thread_id}/messages"] == 3
        assert by_route["GET /v1/threads/{thread_id}/runs/{run_id}"] >= 4


def test_backend_assistants_run_outliving_its_timeout_is_cancelled(
    wait_mode: str, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    client = openai_client(sim)
    task = prepared(client, turns=turns("hello", "be slow please", "never sent"), run_timeout_s=0.5)
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=client)

    assert (record["status"], record["passed"]) == ("cancelled", False)
    assert len(record["turns"]) == 2  # the third turn is not sent
    slow = record["turns"][1]
    assert slow["run_status"] == "cancelled"
    assert slow["error"] == f"run {slow['run_id']} still active after run_timeout_s=0.5s: cancelled"
    assert record["error"] == f"turn 2: {slow['error']}"
    assert routes(sim)["POST /v1/threads/{thread_id}/runs/{run_id}/cancel"] == 1
    server = client.beta.threads.runs.retrieve(slow["run_id"], thread_id=record["thread_id"])
    assert server.status == "cancelled"


def test_backend_assistants_tool_call_without_canned_output_is_an_error_and_cancels_the_run(
    wait_mode: str, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    client = openai_client(sim)
    task = prepared(client, turns=turns("Where is my order?", "never sent"), tool_outputs={})
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=client)

    assert (record["status"], record["passed"]) == ("error", False)
    assert (
        record["error"]
        == "turn 1: the assistant called tool 'lookup_order'; the conversation has no tool_outputs for it"
    )
    turn = record["turns"][0]
    assert turn["tool_calls"] == [{"name": "lookup_order", "arguments": {"order_id": "A1"}, "output": None}]
    assert turn["run_status"] == "cancelled"
    assert len(record["turns"]) == 1
    assert routes(sim)["POST /v1/threads/{thread_id}/runs/{run_id}/cancel"] == 1


def test_backend_assistants_failed_run_is_run_again_then_recorded_with_last_error(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    client = openai_client(sim)
    task = prepared(client, turns=turns("hello", "this is broken"), max_attempts=2)
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=client)

    assert (record["status"], record["passed"]) == ("failed", False)
    turn = record["turns"][1]
    assert turn["run_status"] == "failed"
    assert turn["error"].startswith(f"run {turn['run_id']} failed: server_error: ")
    # max_attempts runs for a transient server_error, then the failure is recorded.
    assert routes(sim)["POST /v1/threads/{thread_id}/runs"] == 2


def test_backend_assistants_unanswered_run_create_is_found_not_sent_twice(
    wait_mode: str, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    task = prepared(openai_client(sim))
    proxy = AnswerDroppingProxy(sim.port, drop="POST /v1/threads/thread_")
    try:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-test", max_retries=0)
        sim.reset_stats()
        record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=client)
    finally:
        proxy.stop()

    assert proxy.dropped == 1
    assert (record["status"], record["passed"]) == ("completed", True)
    by_route = routes(sim)
    # The turn-1 run was created once although its answer was lost; the runs list found it.
    assert by_route["POST /v1/threads/{thread_id}/runs"] == 2
    assert by_route["GET /v1/threads/{thread_id}/runs"] == 1
    runs = openai_client(sim).beta.threads.runs.list(record["thread_id"], limit=100)
    assert len(runs.data) == 3
