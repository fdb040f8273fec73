"""Streaming (wire-protocol §9) with the SDK's own helpers: Assistants runs through
`runs.stream` / AssistantEventHandler, Responses through `responses.create(stream=True)` and
`responses.stream()`, Chat through `stream=True` and `chat.completions.stream()`. Every event is
schema-checked by the `openai_client` fixture; a streamed turn must cost one request."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from openai import AssistantEventHandler
from typing_extensions import override

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
RULES = {
    "rules": [
        {
            "when": "(?i)order",
            "call": "lookup_order",
            "arguments": {"order_id": "A1"},
            "then": "Your order is {{tool_output}}.",
        },
        {"when": "(?i)explode", "fail": True},
    ],
    "default": "You said: {{message}}",
}
RUN_EVENTS = [
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
]
RUN_END = ["thread.message.completed", "thread.run.step.completed", "thread.run.completed"]


class Collector(AssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.deltas: list[tuple[float, str]] = []
        self.tool_calls: list[str] = []

    @override
    def on_event(self, event) -> None:
        self.events.append(event.event)

    @override
    def on_text_delta(self, delta, snapshot) -> None:
        self.deltas.append((time.monotonic(), delta.value))

    @override
    def on_tool_call_created(self, tool_call) -> None:
        self.tool_calls.append(tool_call.function.name)


@pytest.fixture
def sim(sim_factory):
    return sim_factory(rules=RULES, latency_s=0.2, jitter=0.0)


@pytest.fixture
def client(sim, openai_client):
    return openai_client(sim)


@pytest.fixture
def assistant(client):
    return client.beta.assistants.create(model="gpt-4o-mini", tools=TOOLS)


def _deduped(events: list[str]) -> list[str]:
    return [e for e in events if e != "thread.message.delta"]


def test_simulator_stream_run_with_event_handler_costs_one_request(client, assistant, sim):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello there"}])
    sim.reset_stats()
    handler = Collector()
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=handler
    ) as s:
        s.until_done()
        final = s.get_final_run()
        messages = s.get_final_messages()
    assert _deduped(handler.events) == RUN_EVENTS + RUN_END
    assert "".join(d for _, d in handler.deltas) == "You said: hello there"
    assert messages[0].content[0].text.value == "You said: hello there"
    assert final.status == "completed" and final.usage.total_tokens > 0
    stats = sim.stats()
    assert stats["requests_total"] == 1 and stats["by_route"] == {"POST /v1/threads/{thread_id}/runs": 1}
    assert client.traffic.checked["[DONE]"] == 1


def test_simulator_stream_is_paced_by_the_run(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "one two three four five six"}])
    handler = Collector()
    started = time.monotonic()
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=handler
    ) as s:
        s.until_done()
    elapsed = time.monotonic() - started
    assert elapsed >= 0.15  # the stream stays open while the run is in progress
    stamps = [t for t, _ in handler.deltas]
    assert len(stamps) >= 3 and stamps[-1] - stamps[0] >= 0.05  # deltas spread over time, not one burst


def test_simulator_stream_requires_action_then_submit_stream(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "where is my order"}])
    handler = Collector()
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=handler
    ) as s:
        s.until_done()
        run = s.get_final_run()
    assert handler.events[-1] == "thread.run.requires_action" and run.status == "requires_action"
    assert handler.tool_calls == ["lookup_order"]
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    second = Collector()
    with client.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "shipped"}],
        event_handler=second,
    ) as s:
        s.until_done()
    assert second.events[0] == "thread.run.queued" and second.events[-1] == "thread.run.completed"
    assert "".join(d for _, d in second.deltas) == "Your order is shipped."


def test_simulator_stream_failing_run_ends_failed_then_done(client, assistant):
    events = list(
        client.beta.threads.create_and_run(
            assistant_id=assistant.id,
            thread={"messages": [{"role": "user", "content": "explode"}]},
            stream=True,
        )
    )
    names = [e.event for e in events]
    assert names[0] == "thread.created" and names[1] == "thread.run.created"
    assert names[-1] == "thread.run.failed" and events[-1].data.last_error.code == "server_error"
    assert "thread.message.incomplete" in names and "thread.run.step.failed" in names
    assert client.traffic.checked["[DONE]"] == 1  # `done` closes the stream after the terminal event


def test_simulator_stream_sees_a_cancel_from_another_client(sim_factory, openai_client):
    sim = sim_factory(latency_s=1.0, jitter=0.0)
    client, other = openai_client(sim), openai_client(sim)
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "long story"}])
    handler = Collector()

    def cancel_soon() -> None:
        time.sleep(0.2)
        run = other.beta.threads.runs.list(thread.id).data[0]
        other.beta.threads.runs.cancel(run.id, thread_id=thread.id)

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    started = time.monotonic()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=a.id, event_handler=handler) as s:
        s.until_done()
    canceller.join()
    assert time.monotonic() - started < 0.8  # ended by the cancel, not by the 1 s run
    assert handler.events[-1] == "thread.run.cancelled" and "thread.run.cancelling" in handler.events
    assert "thread.run.step.cancelled" in handler.events and "thread.message.incomplete" in handler.events


def test_simulator_responses_stream_events(client, sim):
    sim.reset_stats()
    events = list(client.responses.create(model="gpt-4o-mini", input="hello you", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "You said: hello you"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.total_tokens > 0
    assert sim.stats()["requests_total"] == 1


def test_simulator_responses_stream_helper_and_function_call(client):
    with client.responses.stream(model="gpt-4o-mini", input="say hi") as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert text == final.output_text == "You said: say hi"
    tools = [{"type": "function", "name": "lookup_order", "parameters": {"type": "object"}, "strict": False}]
    with client.responses.stream(model="gpt-4o-mini", input="my order?", tools=tools) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    (call,) = final.output
    assert (call.type, call.name, call.arguments) == ("function_call", "lookup_order", '{"order_id":"A1"}')


def test_simulator_responses_stream_failure_is_response_failed(client):
    events = list(client.responses.create(model="gpt-4o-mini", input="explode", stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.error.code == "server_error"


def test_simulator_chat_stream_with_usage_and_done(client, sim):
    sim.reset_stats()
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream me"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == (
        chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    )
    assert all(c.usage is None for c in chunks[:-1])
    assert client.traffic.checked["[DONE]"] == 1 and sim.stats()["requests_total"] == 1


def test_simulator_chat_stream_tool_call_with_helper(client):
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "order?"}], tools=tools
    ) as s:
        final = s.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "lookup_order"
    assert choice.message.tool_calls[0].function.arguments == '{"order_id":"A1"}'


def test_simulator_chat_stream_failure_raises_api_error(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "explode"}], stream=True
    )
    with pytest.raises(openai.APIError) as e:
        list(stream)
    assert e.value.type == "server_error"


def test_simulator_stop_ends_open_streams_with_a_wrapped_error(sim_factory, openai_client):
    sim = sim_factory(latency_s=5.0)
    client = openai_client(sim)
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "a long one"}])
    errors: list[openai.APIError] = []

    def consume() -> None:
        try:
            with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=a.id) as s:
                s.until_done()
        except openai.APIError as e:
            errors.append(e)

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(0.3)
    started = time.monotonic()
    sim.stop()
    reader.join(5)
    assert time.monotonic() - started < 2 and not reader.is_alive()
    assert len(errors) == 1 and errors[0].type == "server_error"
    assert errors[0].body["message"] == "The server is shutting down. Please retry your request."
