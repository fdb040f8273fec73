"""Unknown usage is null, never 0: in turns, conversation totals, checks, the limiter and reports.

The peer is a small real HTTP server answering Chat Completions the way servers without usage
reporting do (llama-cpp-python's, streamed: it ignores `stream_options.include_usage`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from runner.engine.backends.base import usage_of
from runner.engine.conversation import run_conversation
from runner.engine.limits import Unlimited
from runner.records import add_usage, unknown_usage, write_records
from runner.reports.html import render_html
from runner.reports.pricing import load_prices
from runner.reports.summary import load_transcripts, render_report, summarize
from runner.tasks import Api, AssistantSpec, CheckSpec, ConversationTask, TurnSpec


class _NoUsageChat(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: one fixed reply, with no `usage` (streamed or not)."""

    with_usage = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        base = {"id": "chatcmpl-1", "created": 1, "model": body["model"]}
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for delta, finish in (({"role": "assistant", "content": "Hello"}, None), ({}, "stop")):
                chunk = {**base, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        reply = {**base, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
        ]}  # fmt: skip
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def no_usage_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoUsageChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


class _Settles(Unlimited):
    def __init__(self) -> None:
        self.settled: list[tuple[int, Any]] = []

    def settle(self, estimated: int, actual: int) -> None:
        self.settled.append((estimated, actual))


def _task() -> ConversationTask:
    return ConversationTask(
        conversation_id="j/c#r0",
        job="j",
        api=Api.CHAT,
        model="gpt-4o-mini",
        assistant=AssistantSpec(key="a", name="a", model="gpt-4o-mini"),
        turns=(TurnSpec(user="hi", expect=(CheckSpec(type="max_tokens", value=50),)), TurnSpec(user="again")),
    )


def test_usage_unknown_parsing_and_sums() -> None:
    assert usage_of(None) == unknown_usage()
    partial = {"prompt_tokens": 3, "completion_tokens": None, "total_tokens": None}
    assert usage_of({"prompt_tokens": 3}) == partial
    assert usage_of({"input_tokens": 3, "output_tokens": 4}) == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
    }  # fmt: skip
    assert usage_of({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})["total_tokens"] == 0
    known = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert add_usage(known, known)["total_tokens"] == 6  # type: ignore[arg-type]
    assert add_usage(known, unknown_usage()) == unknown_usage()  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", ["0", "1"])
def test_usage_unknown_from_a_server_without_usage(
    stream: str, no_usage_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_CHAT_STREAM", stream)
    client = openai.OpenAI(base_url=no_usage_server, api_key="sk-test", max_retries=0)
    limiter = _Settles()
    record = run_conversation(_task(), batch_id="b1", limiter=limiter, client=client)
    client.close()

    assert record["status"] == "completed", record["error"]
    assert [t["assistant"] for t in record["turns"]] == ["Hello", "Hello"]
    assert all(t["usage"] == unknown_usage() for t in record["turns"])
    assert record["usage"] == unknown_usage()  # a total over unknown turns is unknown
    [check] = record["turns"][0]["checks"]
    assert (check["type"], check["passed"]) == ("max_tokens", False)  # unknown never passes a cap
    assert check["detail"] == "expected at most 50 completion tokens; usage is unknown (none reported)"
    assert limiter.settled == []  # the estimate stands; the limiter is never fed None

    path = tmp_path / "out.jsonl"
    write_records(path, [record])
    records = load_transcripts(path)  # a record with null usage is a valid record
    text = render_report(records, load_prices())
    assert "tokens: unknown (1 conversation without usage)" in text
    assert "estimated cost: unknown (1 conversation without usage)" in text  # a priced model, no usage
    assert summarize(records).unknown_usage == 1
    html = render_html(records, prices=load_prices())
    assert "<td>unknown</td>" in html and "0 tokens" not in html
