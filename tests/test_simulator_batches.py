"""The simulator's Files and Batch APIs through the real SDK, every answer checked against the
OpenAPI schemas: lifecycle, validation of every line, output and error files, faults, expiry, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from runner.simulator import RunningSimulator

BATCH_LATENCY_S = 0.3
TERMINAL = ("completed", "failed", "expired", "cancelled")
CHAT = "/v1/chat/completions"


def chat_line(i: int, text: str = "hi", model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"{text} {i}"}]}
    return {"custom_id": f"c{i}", "method": "POST", "url": CHAT, "body": body, **extra}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def submit(client: openai.OpenAI, lines: list[Any], endpoint: str = CHAT) -> Any:
    f = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]


def wait(client: openai.OpenAI, batch: Any, timeout: float = 10.0) -> tuple[Any, list[str]]:
    seen = [batch.status]
    deadline = time.monotonic() + timeout
    while batch.status not in TERMINAL:
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.03)
        batch = client.batches.retrieve(batch.id)
        if batch.status != seen[-1]:
            seen.append(batch.status)
    return batch, seen


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x.strip()]


@pytest.fixture
def batch_sim(sim_factory: Callable[..., RunningSimulator]) -> Callable[..., RunningSimulator]:
    def make(**config: Any) -> RunningSimulator:
        config.setdefault("batch_latency_s", BATCH_LATENCY_S)
        return sim_factory(**config)

    return make


def test_simulator_batch_chat_lifecycle_and_output(batch_sim, openai_client, validate_against) -> None:
    sim = batch_sim(rules={"rules": [{"when": "(?i)refund", "reply": "Refunds within 30 days."}]})
    client = openai_client(sim)
    created = submit(client, [chat_line(0, "refund please"), chat_line(1, "hello")])
    assert created.status == "validating"
    assert created.request_counts.total == 0
    done, seen = wait(client, created)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert done.request_counts.model_dump() == {"total": 2, "completed": 2, "failed": 0}
    assert done.error_file_id is None and done.model == "gpt-4o-mini"
    assert done.completed_at >= done.finalizing_at >= done.in_progress_at >= done.created_at
    out = {x["custom_id"]: x for x in lines_of(client, done.output_file_id)}
    assert set(out) == {"c0", "c1"}
    for line in out.values():
        assert line["error"] is None and line["response"]["status_code"] == 200
        validate_against("CreateChatCompletionResponse", line["response"]["body"])
    assert out["c0"]["response"]["body"]["choices"][0]["message"]["content"] == "Refunds within 30 days."
    assert out["c1"]["response"]["body"]["choices"][0]["message"]["content"] == "You said: hello 1"
    assert done.usage.total_tokens == sum(
        x["response"]["body"]["usage"]["total_tokens"] for x in out.values()
    )
    assert client.batches.list().data[0].id == done.id
    # Lines are not requests: the simulator served the upload, the create, the polls and the download.
    assert sim.stats()["by_route"].get("POST /v1/chat/completions", 0) == 0


def test_simulator_batch_responses_chain_previous_response(
    batch_sim, openai_client, validate_against
) -> None:
    rules = {
        "rules": [
            {
                "when": "(?i)order",
                "call": "lookup",
                "arguments": {"id": "A1"},
                "then": "Order: {{tool_output}}",
            }
        ]
    }
    sim = batch_sim(rules=rules)
    client = openai_client(sim)
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    first = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4o-mini", "input": "where is my order", "tools": [tool]},
    }
    done, _ = wait(client, submit(client, [first], "/v1/responses"))
    [line] = lines_of(client, done.output_file_id)
    body = line["response"]["body"]
    validate_against("Response", body)
    call = body["output"][0]
    assert call["type"] == "function_call" and call["name"] == "lookup"
    second = {
        "custom_id": "a2",
        "method": "POST",
        "url": "/v1/responses",
        "body": {
            "model": "gpt-4o-mini",
            "previous_response_id": body["id"],
            "tools": [tool],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "shipped"}],
        },
    }
    done, _ = wait(client, submit(client, [second], "/v1/responses"))
    [line] = lines_of(client, done.output_file_id)
    assert line["response"]["body"]["output"][0]["content"][0]["text"] == "Order: shipped"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("{not json", "invalid_json_line"),
        ({"custom_id": "c0", "method": "POST", "url": CHAT}, "missing_required_parameter"),
        (chat_line(0), "duplicate_custom_id"),
        ({**chat_line(5), "method": "GET"}, "invalid_method"),
        ({**chat_line(6), "url": "/v1/responses"}, "invalid_url"),
        (chat_line(7, model="gpt-4.1-mini"), "mismatched_model"),
        (
            {**chat_line(8), "body": {"model": "gpt-4o-mini", "messages": [], "stream": True}},
            "invalid_request",
        ),
        ({**chat_line(9), "extra": 1}, "invalid_request"),
    ],
)
def test_simulator_batch_bad_line_fails_at_validating(batch_sim, openai_client, line, code) -> None:
    client = openai_client(batch_sim())
    done, seen = wait(client, submit(client, [chat_line(0), line]))
    assert seen == ["validating", "failed"]
    assert done.failed_at is not None and done.output_file_id is None
    [error] = done.errors.data
    assert error.code == code and error.line == 2


def test_simulator_batch_faults_go_to_the_error_file(batch_sim, openai_client) -> None:
    client = openai_client(batch_sim(batch_fault_rate=1.0))
    done, _ = wait(client, submit(client, [chat_line(i) for i in range(3)]))
    assert done.status == "completed" and done.output_file_id is None
    assert done.request_counts.model_dump() == {"total": 3, "completed": 0, "failed": 3}
    errors = lines_of(client, done.error_file_id)
    assert sorted(x["custom_id"] for x in errors) == ["c0", "c1", "c2"]
    assert {x["response"]["status_code"] for x in errors} == {500}
    assert errors[0]["response"]["body"]["error"]["type"] == "server_error"


def test_simulator_batch_line_rejected_by_its_route_is_an_error_line(batch_sim, openai_client) -> None:
    client = openai_client(batch_sim())
    bad = {**chat_line(1), "body": {"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}}
    done, _ = wait(client, submit(client, [chat_line(0), bad]))
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
    [error] = lines_of(client, done.error_file_id)
    assert error["custom_id"] == "c1" and error["response"]["status_code"] == 400


def test_simulator_batch_expiry_leaves_half_unrun(batch_sim, openai_client) -> None:
    client = openai_client(batch_sim(batch_expire_rate=1.0))
    done, seen = wait(client, submit(client, [chat_line(i) for i in range(4)]))
    assert seen[-1] == "expired" and "finalizing" not in seen
    assert done.expired_at is not None
    assert done.request_counts.model_dump() == {"total": 4, "completed": 2, "failed": 2}
    assert [x["custom_id"] for x in lines_of(client, done.output_file_id)] == ["c0", "c1"]
    expired = lines_of(client, done.error_file_id)
    assert [x["custom_id"] for x in expired] == ["c2", "c3"]
    assert expired[0]["response"] is None and expired[0]["error"]["code"] == "batch_expired"


def test_simulator_batch_cancel(batch_sim, openai_client) -> None:
    client = openai_client(batch_sim(batch_latency_s=5.0))
    created = submit(client, [chat_line(0)])
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done, _ = wait(client, cancelling)
    assert done.status == "cancelled" and done.cancelled_at is not None
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(created.id)


def test_simulator_files_upload_list_content_delete(batch_sim, openai_client) -> None:
    client = openai_client(batch_sim())
    a = client.files.create(file=("a.jsonl", b'{"x": 1}\n'), purpose="batch")
    b = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    assert a.bytes == 9 and a.purpose == "batch" and a.expires_at == a.created_at + 30 * 24 * 3600
    assert [f.id for f in client.files.list(purpose="batch")] == [a.id]
    assert {f.id for f in client.files.list()} == {a.id, b.id}
    assert client.files.retrieve(a.id).filename == "a.jsonl"
    assert client.files.content(a.id).content == b'{"x": 1}\n'
    assert client.files.delete(a.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(a.id)
    with pytest.raises(openai.BadRequestError, match=r"\.jsonl"):
        client.files.create(file=("in.csv", b"a,b"), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
