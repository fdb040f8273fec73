"""What the simulator answers honours the request like OpenAI: structured outputs valid for the
requested schema (`parse()` with pydantic models), `n` choices, log probabilities, several tool
calls in one turn, `previous_response_not_found`, and resuming a background response's stream
with `starting_after`. Real SDK, every answer schema-checked by the `openai_client` fixture."""

from __future__ import annotations

import json
from enum import StrEnum

import openai
import pytest
from pydantic import BaseModel

RULES = {
    "rules": [
        {
            "when": "(?i)weather and time",
            "call": [
                {"name": "get_weather", "arguments": {"city": "Oslo"}},
                {"name": "get_time", "arguments": {"zone": "CET"}},
            ],
            "then": "Both: {{tool_output}}",
        },
        {"when": "(?i)json please", "reply": '{"city": "Oslo", "temperature": 3}'},
    ],
    "default": "You said: {{message}}",
}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
    for n in ("get_weather", "get_time")
]
RESPONSE_TOOLS = [
    {"type": "function", "name": n, "parameters": {"type": "object", "properties": {}}, "strict": False}
    for n in ("get_weather", "get_time")
]


class Unit(StrEnum):
    C = "celsius"
    F = "fahrenheit"


class Reading(BaseModel):
    at: str
    value: float


class Forecast(BaseModel):
    city: str
    unit: Unit
    days: int
    readings: list[Reading]
    note: str | None


class Weather(BaseModel):
    city: str
    temperature: int


@pytest.fixture
def client(sim_factory, openai_client):
    return openai_client(sim_factory(rules=RULES))


def test_simulator_strict_chat_parse_with_a_pydantic_model(client):
    done = client.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "forecast"}], response_format=Forecast
    )
    forecast = done.choices[0].message.parsed
    assert isinstance(forecast, Forecast) and forecast.unit is Unit.C and len(forecast.readings) == 1
    assert forecast.city == "You said: forecast"  # the reply's text goes into the strings


def test_simulator_strict_a_rule_reply_that_fits_the_schema_is_kept(client):
    done = client.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "json please"}], response_format=Weather
    )
    assert done.choices[0].message.parsed == Weather(city="Oslo", temperature=3)
    obj = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "plain"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(obj.choices[0].message.content) == {"reply": "You said: plain"}


def test_simulator_strict_responses_parse_with_text_format(client):
    done = client.responses.parse(model="gpt-4o-mini", input="forecast", text_format=Forecast)
    assert isinstance(done.output_parsed, Forecast)
    assert done.text.format.type == "json_schema"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_simulator_strict_assistants_response_format_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "score": {"type": "integer", "minimum": 1}},
        "required": ["answer", "score"],
        "additionalProperties": False,
    }
    a = client.beta.assistants.create(
        model="gpt-4o-mini",
        response_format={"type": "json_schema", "json_schema": {"name": "graded", "schema": schema}},
    )
    run = client.beta.threads.create_and_run_poll(
        assistant_id=a.id, thread={"messages": [{"role": "user", "content": "grade me"}]}
    )
    assert run.status == "completed"
    text = client.beta.threads.messages.list(run.thread_id).data[0].content[0].text.value
    assert json.loads(text) == {"answer": "You said: grade me", "score": 1}


def test_simulator_strict_chat_n_choices(client):
    done = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], n=3
    )
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert {c.message.content for c in done.choices} == {"You said: hi"}
    assert done.usage.completion_tokens == 3 * 3
    streamed = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], n=2, stream=True
    )
    text: dict[int, str] = {0: "", 1: ""}
    for chunk in streamed:
        for c in chunk.choices:
            text[c.index] += c.delta.content or ""
    assert text == {0: "You said: hi", 1: "You said: hi"}


def test_simulator_strict_chat_logprobs_when_asked(client):
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert plain.choices[0].logprobs is None
    done = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2
    )
    content = done.choices[0].logprobs.content
    assert "".join(t.token for t in content) == "You said: hi"
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 and t.bytes for t in content)
    assert content[0].top_logprobs[0].token == content[0].token
    tokens = []
    for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], logprobs=True, stream=True
    ):
        for c in chunk.choices:
            tokens += [t.token for t in (c.logprobs.content if c.logprobs else None) or []]
    assert "".join(tokens) == "You said: hi"


