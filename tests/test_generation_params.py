"""Generation parameters on an assistant reach each API in its own shape, spec-valid.

A job file setting every parameter runs against the simulator on all three APIs through the real
SDK. An httpx2 request hook captures every request body; each is validated against its request
schema in the OpenAPI subset and the generation fields are compared with the shape the spec names.
For runs and responses the simulator's stored objects echo what it received, read back over HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import yaml
from openapi import OpenAPISchema, TrafficValidator
from test_engine_support import SIMULATOR_BLOCK, TOOL, TOOL_OUTPUT

from runner.engine.conversation import prepare_tasks, run_conversation
from runner.engine.limits import Unlimited
from runner.errors import JobFileError
from runner.jobs.loader import expand, load_job
from runner.simulator import RunningSimulator

SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}
COMMON: dict[str, Any] = {
    "top_p": 0.5,
    "response_format": {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True},
    "tool_choice": {"type": "function", "function": {"name": "lookup_order"}},
    "parallel_tool_calls": False,
    "reasoning_effort": "low",
}
PER_API: dict[str, dict[str, Any]] = {
    "chat": {"max_output_tokens": 300, "seed": 7, "stop": ["\n\n", "END"], "extra_body": {"user": "tester"}},
    "responses": {"max_output_tokens": 300, "extra_body": {"safety_identifier": "tester"}},
    "assistants": {"max_output_tokens": 300, "extra_body": {"max_prompt_tokens": 20000}},
}
CHAT_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}

REQUEST_SCHEMAS = [
    ("POST", r"/chat/completions", "CreateChatCompletionRequest"),
    ("POST", r"/threads/runs", "CreateThreadAndRunRequest"),
    ("POST", r"/threads/[^/]+/runs", "CreateRunRequest"),
    ("POST", r"/threads/[^/]+/runs/[^/]+/submit_tool_outputs", "SubmitToolOutputsRunRequest"),
    ("POST", r"/assistants", "CreateAssistantRequest"),
    ("POST", r"/assistants/[^/]+", "ModifyAssistantRequest"),
    ("POST", r"/responses", "CreateResponse"),
]


def request_schema(method: str, path: str) -> str | None:
    for m, pattern, name in REQUEST_SCHEMAS:
        if m == method and re.fullmatch(pattern, path):
            return name
    return None


class Captured:
    """An httpx2 request hook keeping every JSON request body by route."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, request: httpx2.Request) -> None:
        content = request.read()
        if content:
            path = request.url.path.split("/v1", 1)[-1]
            self.bodies.append((request.method, path, json.loads(content)))

    def sent(self, pattern: str) -> list[dict[str, Any]]:
        return [b for m, p, b in self.bodies if m == "POST" and re.fullmatch(pattern, p)]


@pytest.fixture
def capturing_client() -> Iterator[Callable[[RunningSimulator], tuple[openai.OpenAI, Captured]]]:
    made: list[tuple[openai.OpenAI, TrafficValidator]] = []

    def make(sim: RunningSimulator) -> tuple[openai.OpenAI, Captured]:
        captured, validator = Captured(), TrafficValidator()
        http = httpx2.Client(event_hooks={"request": [captured], "response": [validator]}, timeout=30)
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", http_client=http, max_retries=0)
        made.append((client, validator))
        return client, captured

    yield make
    for client, validator in made:
        client.close()
        validator.assert_clean()


def write_job(folder: Path, api: str, params: dict[str, Any], **extra: Any) -> Path:
    job = {
        "name": f"params-{api}",
        "api": api,
        "model": "gpt-4o-mini",
        "assistants": {"a": {"instructions": "Be brief.", "tools": [TOOL], **params}},
        "conversations": [
            {
                "id": "c",
                "tool_outputs": {"lookup_order": TOOL_OUTPUT},
                "turns": [{"user": "Where is my order?"}, {"user": "Thanks!"}],
            }
        ],
        "simulator": SIMULATOR_BLOCK,
        **extra,
    }
    path = folder / f"{api}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_job(path: Path, client: openai.OpenAI) -> list[Any]:
    job = load_job(path)
    tasks = prepare_tasks(job, expand(job), Unlimited(), client=client)
    return [run_conversation(t, batch_id="b1", limiter=Unlimited(), client=client) for t in tasks]


