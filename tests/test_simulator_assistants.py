"""Assistants v2 against the simulator with the real SDK: every endpoint, the run lifecycle of
wire-protocol §5, pagination (§4) and the errors of illegal operations. Every body is validated
against the OpenAPI subset by the `openai_client` fixture."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look an order up",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
]
# The SDK marks every Assistants method deprecated (the API was shut down, wire-protocol §0).
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

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
        {"when": "(?i)essay", "reply": "word " * 400},
    ],
    "default": "You said: {{message}}",
}


@pytest.fixture
def sim(sim_factory):
    return sim_factory(rules=RULES, poll_after_ms=20)


@pytest.fixture
def client(sim, openai_client) -> openai.OpenAI:
    return openai_client(sim)


@pytest.fixture
def assistant(client):
    return client.beta.assistants.create(
        model="gpt-4o-mini", name="Support", instructions="Help.", tools=TOOLS
    )


def test_simulator_assistants_crud(client):
    a = client.beta.assistants.create(
        model="gpt-4o-mini", name="Bot", instructions="Be brief.", tools=TOOLS, metadata={"team": "qa"}
    )
    assert a.id.startswith("asst_") and a.object == "assistant" and a.metadata == {"team": "qa"}
    assert a.tools[0].function.name == "lookup_order"
    assert client.beta.assistants.retrieve(a.id).name == "Bot"
    updated = client.beta.assistants.update(a.id, name="Bot 2", temperature=0.3)
    assert (updated.name, updated.temperature, updated.instructions) == ("Bot 2", 0.3, "Be brief.")
    assert [x.id for x in client.beta.assistants.list()] == [a.id]
    deleted = client.beta.assistants.delete(a.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (a.id, "assistant.deleted", True)
    with pytest.raises(openai.NotFoundError) as e:
        client.beta.assistants.retrieve(a.id)
    assert e.value.body["message"] == f"No assistant found with id '{a.id}'."


def test_simulator_pagination_cursors_and_order(client):
    ids = [client.beta.assistants.create(model="gpt-4o-mini", name=f"a{i}").id for i in range(5)]
    first = client.beta.assistants.list(limit=2, order="asc")
    assert [a.id for a in first.data] == ids[:2] and first.has_more
    assert (first.first_id, first.last_id) == (ids[0], ids[1])
    second = client.beta.assistants.list(limit=2, order="asc", after=ids[1])
    assert [a.id for a in second.data] == ids[2:4] and second.has_more
    last = client.beta.assistants.list(limit=2, order="asc", after=ids[3])
    assert [a.id for a in last.data] == ids[4:] and not last.has_more
    before = client.beta.assistants.list(limit=2, order="asc", before=ids[4])
    assert [a.id for a in before.data] == ids[2:4] and before.has_more
    assert [a.id for a in client.beta.assistants.list()] == ids[::-1]  # default: desc, newest first
    assert [a.id for a in client.beta.assistants.list(limit=1, order="asc")] == ids  # SDK auto-pagination
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.assistants.list(limit=101)
    assert e.value.param == "limit" and e.value.code == "integer_above_max_value"


def test_simulator_empty_list_has_null_cursors(client):
    page = client.beta.assistants.list()
    assert (page.data, page.first_id, page.last_id, page.has_more) == ([], None, None, False)


def test_simulator_threads_and_messages(client):
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
        metadata={"k": "v"},
    )
    assert thread.id.startswith("thread_") and thread.metadata == {"k": "v"}
    assert client.beta.threads.retrieve(thread.id).id == thread.id
    assert client.beta.threads.update(thread.id, metadata={"k": "w"}).metadata == {"k": "w"}
    msg = client.beta.threads.messages.create(
        thread.id, role="user", content=[{"type": "text", "text": "third"}], metadata={"n": "3"}
    )
    assert msg.content[0].text.value == "third" and msg.status == "completed" and msg.run_id is None
    listed = client.beta.threads.messages.list(thread.id, order="asc")
    assert [m.content[0].text.value for m in listed] == ["hello", "hi", "third"]
    assert client.beta.threads.messages.retrieve(msg.id, thread_id=thread.id).metadata == {"n": "3"}
    assert client.beta.threads.messages.update(msg.id, thread_id=thread.id, metadata={"n": "4"}).metadata == {
        "n": "4"
    }
    assert client.beta.threads.messages.delete(msg.id, thread_id=thread.id).deleted
    gone = client.beta.threads.delete(thread.id)
    assert (gone.object, gone.deleted) == ("thread.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.retrieve(thread.id)


def test_simulator_run_completes_with_usage_steps_and_message(client, assistant, sim):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "I want a refund"}])
    raw = client.beta.threads.runs.with_raw_response.create(thread_id=thread.id, assistant_id=assistant.id)
    assert raw.headers["openai-poll-after-ms"] == "20"
    run = client.beta.threads.runs.poll(raw.parse().id, thread_id=thread.id)
    got = client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread.id)
    assert got.headers["openai-poll-after-ms"] == "20"  # one constant value per run, on every read
    assert run.status == "completed" and run.completed_at and run.started_at and run.expires_at is None
    assert run.failed_at is None and run.cancelled_at is None and run.last_error is None
    assert run.usage.total_tokens == run.usage.prompt_tokens + run.usage.completion_tokens > 0
    assert run.instructions == "Help." and run.model == "gpt-4o-mini"
    replies = client.beta.threads.messages.list(thread.id, run_id=run.id)
    assert [m.content[0].text.value for m in replies] == ["Refunds are accepted within 30 days."]
    assert replies.data[0].status == "completed" and replies.data[0].assistant_id == assistant.id
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    assert [(s.type, s.status) for s in steps] == [("message_creation", "completed")]
    step = client.beta.threads.runs.steps.retrieve(steps.data[0].id, thread_id=thread.id, run_id=run.id)
    assert step.step_details.message_creation.message_id == replies.data[0].id
    assert [r.id for r in client.beta.threads.runs.list(thread.id)] == [run.id]
    assert client.beta.threads.runs.update(run.id, thread_id=thread.id, metadata={"x": "1"}).metadata == {
        "x": "1"
    }


def test_simulator_run_passes_through_legal_statuses(sim_factory, openai_client):
    sim = sim_factory(latency_s=0.3, jitter=0.0)
    client = openai_client(sim)
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
    seen, message_states = [run.status], set()
    while seen[-1] not in ("completed", "failed", "expired", "cancelled", "incomplete"):
        time.sleep(0.02)
        seen.append(client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status)
        for m in client.beta.threads.messages.list(thread.id, run_id=run.id):
            message_states.add((seen[-1], m.status))
    collapsed = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert collapsed == ["queued", "in_progress", "completed"]
    assert ("in_progress", "in_progress") in message_states and ("completed", "completed") in message_states


def test_simulator_requires_action_then_outputs_complete_the_run(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Where is my order?"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action" and run.usage is None
    (tc,) = run.required_action.submit_tool_outputs.tool_calls
    assert (tc.type, tc.function.name, tc.function.arguments) == (
        "function",
        "lookup_order",
        '{"order_id":"A1"}',
    )
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "in_progress")]
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.messages.create(thread.id, role="user", content="more")
    assert e.value.body["message"] == f"Can't add messages to {thread.id} while a run {run.id} is active."
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": tc.id, "output": "shipped"}]
    )
    assert run.status == "completed" and run.required_action is None
    reply = client.beta.threads.messages.list(thread.id, run_id=run.id).data[0]
    assert reply.content[0].text.value == "Your order is shipped."
    tool_step = [
        s for s in client.beta.threads.runs.steps.list(run.id, thread_id=thread.id) if s.type == "tool_calls"
    ]
    assert (
        tool_step[0].status == "completed"
        and tool_step[0].step_details.tool_calls[0].function.output == "shipped"
    )


def test_simulator_tool_outputs_are_validated(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "order status"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    call_id = run.required_action.submit_tool_outputs.tool_calls[0].id
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_wrong", "output": "x"}]
        )
    assert e.value.body["message"] == f"Expected tool outputs for call_ids ['{call_id}'], got ['call_wrong']"
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.runs.submit_tool_outputs(
            run.id,
            thread_id=thread.id,
            tool_outputs=[{"tool_call_id": call_id, "output": 42}],  # type: ignore[typeddict-item]
        )
    assert e.value.param == "tool_outputs[0].output"
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call_id, "output": "ok"}]
    )
    assert done.status == "completed"
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call_id, "output": "again"}]
        )
    assert e.value.body["message"] == 'Runs in status "completed" do not accept tool outputs.'
    assert e.value.type == "invalid_request_error" and e.value.code is None


def test_simulator_thread_lock_rejects_second_run(sim_factory, openai_client):
    client = openai_client(sim_factory(latency_s=0.5))
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
    assert e.value.body["message"] == f"Thread {thread.id} already has an active run {run.id}."
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.messages.create(thread.id, role="user", content="again")
    assert e.value.body["message"] == f"Can't add messages to {thread.id} while a run {run.id} is active."


def test_simulator_cancel_active_run_then_completed_run_is_refused(sim_factory, openai_client):
    client = openai_client(sim_factory(latency_s=1.0))
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
    time.sleep(0.1)  # in progress: its message exists
    cancelling = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status == "cancelling"
    run = client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=10)
    assert (
        run.status == "cancelled" and run.cancelled_at and run.completed_at is None and run.usage is not None
    )
    (msg,) = client.beta.threads.messages.list(thread.id, run_id=run.id).data
    assert msg.status == "incomplete" and msg.incomplete_details.reason == "run_cancelled"
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.status == "cancelled" and step.cancelled_at
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert e.value.body["message"] == "Cannot cancel run with status 'cancelled'."
    client.beta.threads.messages.create(thread.id, role="user", content="unlocked")  # the lock is gone


def test_simulator_cancelling_a_completed_run_is_400(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "refund"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert e.value.body["message"] == "Cannot cancel run with status 'completed'."


def test_simulator_run_expires_at_expires_at(sim_factory, openai_client):
    client = openai_client(sim_factory(rules=RULES, run_ttl_s=0.4))
    a = client.beta.assistants.create(model="gpt-4o-mini", tools=TOOLS)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "my order?"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id)
    assert run.status == "requires_action" and run.expires_at in (run.created_at, run.created_at + 1)
    time.sleep(0.45)
    run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert run.status == "expired" and run.required_action is None
    assert run.completed_at is None and run.failed_at is None and run.cancelled_at is None
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.status == "expired" and step.expired_at is not None
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id, tool_outputs=[])


def test_simulator_failing_run_has_last_error(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "explode please"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "failed" and run.failed_at and run.last_error.code == "server_error"
    (msg,) = client.beta.threads.messages.list(thread.id, run_id=run.id).data
    assert msg.status == "incomplete" and msg.incomplete_details.reason == "run_failed"
    assert client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0].status == "failed"


def test_simulator_token_cap_makes_run_incomplete(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "write an essay"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=256
    )
    assert run.status == "incomplete" and run.incomplete_details.reason == "max_completion_tokens"
    assert run.completed_at is None and run.usage.completion_tokens == 256
    (msg,) = client.beta.threads.messages.list(thread.id, run_id=run.id).data
    assert msg.status == "incomplete" and msg.incomplete_details.reason == "max_tokens"


def test_simulator_create_thread_and_run_with_overrides(client, assistant):
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "refund?"}]},
        instructions="Other instructions.",
        model="gpt-4.1-mini",
    )
    assert (
        run.status == "completed"
        and run.instructions == "Other instructions."
        and run.model == "gpt-4.1-mini"
    )
    texts = [m.content[0].text.value for m in client.beta.threads.messages.list(run.thread_id, order="asc")]
    assert texts == ["refund?", "Refunds are accepted within 30 days."]
    run2 = client.beta.threads.runs.create_and_poll(
        thread_id=run.thread_id,
        assistant_id=assistant.id,
        additional_instructions="Be formal.",
        additional_messages=[{"role": "user", "content": "thanks"}],
    )
    assert run2.instructions == "Help.\nBe formal."
    assert client.beta.threads.messages.list(run.thread_id, run_id=run2.id).data[0].content[0].text.value == (
        "You said: thanks"
    )


def test_simulator_unknown_ids_are_404(client, assistant):
    thread = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError) as e:
        client.beta.threads.retrieve("thread_nope")
    assert (e.value.body["message"], e.value.type) == (
        "No thread found with id 'thread_nope'.",
        "invalid_request_error",
    )
    with pytest.raises(openai.NotFoundError) as e:
        client.beta.threads.runs.retrieve("run_nope", thread_id=thread.id)
    assert e.value.body["message"] == "No run found with id 'run_nope'."
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.retrieve("msg_nope", thread_id=thread.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_nope")
    assert e.value.body["message"] == "No assistant found with id 'asst_nope'."


def test_simulator_missing_beta_header_is_400(sim, validate_against):
    r = httpx2.post(
        f"{sim.base_url}/assistants",
        json={"model": "gpt-4o-mini"},
        headers={"Authorization": "Bearer sk-test"},
    )
    assert r.status_code == 400
    validate_against("ErrorResponse", r.json())
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "OpenAI-Beta: assistants=v2" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": None}, "model"),
        ({"model": "gpt-4o-mini", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        (
            {"model": "gpt-4o-mini", "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        ({"model": "gpt-4o-mini", "tools": [{"type": "browser"}]}, "tools[0].type"),
    ],
)
def test_simulator_invalid_assistant_bodies_are_400(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.assistants.create(**body)
    assert e.value.param == param
