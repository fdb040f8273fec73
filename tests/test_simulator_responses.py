"""Conversations + Responses and Chat Completions against the simulator with the real SDK:
foreground, background (poll, cancel), function calls answered by tool outputs, errors. Every
body is schema-checked by the `openai_client` fixture."""

from __future__ import annotations

import time

import openai
import pytest

RULES = {
    "rules": [
        {
            "when": "(?i)order",
            "call": "lookup_order",
            "arguments": {"order_id": "A1"},
            "then": "Your order is {{tool_output}}.",
        },
        {"when": "(?i)refund", "reply": "Refunds are accepted within 30 days."},
        {"when": "(?i)explode", "fail": True},
    ],
    "default": "You said: {{message}}",
}
RESPONSE_TOOLS = [
    {
        "type": "function",
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {}},
        "strict": False,
    }
]
CHAT_TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]


@pytest.fixture
def sim(sim_factory):
    return sim_factory(rules=RULES)


@pytest.fixture
def client(sim, openai_client):
    return openai_client(sim)


def _wait(client, response):
    while response.status in ("queued", "in_progress"):
        time.sleep(0.02)
        response = client.responses.retrieve(response.id)
    return response


def test_simulator_conversation_and_items(client):
    conv = client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "first"}], metadata={"topic": "demo"}
    )
    assert (
        conv.id.startswith("conv_") and conv.object == "conversation" and conv.metadata == {"topic": "demo"}
    )
    assert client.conversations.retrieve(conv.id).id == conv.id
    added = client.conversations.items.create(
        conv.id,
        items=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}]}],
    )
    assert len(added.data) == 1
    items = client.conversations.items.list(conv.id, order="asc")
    assert [i.content[0].text for i in items] == ["first", "second"]
    assert (
        client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id).id == added.data[0].id
    )
    client.conversations.items.delete(added.data[0].id, conversation_id=conv.id)
    assert len(client.conversations.items.list(conv.id).data) == 1
    assert client.conversations.update(conv.id, metadata={"topic": "x"}).metadata == {"topic": "x"}
    assert client.conversations.delete(conv.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)


def test_simulator_response_foreground_turns_in_a_conversation(client):
    conv = client.conversations.create()
    first = client.responses.create(
        model="gpt-4o-mini", conversation=conv.id, input="I want a refund", instructions="Be kind."
    )
    assert first.status == "completed" and first.output_text == "Refunds are accepted within 30 days."
    assert first.conversation.id == conv.id and first.instructions == "Be kind."
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    second = client.responses.create(model="gpt-4o-mini", conversation={"id": conv.id}, input="thanks")
    assert second.output_text == "You said: thanks"
    assert second.usage.input_tokens > first.usage.input_tokens  # the history is read again
    items = client.conversations.items.list(conv.id, order="asc")
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "assistant")] * 2
    assert client.responses.retrieve(second.id).output_text == "You said: thanks"
    inputs = client.responses.input_items.list(second.id)
    assert [i.content[0].text for i in inputs] == ["thanks"]


def test_simulator_response_function_call_answered_by_output_item(client):
    conv = client.conversations.create()
    first = client.responses.create(
        model="gpt-4o-mini", conversation=conv.id, input="where is my order", tools=RESPONSE_TOOLS
    )
    (call,) = first.output
    assert (call.type, call.name, call.arguments, call.status) == (
        "function_call",
        "lookup_order",
        '{"order_id":"A1"}',
        "completed",
    )
    second = client.responses.create(
        model="gpt-4o-mini",
        conversation=conv.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "shipped"}],
        tools=RESPONSE_TOOLS,
    )
    assert second.output_text == "Your order is shipped."
    kinds = [i.type for i in client.conversations.items.list(conv.id, order="asc")]
    assert kinds == ["message", "function_call", "function_call_output", "message"]


def test_simulator_response_previous_response_id_chain(client):
    first = client.responses.create(model="gpt-4o-mini", input="order 7?", tools=RESPONSE_TOOLS)
    call = first.output[0]
    second = client.responses.create(
        model="gpt-4o-mini",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "lost"}],
    )
    assert second.output_text == "Your order is lost." and second.previous_response_id == first.id


