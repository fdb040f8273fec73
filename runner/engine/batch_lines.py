"""One conversation carried through the provider's Batch API, one request per round.

A direct turn is a loop of requests (reply, or tool calls → tool outputs → reply). Through the
Batch API each of those requests is one line of a round's input file, so the loop becomes a state
that survives between rounds (and between processes: it is stored in Redis as JSON):

    LineState            where the conversation stands: turn, request within the turn, attempt,
                         the history (chat) or the last response id (responses), the turn so far
    request_body()       the next line's body, built by the backend's own request builder
    accept()             a 200 line: parsed by the backend's own parser; tool calls are answered
                         from `tool_outputs` in the next round, a reply finishes the turn (checks)
    fail()               an errored line: sent again in a later round up to `limits.max_attempts`,
                         then recorded as the turn's error
    to_record()          the transcript record (`runner.records.new_record`), turns `via: batch`

For chat the whole history travels in every line; for responses, `previous_response_id` chains
the replies (no conversation object: batch lines cannot create one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from runner.engine.backends.base import MissingToolOutput, parse_arguments, tool_output, usage_of
from runner.engine.backends.chat import MAX_TOOL_ROUNDS, chat_request, parse_completion
from runner.engine.backends.responses import TRANSIENT_ERRORS, ResponseOutcome, response_request
from runner.jobs.checks import evaluate_turn
from runner.records import (
    Record,
    ToolCallRecord,
    TurnRecord,
    Usage,
    add_usage,
    empty_usage,
    new_record,
    utc_stamp,
)
from runner.tasks import Api, ConversationTask

ENDPOINTS = {Api.CHAT: "/v1/chat/completions", Api.RESPONSES: "/v1/responses"}


@dataclass
class LineState:
    """A conversation between rounds (JSON through `asdict` / `LineState(**data)`)."""

    conversation_id: str
    started_at: str
    turn: int = 0
    step: int = 0  # request within the turn (tool rounds)
    attempt: int = 1  # tries of the current request
    history: list[dict[str, Any]] = field(default_factory=list)  # chat: the messages before this turn
    pending: list[dict[str, Any]] = field(default_factory=list)  # chat: this turn's; responses: next input
    previous_response_id: str | None = None
    text: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=empty_usage)
    run_id: str | None = None
    run_status: str | None = None
    latency_ms: int = 0
    provider_batch_id: str | None = None
    turns: list[TurnRecord] = field(default_factory=list)
    status: str | None = None  # None while the conversation goes on
    error: str | None = None
    lines: int = 0  # requests sent for it (lines of input files)

    @property
    def live(self) -> bool:
        return self.status is None

    def custom_id(self) -> str:
        """Unique within a round (one line per conversation): the conversation id and its turn."""
        return f"{self.conversation_id}~t{self.turn}.{self.step}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineState:
        return cls(**data)


def start(task: ConversationTask) -> LineState:
    state = LineState(task.conversation_id, utc_stamp(datetime.now(UTC)))
    if task.api is Api.CHAT and task.assistant.instructions:
        state.history.append({"role": "system", "content": task.assistant.instructions})
    _begin_turn(task, state)
    return state


def _begin_turn(task: ConversationTask, state: LineState) -> None:
    user = task.turns[state.turn].user
    if task.api is Api.CHAT:
        state.pending = [{"role": "user", "content": user}]
    else:
        state.pending = [{"type": "message", "role": "user", "content": user}]
    state.step, state.attempt = 0, 1
    state.text, state.tool_calls, state.usage = [], [], empty_usage()
    state.run_id = state.run_status = state.provider_batch_id = None
    state.latency_ms = 0


def request_body(task: ConversationTask, state: LineState) -> dict[str, Any]:
    """The body of the conversation's next line."""
    if task.api is Api.CHAT:
        first = not any(m.get("role") == "tool" for m in state.pending)  # not answering tool calls
        return chat_request(task, [*state.history, *state.pending], first)
    context = {"previous_response_id": state.previous_response_id} if state.previous_response_id else {}
    return response_request(task, state.pending, context)


def line(task: ConversationTask, state: LineState) -> dict[str, Any]:
    """One line of an input file (`custom_id`, `method`, `url`, `body`)."""
    return {
        "custom_id": state.custom_id(),
        "method": "POST",
        "url": ENDPOINTS[task.api],
        "body": request_body(task, state),
    }


def accept(
    task: ConversationTask, state: LineState, body: dict[str, Any], *, provider_batch_id: str, latency_ms: int
) -> None:
    """A line answered 200: go on with the turn (tool outputs next round) or finish it."""
    state.lines += 1
    state.latency_ms += latency_ms
    state.provider_batch_id = provider_batch_id
    try:
        if task.api is Api.CHAT:
            _accept_chat(task, state, body)
        else:
            _accept_response(task, state, body)
    except MissingToolOutput as e:
        state.run_status = "cancelled"
        _finish_turn(task, state, "error", str(e))


def _tool_round(state: LineState) -> bool:
    """One more request in this turn; False (the turn fails) when the model never stops calling tools."""
    state.step += 1
    state.attempt = 1
    return state.step < MAX_TOOL_ROUNDS