def assert_valid_requests(captured: Captured, schema: OpenAPISchema) -> None:
    checked = 0
    for method, path, body in captured.bodies:
        name = request_schema(method, path)
        if name is not None:
            assert schema.errors(name, body) == [], f"{method} {path}"
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("stream", ["0", "1"])
def test_generation_params_chat_shape(
    stream: str,
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    capturing_client: Callable[[RunningSimulator], tuple[openai.OpenAI, Captured]],
    openai_schema: OpenAPISchema,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNNER_CHAT_STREAM", stream)
    client, captured = capturing_client(sim_factory())
    [record] = run_job(write_job(tmp_path, "chat", {**COMMON, **PER_API["chat"]}), client)
    assert record["status"] == "completed", record["error"]

    # The forced tool is called on each turn, so each turn costs two requests.
    first, after_tool, second_turn, after_second = captured.sent("/chat/completions")
    for body in (first, after_tool, second_turn, after_second):
        assert {k: body.get(k) for k in ("max_completion_tokens", "top_p", "seed", "stop")} == {
            "max_completion_tokens": 300,
            "top_p": 0.5,
            "seed": 7,
            "stop": ["\n\n", "END"],
        }
        assert body["response_format"] == CHAT_FORMAT
        assert (body["parallel_tool_calls"], body["reasoning_effort"]) == (False, "low")
        assert body["user"] == "tester"  # from extra_body
        assert "max_tokens" not in body and "max_output_tokens" not in body
    # A forced tool choice is for the user's message; the answer to the tool's output is free.
    assert first["tool_choice"] == second_turn["tool_choice"] == COMMON["tool_choice"]
    assert "tool_choice" not in after_tool and "tool_choice" not in after_second
    assert_valid_requests(captured, openai_schema)


def test_generation_params_responses_shape(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    capturing_client: Callable[[RunningSimulator], tuple[openai.OpenAI, Captured]],
    openai_schema: OpenAPISchema,
) -> None:
    client, captured = capturing_client(sim_factory())
    [record] = run_job(write_job(tmp_path, "responses", {**COMMON, **PER_API["responses"]}), client)
    assert record["status"] == "completed", record["error"]

    first, after_tool, _, _ = captured.sent("/responses")
    assert first["max_output_tokens"] == 300 and first["top_p"] == 0.5
    assert first["text"] == {
        "format": {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}
    }
    assert first["tool_choice"] == {"type": "function", "name": "lookup_order"}
    assert "tool_choice" not in after_tool
    assert (first["reasoning"], first["parallel_tool_calls"]) == ({"effort": "low"}, False)
    assert first["safety_identifier"] == "tester"
    assert not {"seed", "stop", "response_format", "max_completion_tokens", "reasoning_effort"} & set(first)
    assert_valid_requests(captured, openai_schema)
    # What the simulator stored of it, read back.
    stored = client.responses.retrieve(record["turns"][0]["run_id"])
    assert (stored.max_output_tokens, stored.top_p, stored.parallel_tool_calls) == (300, 0.5, False)


def test_generation_params_assistants_shape(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    capturing_client: Callable[[RunningSimulator], tuple[openai.OpenAI, Captured]],
    openai_schema: OpenAPISchema,
) -> None:
    client, captured = capturing_client(sim_factory())
    [record] = run_job(write_job(tmp_path, "assistants", {**COMMON, **PER_API["assistants"]}), client)
    assert record["status"] == "completed", record["error"]

    [created] = captured.sent("/assistants")
    assert created["reasoning_effort"] == "low"  # thread-and-run creates take none: set on the assistant
    runs = captured.sent("/threads/runs") + captured.sent("/threads/[^/]+/runs")
    assert len(runs) == 2
    for body in runs:
        assert (body["max_completion_tokens"], body["top_p"]) == (300, 0.5)
        assert body["parallel_tool_calls"] is False
        assert body["response_format"] == CHAT_FORMAT
        assert body["tool_choice"] == COMMON["tool_choice"]
        assert body["max_prompt_tokens"] == 20000
        assert not {"seed", "stop", "reasoning_effort", "max_output_tokens"} & set(body)
    assert_valid_requests(captured, openai_schema)
    # What the simulator stored of it, read back.
    run = client.beta.threads.runs.retrieve(record["turns"][0]["run_id"], thread_id=record["thread_id"])
    assert (run.max_completion_tokens, run.top_p, run.parallel_tool_calls) == (300, 0.5, False)
    assert run.response_format is not None and run.response_format.type == "json_schema"  # type: ignore[union-attr]
    assistant = client.beta.assistants.retrieve(record["assistant"]["id"])
    assert (assistant.model_extra or {}).get("reasoning_effort") == "low"


def test_generation_params_matrix_overrides_per_conversation(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    capturing_client: Callable[[RunningSimulator], tuple[openai.OpenAI, Captured]],
) -> None:
    client, captured = capturing_client(sim_factory())
    matrix = {"seed": [1, 2], "max_output_tokens": [64], "top_p": [0.9]}
    path = write_job(tmp_path, "chat", {"seed": 99, "max_output_tokens": 500}, matrix=matrix)
    records = run_job(path, client)
    assert [r["conversation_id"] for r in records] == [
        "params-chat/c#max_output_tokens=64#seed=1#top_p=0.9#r0",
        "params-chat/c#max_output_tokens=64#seed=2#top_p=0.9#r0",
    ]
    sent = {(b["seed"], b["max_completion_tokens"], b["top_p"]) for b in captured.sent("/chat/completions")}
    assert sent == {(1, 64, 0.9), (2, 64, 0.9)}


@pytest.mark.parametrize(
    ("api", "params", "matrix", "expected"),
    [
        ("responses", {"seed": 1}, {}, "assistants.a.seed: the responses API has no `seed` (only chat has"),
        ("assistants", {"stop": "x"}, {}, "assistants.a.stop: the assistants API has no `stop` (only chat"),
        ("assistants", {"max_output_tokens": 64}, {}, "the assistants API wants at least 256 (its `max_comp"),
        ("responses", {"max_output_tokens": 8}, {}, "the responses API wants at least 16"),
        ("chat", {}, {"api": ["chat", "responses"], "seed": [1]}, "matrix.seed[0]: the responses API has no"),
        ("assistants", {}, {"reasoning_effort": ["low"]}, "matrix.reasoning_effort[0]: the assistants"),
        ("chat", {"tool_choice": {"type": "function", "function": {"name": "lookup"}}}, {},
         "assistants.a.tool_choice.function.name: no function tool 'lookup' (did you mean 'lookup_order'?)"),
        ("chat", {"extra_body": {"max_completion_tokens": 5}}, {}, "set `max_output_tokens:` on the"),
        ("chat", {"extra_body": {"messages": []}}, {}, "'messages' is sent by the runner itself"),
        ("chat", {"stop": ["a", "b", "c", "d", "e"]}, {}, "assistants.a.stop: list 1 to 4 stop sequences"),
        ("chat", {"response_format": {"type": "json_schema", "name": "x"}}, {}, "needs `name` and `schema`"),
        ("chat", {"reasoning_effort": "hgh"}, {}, "assistants.a.reasoning_effort:"),
        ("chat", {}, {"top_p": [2]}, "matrix.top_p[0]: a top_p is a number from 0 to 1, got 2"),
    ],
)  # fmt: skip
def test_generation_params_bad_job_file_is_located(
    api: str, params: dict[str, Any], matrix: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    path = write_job(tmp_path, api, params, **({"matrix": matrix} if matrix else {}))
    with pytest.raises(JobFileError) as info:
        load_job(path)
    problems = [str(p) for p in info.value.problems]
    assert any(expected in p for p in problems), problems
    assert all(re.match(rf"{re.escape(str(path))}:\d+: ", p) for p in problems), problems  # PATH:LINE


def test_generation_params_tool_choice_needs_tools_on_chat(tmp_path: Path) -> None:
    path = write_job(tmp_path, "chat", {"parallel_tool_calls": True})
    data = yaml.safe_load(path.read_text())
    del data["assistants"]["a"]["tools"], data["conversations"][0]["tool_outputs"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(JobFileError) as info:
        load_job(path)
    assert [f"{p.where}: {p.what}" for p in info.value.problems] == [
        "assistants.a.parallel_tool_calls: the chat API takes it only with `tools`"
    ]
