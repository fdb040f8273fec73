"""The Assistants run lifecycle of wire-protocol §5, computed lazily from timestamps.

A run is a schedule, not a task: it knows when its current phase starts (`queued` → `in_progress`)
and ends (→ `completed`, `requires_action`, `failed`, `incomplete`), when it expires and when a
cancel takes effect. `advance(run, now)` applies every transition whose time has come, in order,
writing the messages and steps a real run writes at those moments. Every read of a run, its
thread, its messages or its steps advances it first, so the state is the same as if a clock had
driven it, without a background task per run. Only legal transitions (§5.2) are ever applied.
When a stream watches the run, each transition also records its server-sent events.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any

from runner.simulator.core import CANCEL_DELAY_S, Simulator
from runner.simulator.http import SERVER_ERROR_MESSAGE, bad_request, dumps
from runner.simulator.replies import Plan, chunk_text, count_tokens
from runner.simulator.structured import shape_reply
from runner.simulator.threads import Thread, message_text, new_message, text_part

ACTIVE = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
TERMINAL = frozenset({"cancelled", "failed", "completed", "incomplete", "expired"})
LEGAL = {
    "queued": {"in_progress", "cancelling", "failed", "expired"},
    "in_progress": {"requires_action", "completed", "incomplete", "failed", "cancelling", "expired"},
    "requires_action": {"queued", "cancelling", "expired"},
    "cancelling": {"cancelled", "completed", "failed", "incomplete", "expired"},
}
_PHASE_IDS = (("message", "msg_"), ("message_step", "step_"), ("call", "call_"), ("tool_step", "step_"))
_MESSAGE_REASON = {"cancelled": "run_cancelled", "expired": "run_expired", "failed": "run_failed"}
_STEP_STATUS = {
    "completed": "completed",
    "incomplete": "completed",
    "cancelled": "cancelled",
    "failed": "failed",
    "expired": "expired",
}


@dataclass(eq=False)
class Run:
    id: str
    thread: Thread
    assistant_id: str
    created: float
    expires: float
    model: str
    instructions: str
    tools: list[Any]
    metadata: dict[str, str]
    options: dict[str, Any]
    poll_after_ms: int
    plan: Plan
    user_message: str
    fails: bool
    status: str = "queued"
    stage: str = "queued"  # where a cancelled run stood: queued, in_progress or requires_action
    started_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    last_error: dict[str, str] | None = None
    incomplete_reason: str | None = None
    required_action: dict[str, Any] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    phase_start: float = 0.0
    phase_done: float = 0.0
    phase_prompt: int = 0
    cancel_at: float | None = None
    ids: dict[str, str] = field(default_factory=dict)  # drawn when a phase is scheduled
    message: dict[str, Any] | None = None
    message_full: str = ""  # the reply in the requested format
    message_final: str = ""  # what of it fits max_completion_tokens
    steps: list[dict[str, Any]] = field(default_factory=list)
    tool_step: dict[str, Any] | None = None
    tool_outputs: list[str] = field(default_factory=list)
    events: list[tuple[str, Any]] | None = None
    wake: asyncio.Event | None = None
    cached_json: bytes | None = None

    def json(self) -> bytes:
        """The run as JSON; a terminal run never changes (bar metadata), so it is encoded once."""
        if self.cached_json is not None:
            return self.cached_json
        body = dumps(self.to_dict())
        if self.status in TERMINAL:
            self.cached_json = body
        return body

    @property
    def thread_id(self) -> str:
        return self.thread.id

    def to_dict(self) -> dict[str, Any]:
        terminal = self.status in TERMINAL
        return {
            "id": self.id,
            "object": "thread.run",
            "created_at": int(self.created),
            "assistant_id": self.assistant_id,
            "thread_id": self.thread.id,
            "status": self.status,
            "started_at": self.started_at,
            "expires_at": None if terminal else int(self.expires),
            "cancelled_at": self.cancelled_at,
            "failed_at": self.failed_at,
            "completed_at": self.completed_at,
            "required_action": self.required_action,
            "last_error": self.last_error,
            "model": self.model,
            "instructions": self.instructions,
            "tools": self.tools,
            "metadata": self.metadata,
            "temperature": self.options["temperature"],
            "top_p": self.options["top_p"],
            "max_completion_tokens": self.options["max_completion_tokens"],
            "max_prompt_tokens": self.options["max_prompt_tokens"],
            "truncation_strategy": self.options["truncation_strategy"],
            "incomplete_details": {"reason": self.incomplete_reason} if self.incomplete_reason else None,
            "usage": self.usage() if terminal else None,
            "response_format": self.options["response_format"],
            "tool_choice": self.options["tool_choice"],
            "parallel_tool_calls": self.options["parallel_tool_calls"],
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    # -- stream support ---------------------------------------------------------------------
    def watch(self) -> int:
        """Start recording stream events (if not yet); returns the index where a new stream begins."""
        if self.events is None:
            self.events = []
        return len(self.events)

    def emit(self, name: str, data: Any) -> None:
        if self.events is not None:
            self.events.append((name, copy.deepcopy(data)))

    def notify(self) -> None:
        """Wake a stream waiting on this run (a cancel or tool outputs arrived)."""
        if self.wake is not None:
            self.wake.set()
        self.wake = None

    def wake_event(self) -> asyncio.Event:
        if self.wake is None:
            self.wake = asyncio.Event()
        return self.wake


# -- scheduling ---------------------------------------------------------------------------------
def prompt_tokens(run: Run, extra: str = "") -> int:
    """Tokens of what the model reads: instructions plus the (truncated) thread history."""
    history = run.thread.messages
    trunc = run.options["truncation_strategy"] or {}
    if trunc.get("type") == "last_messages" and trunc.get("last_messages"):
        history = history[-int(trunc["last_messages"]) :]
    return count_tokens(run.instructions, *(message_text(m) for m in history), extra)


def schedule(sim: Simulator, run: Run, now: float, plan: Plan, extra_prompt: str = "") -> None:
    """Queue the next phase of `run` for `plan`: queued now, in progress soon, done after the latency."""
    latency = sim.latency(plan.latency_s)
    run.plan = plan
    # Ids of what the phase may create are drawn now, in request order, so that they depend on
    # the seed and the requests only, not on when a read happens to apply the transition.
    run.ids = {k: sim.new_id(p) for k, p in _PHASE_IDS}
    for i in range(1, len(plan.calls)):  # parallel calls beyond the first (drawn only when there are)
        run.ids[f"call{i}"] = sim.new_id("call_")
    run.phase_start = now + sim.queue_time(latency)
    run.phase_done = now + latency
    run.phase_prompt = prompt_tokens(run, extra_prompt)


def completion_tokens(plan: Plan) -> int:
    if plan.kind == "call":
        return plan.call_tokens()
    return count_tokens(plan.text)


def _set_status(run: Run, status: str) -> None:
    if status not in LEGAL.get(run.status, ()):
        raise AssertionError(f"illegal run transition {run.status} -> {status}")  # a simulator bug
    run.status = status


def _new_step(run: Run, sid: str, now: float, kind: str, details: dict[str, Any]) -> dict[str, Any]:
    step = {
        "id": sid,
        "object": "thread.run.step",
        "created_at": int(now),
        "run_id": run.id,
        "assistant_id": run.assistant_id,
        "thread_id": run.thread.id,
        "type": kind,
        "status": "in_progress",
        "cancelled_at": None,
        "completed_at": None,
        "expired_at": None,
        "failed_at": None,
        "last_error": None,
        "step_details": details,
        "usage": None,
        "metadata": {},
    }
    run.steps.append(step)
    return step


def _start(sim: Simulator, run: Run, at: float) -> None:
    """queued → in_progress: the model starts; a reply gets its message and message step now."""
    _set_status(run, "in_progress")
    run.stage = "in_progress"
    if run.started_at is None:
        run.started_at = int(at)
    run.prompt_tokens += run.phase_prompt
    run.emit("thread.run.in_progress", run.to_dict())
    if run.plan.kind == "call" and not run.fails:
        return
    msg = new_message(
        sim, run.thread, "assistant", [], at, status="in_progress", run=run, mid=run.ids["message"]
    )
    run.message = msg
    run.message_full = (
        run.plan.text if run.plan.raw else shape_reply(run.plan.text, run.options["response_format"])
    )
    run.message_final = run.message_full
    limit = run.options["max_completion_tokens"]
    if limit and count_tokens(run.message_full) > limit:
        run.message_final = run.message_full[: limit * 4]
    step = _new_step(
        run,
        run.ids["message_step"],
        at,
        "message_creation",
        {"type": "message_creation", "message_creation": {"message_id": msg["id"]}},
    )
    run.emit("thread.run.step.created", step)
    run.emit("thread.run.step.in_progress", step)
    run.emit("thread.message.created", msg)
    run.emit("thread.message.in_progress", msg)


def _done(sim: Simulator, run: Run, at: float) -> None:
    """in_progress (or cancelling, best effort) → the phase's outcome."""
    plan = run.plan
    if run.fails or plan.kind == "fail":
        run.fails = False
        sim.stats.event("runs_failed")
        _finish(run, "failed", at)
        return
    if plan.kind == "call":
        calls: list[dict[str, Any]] = [
            {
                "id": run.ids["call" if i == 0 else f"call{i}"],
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            for i, (name, arguments) in enumerate(plan.calls)
        ]
        step = _new_step(
            run, run.ids["tool_step"], at, "tool_calls", {"type": "tool_calls", "tool_calls": []}
        )
        run.emit("thread.run.step.created", step)
        run.emit("thread.run.step.in_progress", step)
        step["step_details"]["tool_calls"] = [
            {**c, "function": {**c["function"], "output": None}} for c in calls
        ]
        delta_calls = [{"index": i, **c} for i, c in enumerate(step["step_details"]["tool_calls"])]
        run.emit(
            "thread.run.step.delta",
            {
                "id": step["id"],
                "object": "thread.run.step.delta",
                "delta": {"step_details": {"type": "tool_calls", "tool_calls": delta_calls}},
            },
        )
        run.tool_step = step
        run.completion_tokens += completion_tokens(plan)
        run.required_action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": calls}}
        _set_status(run, "requires_action")
        run.stage = "requires_action"
        run.emit("thread.run.requires_action", run.to_dict())
        return
    run.completion_tokens += count_tokens(run.message_final)
    over_prompt = run.options["max_prompt_tokens"] and run.prompt_tokens > run.options["max_prompt_tokens"]
    truncated = run.message_final != run.message_full
    if over_prompt or truncated:
        run.incomplete_reason = "max_prompt_tokens" if over_prompt else "max_completion_tokens"
        _finish(run, "incomplete", at)
    else:
        _finish(run, "completed", at)


def delta_schedule(run: Run) -> list[tuple[float, str]]:
    """The reply's chunks and when each is written: spread evenly over the in-progress time."""
    chunks = chunk_text(run.message_final)
    span = max(0.0, run.phase_done - run.phase_start)
    return [(run.phase_start + span * (i + 1) / (len(chunks) + 1), c) for i, c in enumerate(chunks)]


def written_by(run: Run, at: float) -> str:
    return "".join(c for due, c in delta_schedule(run) if due <= at)


def _finish(run: Run, status: str, at: float) -> None:
    """Move to a terminal status; the message and steps follow, the thread is unlocked."""
    _set_status(run, status)
    ts = int(at)
    run.required_action = None
    if status == "completed":
        run.completed_at = ts
    elif status == "failed":
        run.failed_at = ts
        run.last_error = {"code": "server_error", "message": SERVER_ERROR_MESSAGE}
    elif status == "cancelled":
        run.cancelled_at = ts
    msg = run.message
    if msg is not None and msg["status"] == "in_progress":
        written = run.message_final if status in ("completed", "incomplete") else written_by(run, at)
        if written:  # an interrupted message keeps what was written (streamed) so far
            msg["content"] = [text_part(written)]
        if status == "completed":
            msg["status"], msg["completed_at"] = "completed", ts
        else:
            msg["status"], msg["incomplete_at"] = "incomplete", ts
            reason = _MESSAGE_REASON.get(status, "max_tokens")
            msg["incomplete_details"] = {"reason": reason}
        run.emit(f"thread.message.{msg['status']}", msg)
    step_status = _STEP_STATUS[status]
    for step in run.steps:
        if step["status"] != "in_progress":
            continue
        step["status"] = step_status
        step[
            {
                "completed": "completed_at",
                "cancelled": "cancelled_at",
                "failed": "failed_at",
                "expired": "expired_at",
            }[step_status]
        ] = ts
        if step_status == "completed":  # the message step's own tokens: this phase's prompt and reply
            completion = count_tokens(run.message_final)
            step["usage"] = {
                "prompt_tokens": run.phase_prompt,
                "completion_tokens": completion,
                "total_tokens": run.phase_prompt + completion,
            }
        if step_status == "failed":
            step["last_error"] = dict(run.last_error or {})
        run.emit(f"thread.run.step.{step_status}", step)
    if run.thread.active_run is run:
        run.thread.active_run = None
    run.emit(f"thread.run.{status}", run.to_dict())


def _finishes_first(run: Run) -> bool:
    """A cancelled run whose reply is nearly written completes anyway (cancel is best effort)."""
    return run.stage == "in_progress" and run.plan.kind == "reply" and not run.fails


def next_transition(run: Run) -> float | None:
    """When `run` changes next by itself (None: it waits for the client, or it is over)."""
    if run.status in TERMINAL:
        return None
    due = {"queued": run.phase_start, "in_progress": run.phase_done}.get(run.status)
    if run.status == "cancelling":
        assert run.cancel_at is not None
        due = run.cancel_at
        if _finishes_first(run) and run.phase_done <= run.cancel_at:
            due = run.phase_done
    return run.expires if due is None else min(due, run.expires)


def advance(sim: Simulator, run: Run, now: float) -> Run:
    """Apply every transition of `run` due by `now`, in time order (ties: the phase before expiry)."""
    while run.status in ACTIVE:
        status = run.status
        if status == "queued" and run.phase_start <= now and run.phase_start <= run.expires:
            _start(sim, run, run.phase_start)
        elif status == "in_progress" and run.phase_done <= now and run.phase_done <= run.expires:
            _done(sim, run, run.phase_done)
        elif status == "cancelling" and run.cancel_at is not None:
            if _finishes_first(run) and run.phase_done <= run.cancel_at and run.phase_done <= now:
                _done(sim, run, run.phase_done)  # cancellation is best effort: it completed first
            elif run.cancel_at <= now and run.cancel_at <= run.expires:
                _finish(run, "cancelled", run.cancel_at)
            elif run.expires <= now:
                _finish(run, "expired", run.expires)
            else:
                break
        elif run.expires <= now:
            _finish(run, "expired", run.expires)
        else:
            break
    return run


def cancel(run: Run, now: float) -> None:
    """R4: only an active, not yet cancelling run can be cancelled (400 otherwise)."""
    if run.status not in ("queued", "in_progress", "requires_action"):
        raise bad_request(f"Cannot cancel run with status '{run.status}'.")
    _set_status(run, "cancelling")
    run.cancel_at = now + CANCEL_DELAY_S
    run.emit("thread.run.cancelling", run.to_dict())
    run.notify()


def check_tool_outputs(run: Run, outputs: Any) -> dict[str, str]:
    """R5 validation: only in requires_action, one string output for exactly each pending call."""
    if run.status != "requires_action":
        raise bad_request(f'Runs in status "{run.status}" do not accept tool outputs.')
    if not isinstance(outputs, list) or not outputs:
        raise bad_request("Missing required parameter: 'tool_outputs'.", "tool_outputs")
    assert run.required_action is not None
    expected = [c["id"] for c in run.required_action["submit_tool_outputs"]["tool_calls"]]
    got: dict[str, str] = {}
    for i, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("tool_call_id"), str):
            raise bad_request(
                f"Missing required parameter: 'tool_outputs[{i}].tool_call_id'.",
                f"tool_outputs[{i}].tool_call_id",
            )
        if not isinstance(item.get("output"), str):
            raise bad_request(
                f"Invalid type for 'tool_outputs[{i}].output': expected a string.",
                f"tool_outputs[{i}].output",
            )
        if item["tool_call_id"] in got:
            raise bad_request(f"Duplicate tool output for tool_call_id '{item['tool_call_id']}'.")
        got[item["tool_call_id"]] = item["output"]
    if sorted(got) != sorted(expected):
        raise bad_request(f"Expected tool outputs for call_ids {expected}, got {list(got)}")
    return got


def submit_tool_outputs(sim: Simulator, run: Run, got: dict[str, str], now: float, then: Plan) -> None:
    """R5 once checked: fill in the outputs, complete the tool step and queue the run's next phase."""
    assert run.required_action is not None and run.tool_step is not None
    expected = [c["id"] for c in run.required_action["submit_tool_outputs"]["tool_calls"]]
    ts = int(now)
    for call in run.tool_step["step_details"]["tool_calls"]:
        call["function"]["output"] = got[call["id"]]
    run.tool_outputs = [got[c] for c in expected]
    run.required_action = None
    _set_status(run, "queued")
    run.stage = "queued"
    run.emit("thread.run.queued", run.to_dict())
    step = run.tool_step
    step["status"], step["completed_at"] = "completed", ts
    step["usage"] = {
        "prompt_tokens": run.phase_prompt,
        "completion_tokens": completion_tokens(run.plan),
        "total_tokens": run.phase_prompt + completion_tokens(run.plan),
    }
    run.emit("thread.run.step.completed", step)
    extra = " ".join(
        c["function"]["arguments"] + c["function"]["output"] for c in step["step_details"]["tool_calls"]
    )
    schedule(sim, run, now, then, extra)
    run.notify()
