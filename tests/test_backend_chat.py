"""The chat backend (Chat Completions, history kept by us) against the real simulator over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from test_engine_support import RULES, make_task, turns

from runner.engine.conversation import run_conversation
from runner.engine.limits import Unlimited
from runner.simulator import RunningSimulator
from runner.tasks import Api


@pytest.mark.parametrize("stream", ["0", "1"])
def test_backend_chat_multi_turn_with_tool_call_passes(
    stream: str,
    sim_factory: Callable[..., RunningSimulator],
    openai_client: Callable[..., openai.OpenAI],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNNER_CHAT_STREAM", stream)
    sim = sim_factory(rules=RULES)
    record = run_conversation(
        make_task(Api.CHAT), batch_id="b1", limiter=Unlimited(), client=openai_client(sim)
    )

    assert (record["status"], record["passed"], record["error"]) == ("completed", True, None)
    assert record["thread_id"] is None
    assert [t["assistant"] for t in record["turns"]] == [
        "Refunds are accepted within 30 days.",
        'Your order is {"status": "shipped"}.',
        "You said: Thanks!",
    ]
    assert record["turns"][1]["tool_calls"] == [
        {"name": "lookup_order", "arguments": {"order_id": "A1"}, "output": '{"status": "shipped"}'}
    ]
    assert all(t["usage"]["total_tokens"] > 0 for t in record["turns"])
    # One request per reply, one more for the tool round: the floor.
    assert record["requests"] == sim.stats()["requests_total"] == 4


def test_backend_chat_sends_the_whole_history_each_turn(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    record = run_conversation(
        make_task(Api.CHAT, turns("one", "two", "three")),
        batch_id="b1",
        limiter=Unlimited(),
        client=openai_client(sim),
    )
    prompts = [t["usage"]["prompt_tokens"] for t in record["turns"]]
    assert prompts[0] < prompts[1] < prompts[2]  # each request carries everything said so far


def test_backend_chat_reply_outliving_its_timeout_is_abandoned(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    task = make_task(Api.CHAT, turns("hello", "be slow please", "never sent"), run_timeout_s=0.5)
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=openai_client(sim))

    assert (record["status"], record["passed"]) == ("cancelled", False)
    assert len(record["turns"]) == 2
    assert record["turns"][1]["run_status"] == "cancelled"
    assert record["turns"][1]["error"] == "no reply within run_timeout_s=0.5s: request abandoned"
    assert sim.stats()["by_route"]["POST /v1/chat/completions"] == 2  # not sent again


def test_backend_chat_missing_tool_output_is_an_error(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules=RULES)
    task = make_task(Api.CHAT, turns("Where is my order?", "never sent"), tool_outputs={})
    record = run_conversation(task, batch_id="b1", limiter=Unlimited(), client=openai_client(sim))
    assert (record["status"], record["passed"]) == ("error", False)
    assert (
        record["error"]
        == "turn 1: the assistant called tool 'lookup_order'; the conversation has no tool_outputs for it"
    )
    assert len(record["turns"]) == 1
