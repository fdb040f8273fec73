"""Conversations + Responses: what works against OpenAI itself today.

A conversation object per task (`POST /conversations`; its id is the record's `thread_id`); per
turn a response with `conversation`, `instructions`, `tools` and `model`, the user message as
`input`. Function calls are answered with `function_call_output` items from the conversation's
`tool_outputs`, in a follow-up response on the same conversation. A response that fails with a
transient error (server_error) is asked again with no new input, up to `max_attempts`.

Responses are created with `background: true`, so one that outlives `run_timeout_s` can be
cancelled, and one whose stream broke can be read again. Waiting (`RUNNER_RESPONSES_WAIT`):
    stream (default)  `stream: true` as well: the whole response in one request (the floor).
    poll              GETs paced like the assistants backend (see `Pacer`).
Function tools are converted from the job's shape `{type, function: {name, …}}` to the Responses
shape `{type, name, description, parameters, strict}`.

A response create that got no answer may have added our input to the conversation; before sending
it again the conversation's items are read, and if our input is there the reply that follows it is
taken from the items instead of asking twice.
"""

from __future__ import annotations

import time
from typing import Any

import openai

from runner.engine.backends.base import (
    EXPECTED_COMPLETION_TOKENS,
    Backend,
    Conversation,
    MissingToolOutput,
    Pacer,
    TurnResult,
    estimate_tokens,
    parse_arguments,
    poll_after_s,
    stream_timeout,
    usage_of,
)
from runner.engine.backends.params import response_params
from runner.engine.retry import Caller, backoff_s
from runner.errors import BackendError
from runner.records import ToolCallRecord
from runner.tasks import Api, ConversationTask

WAIT_ENV = "RUNNER_RESPONSES_WAIT"
WAIT_MODES = ("stream", "poll")

ACTIVE = frozenset({"queued", "in_progress"})
MAX_TOOL_ROUNDS = 16
TRANSIENT_ERRORS = frozenset({"server_error", "rate_limit_exceeded"})
"""A response that failed with one of these is asked again (up to `max_attempts`)."""
CANCEL_WAIT_S = 5.0


def response_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """`{type: function, function: {name, description, parameters}}` → the Responses tool shape."""
    if tool.get("type") != "function" or "function" not in tool:
        return dict(tool)
    fn = tool["function"]
    out: dict[str, Any] = {
        "type": "function",
        "name": fn["name"],
        "parameters": fn.get("parameters"),
        "strict": fn.get("strict", False),  # the Responses API defaults to strict; the job's shape does not
    }
    if fn.get("description") is not None:
        out["description"] = fn["description"]
    return out


