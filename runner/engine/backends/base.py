"""What every backend shares: the `Backend` / `Conversation` interface, `TurnResult`, token
estimates, tool outputs, the poll pacer and usage parsing. The protocol of each API lives in its
own module; the package docstring (`runner.engine.backends`) tells how they are driven.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from runner.engine.retry import Caller, describe_error
from runner.errors import BackendError, FatalAPIError
from runner.jobs.tooloutputs import ToolOutputFailed, choose
from runner.records import ToolCallRecord, Usage, add_usage, empty_usage, unknown_usage
from runner.settings import Settings
from runner.tasks import Api, AssistantSpec, ConversationTask

EXPECTED_COMPLETION_TOKENS = 128
"""Completion tokens assumed per request when estimating for the limiter (settled with real usage)."""

CHARS_PER_TOKEN = 4


def estimate_tokens(*texts: str | None) -> int:
    """About four characters a token, as the servers count them."""
    return sum(len(t) for t in texts if t) // CHARS_PER_TOKEN + 1


def parse_arguments(raw: Any) -> Any:
    """Tool-call arguments arrive as a JSON string; keep the raw string if it is not JSON."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return raw


def _count(data: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def usage_of(obj: Any) -> Usage:
    """Usage from an SDK object or dict, in the record's shape (Responses calls them input/output).
    What the server did not report is None (unknown), never 0: a streamed reply from a server
    without `stream_options` support, or a run cancelled before it counted, has no usage."""
    data = obj if isinstance(obj, dict) else getattr(obj, "model_dump", lambda: None)()
    if not isinstance(data, dict):
        return unknown_usage()
    prompt = _count(data, "prompt_tokens", "input_tokens")
    completion = _count(data, "completion_tokens", "output_tokens")
    total = _count(data, "total_tokens")
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


class MissingToolOutput(BackendError):
    """The assistant called a function the conversation has no canned output for."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"the assistant called tool {name!r}; the conversation has no tool_outputs for it")


class ToolOutputError(MissingToolOutput):
    """A tool output by arguments that failed: its python function could not be loaded, raised, or
    returned what JSON cannot encode. Like a missing output, it ends the turn (not the worker)."""

    def __init__(self, name: str, why: str):
        self.name = name
        BackendError.__init__(self, f"tool {name!r}: {why}")


class Overdue(BackendError):
    """The run's deadline (`run_timeout_s`) passed while waiting for an answer: not retried."""


def tool_output(
    task: ConversationTask, name: str, arguments: Any = None, turn: int | None = None, user: str | None = None
) -> str:
    """The output of a call of `name` with (parsed) `arguments`: canned, or chosen by the arguments
    (`runner.jobs.tooloutputs`). Raises `MissingToolOutput` / `ToolOutputError`: the turn fails."""
    try:
        output = task.tool_outputs[name]
    except KeyError:
        raise MissingToolOutput(name) from None
    if isinstance(output, str):
        return output
    ctx = {"tool": name, "conversation_id": task.conversation_id, "vars": dict(task.vars), "turn": turn,
           "user": user}  # fmt: skip
    try:
        return choose(output, {} if arguments is None else arguments, ctx, _check_packages())
    except ToolOutputFailed as e:
        raise ToolOutputError(name, str(e)) from None


def _check_packages() -> tuple[str, ...]:
    """This worker's `RUNNER_CHECK_PACKAGES`: the packages whose `module:function` may run here."""
    return Settings.from_env().check_packages


@dataclass
class TurnResult:
    """What one turn produced. `status` is the conversation status this turn implies
    (`completed` lets the conversation go on); `run_status` is what the server said."""

    status: str = "error"
    assistant: str | None = None
    run_id: str | None = None
    run_status: str | None = None
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=empty_usage)
    error: str | None = None
    estimated_tokens: int = 0

    def add_usage(self, usage: Usage) -> None:
        self.usage = add_usage(self.usage, usage)