def test_simulator_response_output_for_unknown_call_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(
            model="gpt-4o-mini", input=[{"type": "function_call_output", "call_id": "call_x", "output": "1"}]
        )
    assert e.value.body["message"] == "No tool call found for function call output with call_id call_x."


def test_simulator_response_background_poll_and_cancel(sim_factory, openai_client):
    client = openai_client(sim_factory(latency_s=0.3, jitter=0.0))
    bg = client.responses.create(model="gpt-4o-mini", input="hello", background=True)
    assert bg.status == "queued" and bg.background and bg.output == []
    done = _wait(client, bg)
    assert done.status == "completed" and done.output_text == "You said: hello" and done.completed_at
    other = client.responses.create(model="gpt-4o-mini", input="slow", background=True)
    cancelled = client.responses.cancel(other.id)
    assert cancelled.status == "cancelled" and cancelled.output == []
    time.sleep(0.35)
    assert client.responses.retrieve(other.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.cancel(done.id)
    assert e.value.body["message"] == "Cannot cancel a response with status 'completed'."
    fg = client.responses.create(model="gpt-4o-mini", input="now")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.cancel(fg.id)
    assert e.value.body["message"] == "Only responses created with background=true can be cancelled."


def test_simulator_response_background_failure_has_error(client):
    failed = _wait(client, client.responses.create(model="gpt-4o-mini", input="explode", background=True))
    assert failed.status == "failed" and failed.error.code == "server_error"
    with pytest.raises(openai.InternalServerError):  # in the foreground the request itself fails
        client.responses.create(model="gpt-4o-mini", input="explode")


def test_simulator_response_token_cap_is_incomplete(client):
    r = client.responses.create(model="gpt-4o-mini", input="x" * 200, max_output_tokens=16)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 16


def test_simulator_response_unknown_ids_are_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve("resp_nope")
    assert e.value.body["message"] == "No response found with id 'resp_nope'."
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o-mini", conversation="conv_nope", input="hi")
    assert client.responses.delete(client.responses.create(model="gpt-4o-mini", input="x").id) is None


def test_simulator_chat_plain_completion(client):
    c = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "I need a refund"}],
    )
    (choice,) = c.choices
    assert c.object == "chat.completion" and c.model == "gpt-4o-mini" and c.id.startswith("chatcmpl-")
    assert (choice.finish_reason, choice.message.role) == ("stop", "assistant")
    assert choice.message.content == "Refunds are accepted within 30 days."
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert c.usage.prompt_tokens == (len("Be brief.") + len("I need a refund") + 3) // 4


def test_simulator_chat_tool_call_answered_by_tool_message(client):
    history = [{"role": "user", "content": "Where is my order?"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=CHAT_TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (tc,) = choice.message.tool_calls
    assert (tc.function.name, tc.function.arguments) == ("lookup_order", '{"order_id":"A1"}')
    history += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": tc.id, "content": "delivered"},
    ]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=CHAT_TOOLS)
    assert second.choices[0].message.content == "Your order is delivered."
    assert second.choices[0].finish_reason == "stop"


def test_simulator_chat_without_declared_tool_replies_instead(client):
    c = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "my order"}]
    )
    assert c.choices[0].finish_reason == "stop" and c.choices[0].message.content == "You said: my order"


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        (
            [{"role": "tool", "tool_call_id": "call_1", "content": "x"}],
            "must be a response to a preceeding message",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "user", "content": "and?"},
            ],
            "did not have response messages: call_1",
        ),
        ([], "Invalid 'messages': empty array. Expected an array with minimum length 1"),
    ],
)
def test_simulator_chat_invalid_histories_are_400(client, messages, fragment):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert fragment in e.value.body["message"]


def test_simulator_chat_length_and_failure(client):
    c = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 100}], max_completion_tokens=5
    )
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 5
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "explode"}])
    assert e.value.type == "server_error"


def test_simulator_chat_takes_the_latency(sim_factory, openai_client):
    client = openai_client(sim_factory(latency_s=0.3, jitter=0.0))
    started = time.monotonic()
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started >= 0.29
