"""The Assistants v2 protocol (threads, runs, messages), in as few requests per turn as it allows.

Preparation (once per run): the job's assistants are found, created or updated (`upsert`).

A turn, streaming (the default, `RUNNER_ASSISTANTS_WAIT=stream`):
    turn 0   POST /threads/runs  (create thread and run, the user message inside, stream: true)
    turn n   POST /threads/{t}/runs  (the user message as `additional_messages`, stream: true)
    tools    POST .../submit_tool_outputs (stream: true) per `requires_action`
so a turn without tools costs one request, the physical floor: the reply, the run id, its status
and usage all arrive as events on that one response.

A turn, polling (`RUNNER_ASSISTANTS_WAIT=poll`): the same creates without `stream`, then run GETs
no more often than the server's `openai-poll-after-ms`, the first one timed by how long runs have
been taking and later ones backing off with the time already waited, then one message list
filtered by `run_id`.

Every run carries metadata (`runner_conversation`, `runner_turn`, `runner_try`), so a run create
that got no answer is looked for in the thread's runs before it is sent again. A run still active
after `run_timeout_s` is cancelled (and the cancel awaited briefly). Runs that fail with a
transient `last_error` (server_error, rate_limit_exceeded) are run again, up to `max_attempts`.
A create-thread-and-run that got no answer cannot be looked for (threads cannot be listed); it
is sent again, which may leave an orphan thread on the server.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
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
from runner.engine.backends.params import run_params
from runner.engine.backends.upsert import upsert_assistants
from runner.engine.retry import Caller, backoff_s
from runner.errors import BackendError, FatalAPIError
from runner.records import ToolCallRecord
from runner.tasks import Api, AssistantSpec, ConversationTask

# The SDK marks every Assistants method deprecated (the public API is gone; compatible servers and
# our simulator remain). Silence exactly those warnings, only where they are attributed to this
# module or the SDK's wrappers, never globally.
_DEPRECATED = r"(The Assistants API is deprecated|deprecated$)"
_OURS = r"(runner\.engine\.backends\.(assistants|upsert)|openai\.)"
warnings.filterwarnings("ignore", message=_DEPRECATED, category=DeprecationWarning, module=_OURS)

WAIT_ENV = "RUNNER_ASSISTANTS_WAIT"
WAIT_MODES = ("stream", "poll")

ACTIVE = frozenset({"queued", "in_progress", "cancelling"})
"""Statuses to keep waiting on (`requires_action` is ours to answer)."""

TRANSIENT_RUN_ERRORS = frozenset({"server_error", "rate_limit_exceeded"})

BETA_HEADERS = {"OpenAI-Beta": "assistants=v2"}
"""What the SDK's Assistants methods send (and `_stream_post` sends with them)."""

CANCEL_WAIT_S = 5.0
"""How long to wait for a cancelled run to reach a terminal status before recording it anyway."""


def _run_of(data: dict[str, Any]) -> Any:
    """The SDK's `Run` from a run event's data, built without validation as the SDK builds answers.
    Imported here: `openai.types.beta` costs every process that imports the backends 0.3 s."""
    from openai.types.beta.threads import Run

    return Run.construct(**data)


def _text_of(message: dict[str, Any]) -> str:
    """A message's text, from the message as it is on the wire (a stream event's data, a listed
    message's `to_dict()`)."""
    parts = [(part.get("text") or {}).get("value") for part in message.get("content") or []]
    return "".join(p for p in parts if isinstance(p, str))


class AssistantsBackend(Backend):
    api = Api.ASSISTANTS

    def __init__(self, client: openai.OpenAI, wait: str | None = None):
        super().__init__(client)
        mode = (wait or "stream").strip().lower()
        if mode not in WAIT_MODES:
            raise BackendError(f"{WAIT_ENV} must be one of {', '.join(WAIT_MODES)}, not {mode!r}")
        self.wait = mode
        self.pacer = Pacer()

    # -- preparation --------------------------------------------------------------------------

    def prepare(self, specs: Sequence[AssistantSpec], caller: Caller, job: str = "") -> dict[str, str]:
        # Once per run, before any conversation thread starts: a local filter is safe here and also
        # holds where an outer `catch_warnings` (pytest's) shadows the module-level one.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATED, category=DeprecationWarning, module=_OURS)
            return upsert_assistants(self.client, specs, caller, job)

    # -- conversations ------------------------------------------------------------------------

    def open(self, task: ConversationTask, caller: Caller, tag: dict[str, str]) -> AssistantsConversation:
        if not task.assistant.id:
            raise BackendError(f"assistant {task.assistant.key!r} has no id: prepare_tasks was not run")
        return AssistantsConversation(self, task, caller, tag)