class Conversation(ABC):
    """One conversation in flight: a thread, a conversation object, or (chat) our own history."""

    thread_id: str | None = None
    _index: int | None = None  # the turn under way, for python tool outputs' ctx
    _user: str | None = None

    def __init__(self, task: ConversationTask, caller: Caller, tag: dict[str, str]):
        self.task = task
        self.caller = caller
        self.tag = tag

    @property
    def deadline_s(self) -> float:
        return self.task.limits.run_timeout_s

    def tool_output(self, name: str, arguments: Any) -> str:
        """The output of one call in the turn under way (see `tool_output`)."""
        return tool_output(self.task, name, arguments, self._index, self._user)

    def turn(self, index: int, user: str) -> TurnResult:
        """Send one user message and wait for the reply; never raises except `FatalAPIError`."""
        self._index, self._user = index, user
        result = TurnResult()
        try:
            self._turn(index, user, result)
        except FatalAPIError:
            raise
        except MissingToolOutput as e:
            result.status, result.error = "error", str(e)
        except (openai.OpenAIError, BackendError) as e:
            result.status, result.error = "error", describe_error(e)
        spent = result.usage["total_tokens"]
        if result.estimated_tokens and spent is not None:  # unknown: the estimate stands
            self.caller.limiter.settle(result.estimated_tokens, spent)
        return result

    @abstractmethod
    def _turn(self, index: int, user: str, result: TurnResult) -> None:
        """Fill `result` as the turn goes, so a failure midway keeps what is already known."""


class Backend(ABC):
    api: Api

    def __init__(self, client: openai.OpenAI):
        self.client = client

    def prepare(self, specs: Sequence[AssistantSpec], caller: Caller, job: str = "") -> dict[str, str]:
        """Once per run: server-side objects the conversations need; returns assistant key → id.
        `job` is the job's name, marked on what is created so other jobs leave it alone."""
        return {}

    @abstractmethod
    def open(self, task: ConversationTask, caller: Caller, tag: dict[str, str]) -> Conversation:
        """Start one conversation. `tag` is metadata to put on what it creates (for reconciling)."""


DEFAULT_POLL_S = 1.0
"""Poll interval when the server sends no `openai-poll-after-ms` (the SDK's default)."""

MAX_POLL_S = 10.0

POLL_BACKOFF = 0.4
"""Otherwise wait this share of the time already waited (at least the server's interval): a run of
T seconds costs about log(T) polls and is seen done at most ~40 % late."""

FIRST_POLL = 1.1
"""Once runs have been seen to take about T, the first poll comes at 1.1·T: most runs are done by
then (one poll), and the few that are not are caught by the backoff."""


class Pacer:
    """When to poll next. Polls are requests, and requests are the scarce resource.

    Never sooner than the server's `openai-poll-after-ms`; the first poll comes about when runs have
    been finishing (a moving average of what this process has seen), later ones back off with the
    time already waited. Shared by the conversations of one backend (the GIL keeps it consistent
    enough for an estimate)."""

    def __init__(self) -> None:
        self._typical_s: float | None = None

    def observe(self, seconds: float) -> None:
        """A run took `seconds` (seen exactly, e.g. on a stream)."""
        s = max(0.0, seconds)
        self._typical_s = s if self._typical_s is None else 0.7 * self._typical_s + 0.3 * s

    def observe_polled(self, active_until: float | None, done_by: float) -> None:
        """A run seen active last at `active_until` (None: never, after its create) and done at
        `done_by`, both since it started. Between two looks, the middle is the best guess; done at
        the first look says only "no later than that", so the estimate shrinks a little (toward
        polling earlier) instead of halving, and settles where the first poll mostly finds it done."""
        self.observe(0.9 * done_by if active_until is None else (active_until + done_by) / 2)

    @property
    def typical_s(self) -> float | None:
        return self._typical_s

    def wait_s(self, waited_s: float, polls_done: int, server_s: float | None) -> float:
        floor = server_s if server_s is not None else DEFAULT_POLL_S
        if polls_done == 0 and self._typical_s is not None:
            wait = max(floor, FIRST_POLL * self._typical_s - waited_s)
        else:
            wait = max(floor, POLL_BACKOFF * waited_s)
        return min(wait, MAX_POLL_S)


def poll_after_s(headers: Any) -> float | None:
    """The server's `openai-poll-after-ms`, in seconds, if it sent one."""
    value = headers.get("openai-poll-after-ms") if headers is not None else None
    try:
        return max(0.0, float(value) / 1000.0) if value is not None else None
    except ValueError:
        return None


def stream_timeout(deadline: float, connect_s: float = 10.0, margin_s: float = 0.5) -> httpx2.Timeout:
    """A stream is read for as long as the run may take, and not much longer."""
    remaining = max(0.0, deadline - time.monotonic()) + margin_s
    return httpx2.Timeout(remaining, connect=connect_s)