class _Outcome:
    """One response as far as a turn cares (built from a Response object, events or items)."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.status: str | None = None
        self.text: list[str] = []
        self.calls: list[dict[str, str]] = []  # {call_id, name, arguments}
        self.usage: Any = None
        self.error: str | None = None
        self.error_code: str | None = None
        self.poll_s: float | None = None

    @classmethod
    def of(cls, response: Any, poll_s: float | None = None) -> _Outcome:
        out = cls()
        out.id, out.status, out.usage, out.poll_s = response.id, response.status, response.usage, poll_s
        for item in response.output or []:
            out.add_item(item)
        err = getattr(response, "error", None)
        if err is not None:
            out.error_code = getattr(err, "code", None)
            out.error = f"{out.error_code}: {getattr(err, 'message', None)}"
        details = getattr(response, "incomplete_details", None)
        if details is not None and out.status == "incomplete":
            out.error = f"incomplete: {getattr(details, 'reason', None) or 'no reason given'}"
        return out

    def add_item(self, item: Any) -> None:
        kind = getattr(item, "type", None)
        if kind == "message" and getattr(item, "role", None) == "assistant":
            for part in getattr(item, "content", None) or []:
                if getattr(part, "type", None) == "output_text" and getattr(part, "text", None):
                    self.text.append(part.text)
        elif kind == "function_call":
            self.calls.append({"call_id": item.call_id, "name": item.name, "arguments": item.arguments})


class ResponsesBackend(Backend):
    api = Api.RESPONSES

    def __init__(self, client: openai.OpenAI, wait: str | None = None):
        super().__init__(client)
        mode = (wait or "stream").strip().lower()
        if mode not in WAIT_MODES:
            raise BackendError(f"{WAIT_ENV} must be one of {', '.join(WAIT_MODES)}, not {mode!r}")
        self.wait = mode
        self.pacer = Pacer()

    def open(self, task: ConversationTask, caller: Caller, tag: dict[str, str]) -> ResponsesConversation:
        return ResponsesConversation(self, task, caller, tag)


class ResponsesConversation(Conversation):
    def __init__(
        self, backend: ResponsesBackend, task: ConversationTask, caller: Caller, tag: dict[str, str]
    ):
        super().__init__(task, caller, tag)
        self.backend = backend
        self.responses: Any = backend.client.responses
        self.items: Any = backend.client.conversations.items
        self.stream = backend.wait == "stream"
        self.context_chars = len(task.assistant.instructions or "")
        self.user_messages = 0  # user messages known to be in the conversation
        self.max_attempts = max(1, task.limits.max_attempts)

    def _turn(self, index: int, user: str, result: TurnResult) -> None:
        if self.thread_id is None:
            conversations: Any = self.backend.client.conversations
            self.thread_id = self.caller.call(lambda: conversations.create(metadata=self.tag)).id
        deadline = time.monotonic() + self.deadline_s
        self.context_chars += len(user)
        turn_input: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": user}]
        text: list[str] = []
        reruns = 0
        for round_ in range(MAX_TOOL_ROUNDS):
            estimate = estimate_tokens("x" * self.context_chars) + EXPECTED_COMPLETION_TOKENS
            result.estimated_tokens += estimate
            out = self._respond(turn_input, estimate, deadline)
            result.run_id, result.run_status = out.id, out.status
            result.add_usage(usage_of(out.usage))
            if round_ == 0 and out.status is not None:
                self.user_messages += 1  # the server took our message (whatever became of the reply)
            if out.status in ACTIVE:
                out = self._cancel(out)
                result.run_status = out.status
                result.status = "cancelled" if out.status != "completed" else "completed"
                if out.status != "completed":
                    result.error = f"response {out.id} still active after run_timeout_s={self.deadline_s:g}s"
                    return
            text.extend(out.text)
            if (
                out.status == "failed"
                and out.error_code in TRANSIENT_ERRORS
                and reruns + 1 < self.max_attempts
            ):
                # A transient failure: ask again. Our input is already in the conversation.
                self.caller.sleep(backoff_s(reruns))
                reruns += 1
                turn_input = []
                continue
            if out.status != "completed":
                result.status = out.status if out.status in ("failed", "cancelled", "incomplete") else "error"
                result.error = f"response {out.id} {out.status}: {out.error or 'no error given'}"
                return
            if not out.calls:
                break
            turn_input = []
            for call in out.calls:
                record: ToolCallRecord = {
                    "name": call["name"],
                    "arguments": parse_arguments(call["arguments"]),
                    "output": None,
                }
                result.tool_calls.append(record)
                try:
                    output = record["output"] = self.tool_output(call["name"], record["arguments"])
                except MissingToolOutput:
                    result.run_status = "cancelled"
                    raise
                turn_input.append(
                    {"type": "function_call_output", "call_id": call["call_id"], "output": output}
                )
        else:
            raise BackendError(f"the model kept calling tools after {MAX_TOOL_ROUNDS} rounds")
        result.status = "completed"
        result.assistant = "".join(text)
        self.context_chars += len(result.assistant)

    # -- requests -----------------------------------------------------------------------------

    def _body(self, turn_input: list[dict[str, Any]]) -> dict[str, Any]:
        return response_request(self.task, turn_input, {"conversation": self.thread_id})

    @staticmethod
    def _body_of(
        task: ConversationTask, turn_input: list[dict[str, Any]], context: dict[str, Any]
    ) -> dict[str, Any]:
        spec = task.assistant
        body: dict[str, Any] = {"model": task.model, **context, "input": turn_input}
        if spec.instructions:
            body["instructions"] = spec.instructions
        if spec.tools:
            body["tools"] = [response_tool(dict(t)) for t in spec.tools]
        if spec.temperature is not None:
            body["temperature"] = spec.temperature
        body.update(response_params(spec))
        if any(item.get("type") == "function_call_output" for item in turn_input):
            body.pop("tool_choice", None)  # a forced tool choice holds for the user's message only
        return body

    def _respond(self, turn_input: list[dict[str, Any]], estimate: int, deadline: float) -> _Outcome:
        body = self._body(turn_input)
        asked = time.monotonic()

        def reconcile() -> _Outcome | None:
            return self._find_in_items(turn_input, deadline)

        if self.stream:
            timeout = stream_timeout(deadline)
            stream = self.caller.call(
                lambda: self.responses.create(background=True, stream=True, timeout=timeout, **body),
                tokens=estimate,
                reconcile=reconcile,
            )
            if isinstance(stream, _Outcome):
                return stream
            return self._consume(stream, deadline, asked)
        raw = self.caller.call(
            lambda: self.responses.with_raw_response.create(background=True, **body),
            tokens=estimate,
            reconcile=reconcile,
        )
        if isinstance(raw, _Outcome):
            return raw
        out = _Outcome.of(raw.parse(), poll_after_s(raw.headers))
        return self._poll(out, deadline, asked)

    def _consume(self, stream: Any, deadline: float, asked: float) -> _Outcome:
        out = _Outcome()
        kind = ""
        try:
            for event in stream:
                kind = getattr(event, "type", "")
                response = getattr(event, "response", None)
                if response is not None:
                    out = _Outcome.of(response)
                    if out.status not in ACTIVE:
                        self.backend.pacer.observe(time.monotonic() - asked)  # a stream sees the moment
                        break
                if time.monotonic() >= deadline:
                    break
        except openai.APIStatusError:
            raise
        except openai.APIError:
            if out.id is None:
                raise
            # The stream broke after the response began: read it (it is stored) until it ends.
            return self._poll(out, deadline, asked)
        finally:
            stream.close()
        if kind == "error" and out.id is None:
            raise BackendError("the response stream ended with an error event")
        return out

    def _retrieve(self, out: _Outcome) -> _Outcome:
        rid = out.id
        raw = self.caller.call(lambda: self.responses.with_raw_response.retrieve(rid))
        return _Outcome.of(raw.parse(), poll_after_s(raw.headers) or out.poll_s)

    def _poll(self, out: _Outcome, deadline: float, asked: float | None = None) -> _Outcome:
        """GET the response until it ends or the deadline passes (see `Pacer`); `asked` is when it
        was created (None: a cancel being awaited, which teaches the pacer nothing)."""
        began = asked if asked is not None else time.monotonic()
        active_seen: float | None = None
        polls = 0
        while out.status in ACTIVE:
            now = time.monotonic()
            if now >= deadline:
                return out
            self.caller.sleep(min(self.backend.pacer.wait_s(now - began, polls, out.poll_s), deadline - now))
            out = self._retrieve(out)
            polls += 1
            if out.status in ACTIVE:
                active_seen = time.monotonic() - began
            elif asked is not None:
                self.backend.pacer.observe_polled(active_seen, time.monotonic() - began)
        return out

    def _cancel(self, out: _Outcome) -> _Outcome:
        """Cancel a response that outlived its deadline (only background responses can be)."""
        rid = out.id
        if rid is None:  # known only from the conversation's items: nothing to cancel by id
            out.status = "cancelled"
            return out
        try:
            cancelled = _Outcome.of(self.caller.call(lambda: self.responses.cancel(rid)))
        except openai.BadRequestError:
            cancelled = out
            cancelled.status = "cancelled"  # a foreground response: abandoned, the stream is closed
        if cancelled.status in ACTIVE:
            cancelled = self._poll(cancelled, time.monotonic() + CANCEL_WAIT_S)
        if cancelled.status in ACTIVE:
            cancelled.status = "cancelled"
        return cancelled

    def _find_in_items(self, turn_input: list[dict[str, Any]], deadline: float) -> _Outcome | None:
        """After an unanswered create: if our input reached the conversation, the reply that
        follows it is the response's (waited for, paced, until the deadline); None means send
        again. Our user message is recognised by count (the same text may have been sent in an
        earlier turn), a tool output by call id."""
        if not turn_input:
            return None  # nothing of ours to look for: asking again adds nothing to the conversation
        began = time.monotonic()
        checks = 0
        while True:
            items = self._all_items()
            mine = self._position_of(items, turn_input[-1])
            if mine is None:
                return None  # it never arrived: send it
            out = _Outcome()
            for item in items[mine + 1 :]:
                out.add_item(item)
            if out.text or out.calls:
                out.status = "completed"
                return out
            now = time.monotonic()
            if now >= deadline:
                out.status = "in_progress"  # arrived, but no reply in time: cancelled as overdue
                return out
            self.caller.sleep(min(self.backend.pacer.wait_s(now - began, checks, None), deadline - now))
            checks += 1

    def _all_items(self) -> list[Any]:
        conv = self.thread_id
        items: list[Any] = []
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 100, "order": "asc"}
            if after:
                kwargs["after"] = after
            page = self.caller.call(lambda kw=kwargs: self.items.list(conv, **kw))
            items.extend(page.data)
            if not page.data or not page.has_more:
                return items
            after = page.data[-1].id

    def _position_of(self, items: list[Any], last: dict[str, Any]) -> int | None:
        mine: int | None = None
        users = 0
        for i, item in enumerate(items):
            kind = getattr(item, "type", None)
            if last.get("type") == "function_call_output":
                if kind == "function_call_output" and getattr(item, "call_id", None) == last["call_id"]:
                    mine = i
            elif kind == "message" and getattr(item, "role", None) == "user":
                users += 1
                if users == self.user_messages + 1:
                    mine = i
        return mine


def response_request(
    task: ConversationTask, turn_input: list[dict[str, Any]], context: dict[str, Any]
) -> dict[str, Any]:
    """The body of one response for `task`; `context` names the history (`conversation` or
    `previous_response_id`). Used by direct turns and by Batch API lines."""
    return ResponsesConversation._body_of(task, turn_input, context)


ResponseOutcome = _Outcome
"""What a turn needs of one response (`ResponseOutcome.of(response)`), for batch output lines too."""