class _Wait:
    """What waiting on one run has learned so far."""

    def __init__(self) -> None:
        self.run: Any = None
        self.messages: dict[str, str] = {}  # message id → text, in creation order (streaming)
        self.have_text = False
        self.poll_s: float | None = None
        self.phase_started = time.monotonic()  # when the run was created, or tool outputs submitted


class AssistantsConversation(Conversation):
    def __init__(
        self, backend: AssistantsBackend, task: ConversationTask, caller: Caller, tag: dict[str, str]
    ) -> None:
        super().__init__(task, caller, tag)
        self.backend = backend
        # Typed loosely: the request options are built as dicts, which the SDK's overloads cannot see.
        self.threads: Any = backend.client.beta.threads
        self.runs: Any = backend.client.beta.threads.runs
        self.stream = backend.wait == "stream"
        self.context_chars = len(task.assistant.instructions or "")

    # -- one turn -----------------------------------------------------------------------------

    def _turn(self, index: int, user: str, result: TurnResult) -> None:
        self.context_chars += len(user)
        max_tries = max(1, self.task.limits.max_attempts)
        for attempt in range(max_tries):
            deadline = time.monotonic() + self.deadline_s
            tag = {**self.tag, "runner_turn": str(index), "runner_try": str(attempt)}
            estimate = estimate_tokens("x" * self.context_chars) + EXPECTED_COMPLETION_TOKENS
            result.estimated_tokens += estimate
            # The user message goes in with the first run; a rerun answers the thread as it is.
            state = self._create_run(user if attempt == 0 else None, tag, estimate, deadline)
            self._drive(state, tag, deadline, result)
            run = state.run
            result.run_id, result.run_status = run.id, run.status
            result.add_usage(usage_of(run.usage))
            code = run.last_error.code if run.status == "failed" and run.last_error else None
            if code in TRANSIENT_RUN_ERRORS and attempt + 1 < max_tries:
                self.caller.sleep(backoff_s(attempt))
                continue
            self._finish(state, result)
            return

    def _finish(self, state: _Wait, result: TurnResult) -> None:
        run = state.run
        status = run.status
        if status == "completed":
            if not state.have_text:
                self._read_reply(state)
            result.assistant = "\n\n".join(t for t in state.messages.values() if t)
            result.status = "completed"
            self.context_chars += len(result.assistant)
            return
        result.status = status if status in ("failed", "cancelled", "expired", "incomplete") else "error"
        if status == "failed":
            err = run.last_error
            message = f"{err.code}: {err.message}" if err else "no last_error given"
            if err and is_quota_error_text(err.message):
                raise FatalAPIError("the API reports the quota is exhausted (a run failed on it)")
            result.error = f"run {run.id} failed: {message}"
        elif status == "incomplete":
            reason = run.incomplete_details.reason if run.incomplete_details else None
            result.error = f"run {run.id} incomplete: {reason or 'no reason given'}"
        elif status == "expired":
            result.error = result.error or f"run {run.id} expired on the server"
        elif status == "cancelled":
            result.error = result.error or f"run {run.id} was cancelled"
        else:
            result.error = result.error or f"run {run.id} ended in status {status!r}"

    def _drive(self, state: _Wait, tag: dict[str, str], deadline: float, result: TurnResult) -> None:
        """Wait for the run, answering tool calls, until it ends or the deadline passes."""
        while True:
            if state.run.status in ACTIVE:
                self._poll(state, deadline)
            run = state.run
            overdue = time.monotonic() >= deadline
            if run.status in ACTIVE or (run.status == "requires_action" and overdue):
                self._cancel(state)
                if state.run.status != "completed":
                    result.error = (
                        f"run {run.id} still active after run_timeout_s={self.deadline_s:g}s: "
                        f"{'expired on the server' if state.run.status == 'expired' else 'cancelled'}"
                    )
                return
            if run.status != "requires_action":
                return
            outputs = []
            calls = run.required_action.submit_tool_outputs.tool_calls if run.required_action else []
            for call in calls:
                name = call.function.name
                record: ToolCallRecord = {
                    "name": name,
                    "arguments": parse_arguments(call.function.arguments),
                    "output": None,
                }
                result.tool_calls.append(record)
                try:
                    output = record["output"] = self.tool_output(name, record["arguments"])
                except MissingToolOutput:
                    self._cancel(state)
                    result.run_id, result.run_status = state.run.id, state.run.status
                    raise
                outputs.append({"tool_call_id": call.id, "output": output})
            self._submit(state, outputs, deadline)

    # -- requests -----------------------------------------------------------------------------

    def _run_options(self, tag: dict[str, str]) -> dict[str, Any]:
        # One server assistant per job assistant: a matrix over model or temperature is set per run.
        options: dict[str, Any] = {
            "assistant_id": self.task.assistant.id,
            "metadata": tag,
            "model": self.task.model,
        }
        if self.task.assistant.temperature is not None:
            options["temperature"] = self.task.assistant.temperature
        options.update(run_params(self.task.assistant))
        return options

    def _create_run(self, user: str | None, tag: dict[str, str], estimate: int, deadline: float) -> _Wait:
        state = _Wait()
        options = self._run_options(tag)
        message = [{"role": "user", "content": user}] if user is not None else None
        if self.thread_id is None:
            thread: dict[str, Any] = {"metadata": self.tag}
            if message:
                thread["messages"] = message
            if self.stream:
                stream = self.caller.call(
                    lambda: self._stream_post("/threads/runs", {"thread": thread, **options}, deadline),
                    tokens=estimate,
                )
                self._consume(stream, state, deadline)
            else:
                raw = self.caller.call(
                    lambda: self.threads.with_raw_response.create_and_run(thread=thread, **options),
                    tokens=estimate,
                )
                state.run, state.poll_s = raw.parse(), poll_after_s(raw.headers)
            if state.run is None:
                raise BackendError("the server answered the thread-and-run create without a run")
            self.thread_id = state.run.thread_id
            return state
        thread_id = self.thread_id
        if message:
            options["additional_messages"] = message

        def find() -> Any:
            return self._find_run(tag)

        if self.stream:
            created = self.caller.call(
                lambda: self._stream_post(f"/threads/{thread_id}/runs", options, deadline),
                tokens=estimate,
                reconcile=find,
            )
            if isinstance(created, openai.Stream):
                self._consume(created, state, deadline, tag)
            else:
                state.run = created
        else:
            raw = self.caller.call(
                lambda: self.runs.with_raw_response.create(thread_id, **options),
                tokens=estimate,
                reconcile=find,
            )
            if hasattr(raw, "parse"):
                state.run, state.poll_s = raw.parse(), poll_after_s(raw.headers)
            else:
                state.run = raw
        if state.run is None:
            raise BackendError("the server answered the run create without a run")
        return state

    def _find_run(self, tag: dict[str, str]) -> Any:
        """The run an unanswered create may have made, found by its metadata (one list request)."""
        thread_id = self.thread_id
        if thread_id is None:
            return None
        page = self.caller.call(lambda: self.runs.list(thread_id, limit=10, order="desc"))
        for run in page.data:
            meta = run.metadata or {}
            if all(meta.get(k) == v for k, v in tag.items()):
                return run
        return None

    def _submit(self, state: _Wait, outputs: list[dict[str, str]], deadline: float) -> None:
        run_id, thread_id = state.run.id, state.run.thread_id
        state.phase_started = time.monotonic()
        if self.stream:
            path = f"/threads/{thread_id}/runs/{run_id}/submit_tool_outputs"
            stream = self.caller.call(lambda: self._stream_post(path, {"tool_outputs": outputs}, deadline))
            self._consume(stream, state, deadline)
        else:
            raw = self.caller.call(
                lambda: self.runs.with_raw_response.submit_tool_outputs(
                    run_id,
                    thread_id=thread_id,
                    tool_outputs=outputs,
                )
            )
            state.run = raw.parse()
            state.poll_s = poll_after_s(raw.headers) or state.poll_s

    def _stream_post(self, path: str, body: dict[str, Any], deadline: float) -> openai.Stream[Any]:
        """POST a streamed Assistants request through the same client, whose events stay plain dicts
        (`{"event", "data"}`): the typed methods validate every event against the SDK's union of
        ~30 event types, a fifth of a worker's CPU under load (py-spy). `_consume` reads the few
        fields it needs and builds the `Run` once. Errors are the SDK's, as with the typed methods."""
        body = {**body, "stream": True}
        extra = body.pop("extra_body", None)  # the SDK's `extra_body`: merged into the JSON body
        return self.backend.client.post(
            path,
            cast_to=object,
            body=body,
            stream=True,
            stream_cls=openai.Stream[object],
            options={"headers": BETA_HEADERS, "timeout": stream_timeout(deadline), "extra_json": extra},
        )

    def _consume(self, stream: Any, state: _Wait, deadline: float, tag: dict[str, str] | None = None) -> None:
        """Read one run's event stream until it pauses or ends; on a broken stream or a passed
        deadline, what is known is kept and the caller polls (or cancels) from there."""
        deltas: dict[str, list[str]] = {}
        state.have_text = False
        run: dict[str, Any] | None = None  # the last run event's data, made a `Run` once at the end
        try:
            for event in stream:
                name, data = event.get("event") or "", event.get("data") or {}
                if name.startswith("thread.run.") and not name.startswith("thread.run.step"):
                    run = data
                    if data.get("status") not in ACTIVE:  # a stream sees the exact moment
                        self.backend.pacer.observe(time.monotonic() - state.phase_started)
                        break
                elif name == "thread.message.delta":
                    for part in (data.get("delta") or {}).get("content") or []:
                        value = (part.get("text") or {}).get("value")
                        if value:
                            deltas.setdefault(data["id"], []).append(value)
                elif (
                    name in ("thread.message.completed", "thread.message.incomplete")
                    and data.get("role") == "assistant"
                ):
                    state.messages[data["id"]] = _text_of(data)
                if time.monotonic() >= deadline:
                    break
        except openai.APIStatusError:
            raise
        except openai.APIError:
            # The stream broke (dropped connection, read timeout, error event). If the run was
            # created, keep what is known and poll from there; otherwise look for it first.
            if run is not None:
                state.run = _run_of(run)
            elif state.run is None:
                state.run = self._find_run(tag) if tag is not None else None
                if state.run is None:
                    raise
            return
        finally:
            stream.close()
        if run is not None:
            state.run = _run_of(run)
        for mid, chunks in deltas.items():
            state.messages.setdefault(mid, "".join(chunks))
        state.have_text = state.run is not None and state.run.status == "completed"

    def _retrieve(self, state: _Wait) -> None:
        run_id, thread_id = state.run.id, state.run.thread_id
        raw = self.caller.call(lambda: self.runs.with_raw_response.retrieve(run_id, thread_id=thread_id))
        state.run = raw.parse()
        state.poll_s = poll_after_s(raw.headers) or state.poll_s

    def _poll(self, state: _Wait, deadline: float, learn: bool = True) -> None:
        """GET the run until it leaves the active states or the deadline passes (see `Pacer`);
        `learn`: tell the pacer how long it took (not for a cancel being awaited)."""
        began = state.phase_started
        active_seen: float | None = None
        polls = 0
        while state.run.status in ACTIVE:
            now = time.monotonic()
            if now >= deadline:
                return
            wait = self.backend.pacer.wait_s(now - began, polls, state.poll_s)
            self.caller.sleep(min(wait, deadline - now))
            self._retrieve(state)
            polls += 1
            if state.run.status in ACTIVE:
                active_seen = time.monotonic() - began
            elif learn:
                self.backend.pacer.observe_polled(active_seen, time.monotonic() - began)

    def _cancel(self, state: _Wait) -> None:
        """Cancel the run and wait (briefly) for it to settle; a run already ended is just read."""
        run_id, thread_id = state.run.id, state.run.thread_id
        try:
            state.run = self.caller.call(lambda: self.runs.cancel(run_id, thread_id=thread_id))
        except FatalAPIError:
            raise
        except openai.BadRequestError:
            self._retrieve(state)  # it ended on its own meanwhile
        except openai.OpenAIError:
            return
        settle_by = time.monotonic() + CANCEL_WAIT_S
        if state.run.status in ACTIVE:
            try:
                self._poll(state, settle_by, learn=False)
            except openai.OpenAIError:
                return
        if state.run.status == "completed":
            state.have_text = False

    def _read_reply(self, state: _Wait) -> None:
        """The assistant messages this run wrote (one list request, filtered by run id)."""
        run_id, thread_id = state.run.id, state.run.thread_id
        page = self.caller.call(
            lambda: self.threads.messages.list(thread_id, run_id=run_id, order="asc", limit=100)
        )
        state.messages = {m.id: _text_of(m.to_dict()) for m in page.data if m.role == "assistant"}
        state.have_text = True


def is_quota_error_text(message: str) -> bool:
    return "insufficient_quota" in message or "exceeded your current quota" in message.lower()
