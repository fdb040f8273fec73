"""Chat Completions, the protocol every OpenAI-compatible server speaks (vLLM, Ollama, LiteLLM, …).

The server keeps no state: the history (system instructions, user turns, assistant replies, tool
calls and their outputs) is kept here and sent whole with every request. A turn is one request,
plus one per round of tool calls, each answered with `role: tool` messages from the
conversation's `tool_outputs`. Requests are stateless, so sending one again is always safe.
Streaming is off by default (it costs the same one request); `RUNNER_CHAT_STREAM=1` turns it on.
The record's `thread_id` is null.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import openai

from runner.engine.backends.base import (
    EXPECTED_COMPLETION_TOKENS,
    Backend,
    Conversation,
    MissingToolOutput,
    Overdue,
    TurnResult,
    estimate_tokens,
    parse_arguments,
    stream_timeout,
    usage_of,
)
from runner.engine.backends.params import chat_params
from runner.engine.retry import Caller
from runner.errors import BackendError
from runner.records import ToolCallRecord, unknown_usage
from runner.tasks import Api, ConversationTask

MAX_TOOL_ROUNDS = 16
"""A model that keeps calling tools this many times in one turn is stopped (it would never end)."""


class ChatBackend(Backend):
    api = Api.CHAT

    def __init__(self, client: openai.OpenAI, stream: bool = False):
        super().__init__(client)
        self.stream = stream

    def open(self, task: ConversationTask, caller: Caller, tag: dict[str, str]) -> ChatConversation:
        return ChatConversation(self, task, caller, tag)


class _Reply:
    def __init__(self) -> None:
        self.text = ""
        self.tool_calls: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.id: str | None = None


class ChatConversation(Conversation):
    def __init__(self, backend: ChatBackend, task: ConversationTask, caller: Caller, tag: dict[str, str]):
        super().__init__(task, caller, tag)
        self.backend = backend
        self.completions: Any = backend.client.chat.completions
        self.history: list[dict[str, Any]] = []
        if task.assistant.instructions:
            self.history.append({"role": "system", "content": task.assistant.instructions})

    def _turn(self, index: int, user: str, result: TurnResult) -> None:
        deadline = time.monotonic() + self.deadline_s
        pending = [*self.history, {"role": "user", "content": user}]
        for round_ in range(MAX_TOOL_ROUNDS):
            estimate = estimate_tokens(json.dumps(pending)) + EXPECTED_COMPLETION_TOKENS
            result.estimated_tokens += estimate
            try:
                reply = self._complete(pending, estimate, deadline, first=round_ == 0)
            except Overdue as e:
                result.add_usage(unknown_usage())  # the server may have generated and counted tokens
                result.status = result.run_status = "cancelled"
                result.error = f"{e}: request abandoned"
                return
            result.run_id = reply.id
            result.add_usage(usage_of(reply.usage))
            if not reply.tool_calls:
                break
            pending.append(
                {"role": "assistant", "content": reply.text or None, "tool_calls": reply.tool_calls}
            )
            for call in reply.tool_calls:
                name = call["function"]["name"]
                record: ToolCallRecord = {
                    "name": name,
                    "arguments": parse_arguments(call["function"].get("arguments")),
                    "output": None,
                }
                result.tool_calls.append(record)
                try:
                    output = record["output"] = self.tool_output(name, record["arguments"])
                except MissingToolOutput:
                    result.run_status = "cancelled"
                    raise
                pending.append({"role": "tool", "tool_call_id": call["id"], "content": output})
        else:
            raise BackendError(f"the model kept calling tools after {MAX_TOOL_ROUNDS} rounds")
        result.run_status = "completed" if reply.finish_reason != "length" else "incomplete"
        result.assistant = reply.text
        if result.run_status == "incomplete":
            result.status, result.error = "incomplete", "reply cut off: finish_reason length"
            return
        result.status = "completed"
        self.history = [*pending, {"role": "assistant", "content": reply.text}]

    def _request(self, messages: list[dict[str, Any]], first: bool = True) -> dict[str, Any]:
        return chat_request(self.task, messages, first)

    @staticmethod
    def _request_of(
        task: ConversationTask, messages: list[dict[str, Any]], first: bool = True
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": task.model, "messages": messages}
        if task.assistant.tools:
            body["tools"] = [dict(t) for t in task.assistant.tools]
        if task.assistant.temperature is not None:
            body["temperature"] = task.assistant.temperature
        body.update(chat_params(task.assistant))
        if not first:  # a forced tool choice holds for the user's message, not the answer to its tool outputs
            body.pop("tool_choice", None)
        return body

    def _complete(
        self, messages: list[dict[str, Any]], estimate: int, deadline: float, first: bool = True
    ) -> _Reply:
        body = self._request(messages, first)

        def send() -> _Reply:
            # Stateless: a stream that breaks midway is simply asked again, through the retry layer.
            timeout = stream_timeout(deadline)
            try:
                if self.backend.stream:
                    options = {"stream": True, "stream_options": {"include_usage": True}}
                    return self._read_stream(
                        self.completions.create(timeout=timeout, **options, **body), deadline
                    )
                return self._parse(self.completions.create(timeout=timeout, **body))
            except openai.APITimeoutError:
                if time.monotonic() >= deadline:
                    raise Overdue(f"no reply within run_timeout_s={self.deadline_s:g}s") from None
                raise

        return self.caller.call(send, tokens=estimate)

    @staticmethod
    def _parse(completion: Any) -> _Reply:
        reply = _Reply()
        reply.id, reply.usage = completion.id, completion.usage
        if not completion.choices:
            raise BackendError("the server answered with no choices")
        choice = completion.choices[0]
        reply.text = choice.message.content or ""
        reply.finish_reason = choice.finish_reason
        reply.tool_calls = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in choice.message.tool_calls or []
            if getattr(c, "function", None) is not None
        ]
        return reply

    def _read_stream(self, stream: Any, deadline: float) -> _Reply:
        reply = _Reply()
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        try:
            for chunk in stream:
                reply.id = reply.id or chunk.id
                if chunk.usage is not None:
                    reply.usage = chunk.usage
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                    for tc in delta.tool_calls or []:
                        slot = calls.setdefault(
                            tc.index,
                            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                        )
                        slot["id"] = tc.id or slot["id"] or f"call_{uuid.uuid4().hex[:24]}"
                        if tc.function is not None:
                            slot["function"]["name"] += tc.function.name or ""
                            slot["function"]["arguments"] += tc.function.arguments or ""
                    if choice.finish_reason:
                        reply.finish_reason = choice.finish_reason
                if time.monotonic() >= deadline:
                    raise Overdue(f"no complete reply within run_timeout_s={self.deadline_s:g}s")
        finally:
            stream.close()
        reply.text = "".join(text)
        reply.tool_calls = [calls[i] for i in sorted(calls)]
        return reply


def chat_request(
    task: ConversationTask, messages: list[dict[str, Any]], first: bool = True
) -> dict[str, Any]:
    """The body of one chat completion for `task` (a direct request, or a Batch API line's body);
    `first`: it carries the user's message (not the answer to tool outputs)."""
    return ChatConversation._request_of(task, messages, first)


def parse_completion(completion: Any) -> _Reply:
    """What a turn needs of a ChatCompletion (the SDK's object, or one built from a batch output line)."""
    return ChatConversation._parse(completion)