def _tool_output(task: ConversationTask, state: LineState, name: str, arguments: Any) -> str:
    return tool_output(task, name, arguments, state.turn, task.turns[state.turn].user)


def _accept_chat(task: ConversationTask, state: LineState, body: dict[str, Any]) -> None:
    reply = parse_completion(ChatCompletion.model_validate(body))
    state.run_id = reply.id
    _add_usage(state, usage_of(reply.usage))
    if reply.tool_calls:
        state.pending.append(
            {"role": "assistant", "content": reply.text or None, "tool_calls": reply.tool_calls}
        )
        for call in reply.tool_calls:
            name = call["function"]["name"]
            record: ToolCallRecord = {
                "name": name,
                "arguments": parse_arguments(call["function"].get("arguments")),
                "output": None,
            }
            state.tool_calls.append(record)
            output = record["output"] = _tool_output(task, state, name, record["arguments"])
            state.pending.append({"role": "tool", "tool_call_id": call["id"], "content": output})
        if not _tool_round(state):
            _finish_turn(task, state, "error", f"the model kept calling tools after {MAX_TOOL_ROUNDS} rounds")
        return
    state.run_status = "completed" if reply.finish_reason != "length" else "incomplete"
    state.text = [reply.text]
    if state.run_status == "incomplete":
        _finish_turn(task, state, "incomplete", "reply cut off: finish_reason length", reply.text)
        return
    state.history = [*state.history, *state.pending, {"role": "assistant", "content": reply.text}]
    _finish_turn(task, state, "completed", None)


def _accept_response(task: ConversationTask, state: LineState, body: dict[str, Any]) -> None:
    out = ResponseOutcome.of(Response.model_validate(body))
    state.run_id, state.run_status = out.id, out.status
    _add_usage(state, usage_of(out.usage))
    if out.status == "failed" and out.error_code in TRANSIENT_ERRORS:
        state.lines -= 1  # counted again by fail()
        fail(task, state, f"response {out.id} failed: {out.error}", retryable=True)
        return
    if out.status != "completed":
        status = out.status if out.status in ("failed", "cancelled", "incomplete") else "error"
        _finish_turn(task, state, status, f"response {out.id} {out.status}: {out.error or 'no error given'}")
        return
    state.previous_response_id = out.id
    state.text.extend(out.text)
    if out.calls:
        state.pending = []
        for call in out.calls:
            record: ToolCallRecord = {
                "name": call["name"],
                "arguments": parse_arguments(call["arguments"]),
                "output": None,
            }
            state.tool_calls.append(record)
            output = record["output"] = _tool_output(task, state, call["name"], record["arguments"])
            state.pending.append(
                {"type": "function_call_output", "call_id": call["call_id"], "output": output}
            )
        if not _tool_round(state):
            _finish_turn(task, state, "error", f"the model kept calling tools after {MAX_TOOL_ROUNDS} rounds")
        return
    _finish_turn(task, state, "completed", None)


def fail(
    task: ConversationTask, state: LineState, error: str, *, retryable: bool, counted: bool = True
) -> None:
    """A line that got no usable answer: sent again in a later round, or (attempts spent, or an
    error that another try cannot mend) the turn's error. `counted`: the line was executed."""
    if counted:
        state.lines += 1
    if retryable and state.attempt < max(1, task.limits.max_attempts):
        state.attempt += 1
        return
    tries = f" (after {state.attempt} attempts)" if state.attempt > 1 else ""
    _finish_turn(task, state, "error", f"{error}{tries}")


def cancel(task: ConversationTask, state: LineState, why: str) -> None:
    """The provider batch carrying this conversation was cancelled: it ends here."""
    state.run_status = "cancelled"
    _finish_turn(task, state, "cancelled", why)


def _add_usage(state: LineState, usage: Usage) -> None:
    state.usage = add_usage(state.usage, usage)


def _finish_turn(
    task: ConversationTask, state: LineState, status: str, error: str | None, assistant: str | None = None
) -> None:
    spec = task.turns[state.turn]
    turn: TurnRecord = {
        "index": state.turn,
        "user": spec.user,
        "assistant": "".join(state.text) if status == "completed" else assistant,
        "run_id": state.run_id,
        "run_status": state.run_status,
        "tool_calls": state.tool_calls,
        "usage": state.usage,
        "latency_ms": state.latency_ms,
        "checks": [],
        "error": error,
        "via": "batch",
        "provider_batch_id": state.provider_batch_id,
    }
    turn["checks"] = evaluate_turn(turn, spec.expect)
    state.turns.append(turn)
    if status != "completed":
        state.status, state.error = status, f"turn {state.turn}: {error or status}"
    elif state.turn + 1 < len(task.turns):
        state.turn += 1
        _begin_turn(task, state)
    else:
        state.status = "completed"


def to_record(task: ConversationTask, state: LineState, batch_id: str) -> Record:
    return new_record(
        task,
        batch_id=batch_id,
        attempt=1,
        status=state.status or "error",
        started=datetime.fromisoformat(state.started_at.replace("Z", "+00:00")),
        turns=state.turns,
        thread_id=None,
        error=state.error,
        requests=state.lines,
    )