def test_simulator_strict_responses_logprobs_when_included(client):
    done = client.responses.create(
        model="gpt-4o-mini", input="hi", include=["message.output_text.logprobs"], top_logprobs=3
    )
    logprobs = done.output[0].content[0].logprobs
    assert "".join(lp.token for lp in logprobs) == "You said: hi"
    assert all(len(lp.top_logprobs) == 3 for lp in logprobs) and done.top_logprobs == 3
    assert client.responses.create(model="gpt-4o-mini", input="hi").output[0].content[0].logprobs == []


def test_simulator_strict_chat_two_tool_calls_in_one_turn(client):
    history = [{"role": "user", "content": "weather and time?"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=CHAT_TOOLS)
    calls = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {"zone": "CET"}),
    ]
    history.append(first.choices[0].message.model_dump(exclude_none=True))
    history += [
        {"role": "tool", "tool_call_id": c.id, "content": out}
        for c, out in zip(calls, ["3C", "9:00"], strict=True)
    ]
    then = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=CHAT_TOOLS)
    assert then.choices[0].message.content == "Both: 3C\n9:00"
    one = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "weather and time?"}],
        tools=CHAT_TOOLS,
        parallel_tool_calls=False,
    )
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_weather"]


def test_simulator_strict_responses_two_tool_calls_in_one_turn(client):
    first = client.responses.create(model="gpt-4o-mini", input="weather and time?", tools=RESPONSE_TOOLS)
    calls = [o for o in first.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    outputs = [
        {"type": "function_call_output", "call_id": c.call_id, "output": o}
        for c, o in zip(calls, "AB", strict=True)
    ]
    then = client.responses.create(
        model="gpt-4o-mini", previous_response_id=first.id, input=outputs, tools=RESPONSE_TOOLS
    )
    assert then.output_text == "Both: A\nB"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_simulator_strict_assistants_two_tool_calls_in_one_turn(client):
    a = client.beta.assistants.create(model="gpt-4o-mini", tools=CHAT_TOOLS)
    run = client.beta.threads.create_and_run_poll(
        assistant_id=a.id, thread={"messages": [{"role": "user", "content": "weather and time?"}]}
    )
    assert run.status == "requires_action"
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"] and calls[0].id != calls[1].id
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": c.id, "output": o} for c, o in zip(calls, ["x", "y"], strict=True)],
    )
    assert done.status == "completed"
    assert client.beta.threads.messages.list(run.thread_id).data[0].content[0].text.value == "Both: x\ny"


def test_simulator_strict_unknown_previous_response_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="hi", previous_response_id="resp_nope")
    assert (e.value.code, e.value.param) == ("previous_response_not_found", "previous_response_id")
    assert e.value.body["message"] == "Previous response with id 'resp_nope' not found."


def test_simulator_strict_background_stream_resumes_after_a_sequence_number(sim_factory, openai_client):
    client = openai_client(sim_factory(rules=RULES, latency_s=0.3, jitter=0.0))
    started = client.responses.create(model="gpt-4o-mini", input="tell me a long story", background=True)
    full = [(e.sequence_number, e.type) for e in client.responses.retrieve(started.id, stream=True)]
    assert [n for n, _ in full] == list(range(len(full)))
    assert full[0][1] == "response.created" and full[-1][1] == "response.completed"
    resumed = client.responses.retrieve(started.id, stream=True, starting_after=4)
    events = list(resumed)
    assert [(e.sequence_number, e.type) for e in events] == full[5:]
    assert events[-1].response.output_text == "You said: tell me a long story"
    live = client.responses.create(model="gpt-4o-mini", input="again", background=True)
    resumed_live = list(client.responses.retrieve(live.id, stream=True, starting_after=1))
    assert resumed_live[0].sequence_number == 2 and resumed_live[-1].type == "response.completed"
    foreground = client.responses.create(model="gpt-4o-mini", input="hi")
    with pytest.raises(openai.BadRequestError):
        list(client.responses.retrieve(foreground.id, stream=True))
