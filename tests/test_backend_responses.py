"""The responses backend (Conversations + Responses) against the real simulator over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from test_engine_support import RULES, AnswerDroppingProxy, make_task, turns

from runner.engine.backends.responses import response_tool
from runner.engine.conversation import run_conversation
from runner.engine.limits import Unlimited
from runner.simulator import RunningSimulator
from runner.tasks import Api


@pytest.fixture(params=["stream", "poll"])
def wait_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RUNNER_RESPONSES_WAIT", request.param)
    return str(request.param)


def test_backend_responses_converts_function_tools_to_the_responses_shape() -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
    }
    assert response_tool(tool) == {
        "type": "function",
        "name": "f",
        "description": "d",
        "parameters": {"type": "object"},
        "strict": False,
    }
    assert response_tool({"type": "function", "function": {"name": "g", "strict": True}}) == {
        "type": "function",
        "name": "g",
        "parameters": None,
        "strict": True,
    }


def test_backend_responses_multi_turn_with_tool_call_passes(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    client = openai_client(sim)
    record = run_conversation(make_task(Api.RESPONSES), batch_id="b1", limiter=Unlimited(), client=client)

    assert (record["status"], record["passed"], record["error"]) == ("completed", True, None)
    assert record["thread_id"] is not None and record["thread_id"].startswith("conv_")
    assert [t["assistant"] for t in record["turns"]] == [
        "Refunds are accepted within 30 days.",
        'Your order is {"status": "shipped"}.',
        "You said: Thanks!",
    ]
    assert record["turns"][1]["tool_calls"] == [
        {"name": "lookup_order", "arguments": {"order_id": "A1"}, "output": '{"status": "shipped"}'}
    ]
    assert all(t["run_id"].startswith("resp_") and t["usage"]["total_tokens"] > 0 for t in record["turns"])
    stats = sim.stats()
    assert record["requests"] == stats["requests_total"]
    by_route = stats["by_route"]
    assert by_route["POST /v1/conversations"] == 1
    assert by_route["POST /v1/responses"] == 4  # three turns, one tool round, each streamed
    assert record["requests"] == 5
    items = client.conversations.items.list(record["thread_id"], limit=100, order="asc").data
    assert [i.type for i in items].count("function_call_output") == 1


def test_backend_responses_background_polling_answers_tool_calls(
    sim_factory: Callable[..., RunningSimulator],
    openai_client: Callable[..., openai.OpenAI],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNNER_RESPONSES_WAIT", "poll")
    sim = sim_factory(rules=RULES)
    task = make_task(Api.RESPONSES, turns("Where is my order?"))
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=openai_client(sim))
    assert (record["status"], record["passed"]) == ("completed", None)
    assert record["turns"][0]["assistant"] == 'Your order is {"status": "shipped"}.'
    by_route = sim.stats()["by_route"]
    assert by_route["POST /v1/responses"] == 2
    assert by_route["GET /v1/responses/{response_id}"] >= 2
    assert record["requests"] == sim.stats()["requests_total"]


def test_backend_responses_response_outliving_its_timeout_is_cancelled(
    wait_mode: str, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    client = openai_client(sim)
    task = make_task(Api.RESPONSES, turns("hello", "be slow please", "never sent"), run_timeout_s=0.5)
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=client)

    assert (record["status"], record["passed"]) == ("cancelled", False)
    assert len(record["turns"]) == 2
    slow = record["turns"][1]
    assert slow["run_status"] == "cancelled"
    assert slow["error"] == f"response {slow['run_id']} still active after run_timeout_s=0.5s"
    assert sim.stats()["by_route"]["POST /v1/responses/{response_id}/cancel"] == 1
    assert client.responses.retrieve(slow["run_id"]).status == "cancelled"


def test_backend_responses_failed_response_is_asked_again_then_recorded(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    task = make_task(Api.RESPONSES, turns("this is broken", "never sent"), max_attempts=2)
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=openai_client(sim))
    assert (record["status"], record["passed"]) == ("failed", False)
    assert sim.stats()["by_route"]["POST /v1/responses"] == 2  # a server_error is asked again, once
    turn = record["turns"][0]
    assert turn["run_status"] == "failed"
    assert turn["error"].startswith(f"response {turn['run_id']} failed: server_error: ")


def test_backend_responses_missing_tool_output_is_an_error(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    task = make_task(Api.RESPONSES, turns("Where is my order?"), tool_outputs={})
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=openai_client(sim))
    assert (record["status"], record["passed"]) == ("error", False)
    assert "no tool_outputs" in (record["error"] or "")
    assert record["turns"][0]["tool_calls"][0]["output"] is None


def test_backend_responses_unanswered_create_takes_the_reply_from_the_conversation(
    wait_mode: str, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    proxy = AnswerDroppingProxy(sim.port, drop="POST /v1/responses ")
    try:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-test", max_retries=0)
        task = make_task(Api.RESPONSES, turns("I want a refund", "Thanks!"))
        record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=client)
    finally:
        proxy.stop()
    assert proxy.dropped == 1
    assert record["status"] == "completed"
    assert [t["assistant"] for t in record["turns"]] == [
        "Refunds are accepted within 30 days.",
        "You said: Thanks!",
    ]
    by_route = sim.stats()["by_route"]
    assert by_route["POST /v1/responses"] == 2  # the lost one was not asked again
    items = openai_client(sim).conversations.items.list(record["thread_id"], limit=100, order="asc").data
    assert [i.role for i in items if i.type == "message"] == ["user", "assistant", "user", "assistant"]
