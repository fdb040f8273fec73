"""The simulator refuses what OpenAI refuses: bodies against OpenAI's request schemas (unknown
arguments, wrong types, out-of-range values), unknown models, oversized bodies and prompts over a
model's context window — each with OpenAI's status, `code` and `param`, through the real SDK."""

from __future__ import annotations

import openai
import pytest

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def client(simulator, openai_client):
    return openai_client(simulator)


def _chat_error(client, **kw):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**{"model": "gpt-4o-mini", "messages": HELLO, **kw})
    return e.value


@pytest.mark.parametrize(
    ("extra", "code", "param", "message"),
    [
        (
            {"temprature": 0.5},
            "unknown_parameter",
            "temprature",
            "Unrecognized request argument supplied: temprature",
        ),
        (
            {"temperature": "0.5"},
            "invalid_type",
            "temperature",
            "Invalid type for 'temperature': expected a decimal, but got a string instead.",
        ),
        (
            {"temperature": 5},
            "decimal_above_max_value",
            "temperature",
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 5 instead.",
        ),
        (
            {"stream": "yes"},
            "invalid_type",
            "stream",
            "Invalid type for 'stream': expected a boolean, but got a string instead.",
        ),
        (
            {"messages": [{"role": "robot", "content": "hi"}]},
            "invalid_value",
            "messages[0].role",
            "Invalid value: 'robot'. Supported values are: 'developer', 'system', 'user', 'assistant', "
            "'tool', and 'function'.",
        ),
        (
            {"messages": [{"role": "user"}]},
            "missing_required_parameter",
            "messages[0].content",
            "Missing required parameter: 'messages[0].content'.",
        ),
        (
            {"n": 0},
            "integer_below_min_value",
            "n",
            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.",
        ),
        (
            {"logprobs": True, "top_logprobs": 21},
            "integer_above_max_value",
            "top_logprobs",
            "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, "
            "but got 21 instead.",
        ),
        (
            {"response_format": {"type": "yaml"}},
            "invalid_value",
            "response_format.type",
            "Invalid value: 'yaml'. Supported values are: 'text', 'json_schema', and 'json_object'.",
        ),
    ],
)
def test_simulator_strict_chat_bodies_are_checked_against_the_schema(client, extra, code, param, message):
    err = _chat_error(client, extra_body=extra)
    assert err.status_code == 400
    assert (err.code, err.param, err.body["message"], err.type) == (
        code,
        param,
        message,
        "invalid_request_error",
    )


def test_simulator_strict_other_endpoints_refuse_unknown_arguments(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="hi", extra_body={"temprature": 1})
    assert (e.value.code, e.value.param) == ("unknown_parameter", "temprature")
    with pytest.raises(openai.BadRequestError) as e:
        client.conversations.create(extra_body={"itmes": []})
    assert (e.value.code, e.value.param) == ("unknown_parameter", "itmes")


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_simulator_strict_assistants_bodies_are_checked(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.assistants.create(model="gpt-4o-mini", extra_body={"temprature": 1})
    assert (e.value.code, e.value.param) == ("unknown_parameter", "temprature")
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create()
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.runs.create(thread.id, assistant_id=a.id, max_completion_tokens=10)
    assert (e.value.code, e.value.param) == ("integer_below_min_value", "max_completion_tokens")
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.messages.create(thread.id, role="system", content="hi")
    assert (e.value.code, e.value.param) == ("invalid_value", "role")


def test_simulator_strict_refusals_are_counted_as_invalid_requests(simulator, client):
    _chat_error(client, extra_body={"temprature": 0.5})
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stats = simulator.stats()
    assert stats["invalid_requests"] == 1
    assert stats["invalid_request_samples"] == [
        "POST /v1/chat/completions: Unrecognized request argument supplied: temprature"
    ]


@pytest.mark.parametrize("model", ["", "gpt-4o-mimi"])
def test_simulator_strict_unknown_model_is_404_model_not_found(client, model):
    err = _chat_error(client, model=model)
    assert isinstance(err, openai.NotFoundError)
    assert (err.code, err.param) == ("model_not_found", "model")
    assert err.body["message"] == f"The model `{model}` does not exist or you do not have access to it."


def test_simulator_strict_models_list_and_retrieve(client):
    listed = [m.id for m in client.models.list()]
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "gpt-5", "o3", "gpt-3.5-turbo"} <= set(listed)
    model = client.models.retrieve("gpt-4.1")
    assert (model.id, model.object, model.owned_by) == ("gpt-4.1", "model", "openai")
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-9")
    assert e.value.code == "model_not_found"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_simulator_strict_model_catalogue_is_configurable(sim_factory, openai_client):
    client = openai_client(sim_factory(models="house-model, gpt-4o"))
    assert [m.id for m in client.models.list()] == ["house-model", "gpt-4o"]
    assert client.responses.create(model="house-model", input="hi").output_text == "You said: hi"
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.create(model="gpt-4o-mini")
    anything = openai_client(sim_factory(models=("*",)))
    assert anything.chat.completions.create(model="my-finetune", messages=HELLO).model == "my-finetune"
    assert anything.models.retrieve("my-finetune").owned_by == "system"
    with pytest.raises(openai.NotFoundError):
        anything.chat.completions.create(model="", messages=HELLO)


def test_simulator_strict_body_over_the_limit_is_413(client):
    err = _chat_error(client, messages=[{"role": "user", "content": "x" * (30 * 1024 * 1024)}])
    assert err.status_code == 413
    assert err.code == "request_too_large"


def test_simulator_strict_prompt_over_the_context_window_is_400(client):
    long = [{"role": "user", "content": "word " * 14_000}]  # 70,000 characters: about 17,500 tokens
    err = _chat_error(client, model="gpt-3.5-turbo", messages=long)
    assert (err.status_code, err.code, err.param) == (400, "context_length_exceeded", "messages")
    assert "maximum context length is 16385 tokens" in err.body["message"]
    assert client.chat.completions.create(model="gpt-4o-mini", messages=long).choices
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-3.5-turbo", input=long[0]["content"])
    assert (e.value.code, e.value.param) == ("context_length_exceeded", "input")
