"""The conversation engine: one task in, one transcript record out; and `runner run --inline`.

    make_client()        the SDK client (key and base URL from the environment, SDK retries off)
    prepare_tasks()      once per run: the assistants backend finds/creates/updates the job's
                         assistants and every task gets its assistant id (no-op for other APIs)
    run_conversation()   carries one task through its backend turn by turn, checks every reply,
                         returns the contract's record; never raises for a per-conversation
                         problem (status "error" and a message), only FatalAPIError (401/403/quota)
    run_inline()         up to `limits.concurrency` conversations at once in threads, a local
                         limiter, a progress line, the JSONL written; used by `runner run --inline`

The queue's workers call `run_conversation` too (with a limiter shared through Redis).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import openai

from runner.backends import Backend, get_backend
from runner.checks import evaluate_turn
from runner.errors import FatalAPIError, ServerUnavailableError, UsageError
from runner.limits import Limiter, LocalLimiter
from runner.pipeline import RunOptions, RunOutcome
from runner.progress import Progress
from runner.retry import Caller, describe_error, redact
from runner.tasks import Api, AssistantSpec, ConversationTask
from runner.transcripts import Record, TurnRecord, add_usage, empty_usage, write_records

if TYPE_CHECKING:
    from runner.jobfile import Job

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = httpx2.Timeout(60.0, connect=10.0)
"""Per request; streams and long waits set their own from the run deadline."""

_lock = threading.Lock()
_clients: dict[tuple[int, str | None, str], openai.OpenAI] = {}
_backends: dict[tuple[int, str, str], Backend] = {}


def make_client() -> openai.OpenAI:
    """A client from OPENAI_API_KEY / OPENAI_BASE_URL with the SDK's retries off (ours decide)."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise UsageError("OPENAI_API_KEY is not set (or use --simulate to run against the simulator)")
    return openai.OpenAI(max_retries=0, timeout=REQUEST_TIMEOUT)


def shared_client() -> openai.OpenAI:
    """One client per process and environment (workers fork: a client never crosses a fork)."""
    key = os.environ.get("OPENAI_API_KEY") or ""
    ident = (os.getpid(), os.environ.get("OPENAI_BASE_URL"), hashlib.sha256(key.encode()).hexdigest())
    with _lock:
        client = _clients.get(ident)
        if client is None:
            client = _clients[ident] = make_client()
        return client


def backend_for(api: Api | str, client: openai.OpenAI) -> Backend:
    """One backend per client and API, so what it learns (how long runs take) is shared."""
    modes = f"{os.environ.get('RUNNER_ASSISTANTS_WAIT')}/{os.environ.get('RUNNER_RESPONSES_WAIT')}"
    ident = (id(client), str(api), modes)
    with _lock:
        backend = _backends.get(ident)
        if backend is None or backend.client is not client:
            backend = _backends[ident] = get_backend(api, client)
        return backend


def new_batch_id(job_name: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{job_name}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def _utc(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- preparation ------------------------------------------------------------------------------


def prepare_tasks(
    job: Job, tasks: Sequence[ConversationTask], limiter: Limiter, *, client: openai.OpenAI | None = None
) -> list[ConversationTask]:
    """Find, create or update the job's assistants once and put their ids on every task.

    One server assistant per job assistant key (the first variant in job order); matrix variants
    of model or temperature are set per run, so a matrix does not multiply assistants."""
    todo = [t for t in tasks if t.api is Api.ASSISTANTS and not t.assistant.id]
    if not todo:
        return list(tasks)
    specs: dict[str, AssistantSpec] = {}
    for t in todo:
        specs.setdefault(t.assistant.key, t.assistant)
    client = client or shared_client()
    backend = backend_for(Api.ASSISTANTS, client)
    caller = Caller(limiter, max_attempts=job.limits.max_attempts)
    try:
        ids = backend.prepare(list(specs.values()), caller)
    except openai.APIError as e:  # retries exhausted: nothing can run without the assistants
        where = redact(str(client.base_url))
        raise ServerUnavailableError(
            f"could not prepare the assistants at {where}: {describe_error(e)}"
        ) from None
    log.info("prepared %d assistant(s) in %d request(s)", len(ids), caller.requests)
    out = []
    for t in tasks:
        if t.api is Api.ASSISTANTS and not t.assistant.id:
            t = t.model_copy(
                update={"assistant": t.assistant.model_copy(update={"id": ids[t.assistant.key]})}
            )
        out.append(t)
    return out


# -- one conversation -------------------------------------------------------------------------


def conversation_tag(task: ConversationTask, batch_id: str, attempt: int) -> dict[str, str]:
    """Metadata on what a conversation creates: finds a run an unanswered POST made, and ties
    server objects to a conversation without putting its (user-chosen) id on the server."""
    digest = hashlib.sha256(task.conversation_id.encode()).hexdigest()[:24]
    return {"runner_conversation": digest, "runner_batch": batch_id[:64], "runner_attempt": str(attempt)}


def _passed(task: ConversationTask, status: str, turns: list[TurnRecord]) -> bool | None:
    if status != "completed":
        return False
    if any(not c["passed"] for t in turns for c in t["checks"]):
        return False
    if not any(turn.expect for turn in task.turns):
        return None
    return True


def run_conversation(
    task: ConversationTask,
    *,
    batch_id: str,
    limiter: Limiter,
    attempt: int = 1,
    client: openai.OpenAI | None = None,
) -> Record:
    """Carry one conversation through its backend and return its record (see the module doc)."""
    started = datetime.now(UTC)
    caller = Caller(limiter, max_attempts=task.limits.max_attempts)
    turns: list[TurnRecord] = []
    status, error = "completed", None
    thread_id: str | None = None
    try:
        backend = backend_for(task.api, client or shared_client())
        conversation = backend.open(task, caller, conversation_tag(task, batch_id, attempt))
        for index, spec in enumerate(task.turns):
            began = time.monotonic()
            result = conversation.turn(index, spec.user)
            thread_id = conversation.thread_id
            turn: TurnRecord = {
                "index": index,
                "user": spec.user,
                "assistant": result.assistant,
                "run_id": result.run_id,
                "run_status": result.run_status,
                "tool_calls": result.tool_calls,
                "usage": result.usage,
                "latency_ms": int((time.monotonic() - began) * 1000),
                "checks": [],
                "error": result.error,
            }
            turn["checks"] = evaluate_turn(turn, spec.expect)
            turns.append(turn)
            if result.status != "completed":
                status, error = result.status, f"turn {index}: {result.error or result.status}"
                break  # later turns would answer a conversation that went wrong
    except FatalAPIError:
        raise
    except Exception as e:  # a per-conversation problem must not take the batch down
        log.warning("conversation %s: %s", task.conversation_id, describe_error(e))
        log.debug("conversation %s failed", task.conversation_id, exc_info=True)
        status, error = "error", describe_error(e)
    usage = empty_usage()
    for t in turns:
        usage = add_usage(usage, t["usage"])
    record: Record = {
        "batch_id": batch_id,
        "conversation_id": task.conversation_id,
        "job": task.job,
        "api": task.api.value,
        "model": task.model,
        "assistant": {"key": task.assistant.key, "name": task.assistant.name, "id": task.assistant.id},
        "thread_id": thread_id,
        "vars": dict(task.vars),
        "status": status,
        "passed": _passed(task, status, turns),
        "turns": turns,
        "usage": usage,
        "attempts": attempt,
        "error": error,
        "started_at": _utc(started),
        "finished_at": _utc(datetime.now(UTC)),
        "requests": caller.requests,
        "matrix": dict(task.matrix),
        "repeat_index": task.repeat_index,
    }
    return record


# -- runner run --inline ----------------------------------------------------------------------


def run_inline(job: Job, tasks: Sequence[ConversationTask], options: RunOptions) -> RunOutcome:
    """Every task in this process, `limits.concurrency` at a time; writes the JSONL.

    A FatalAPIError (401/403/quota) stops everything: nothing new starts, and it propagates."""
    from runner.jobfile import render_output

    began = time.monotonic()
    now = datetime.now(UTC)
    batch_id = new_batch_id(job.name, now)
    output = (
        Path(options.output)
        if options.output
        else render_output(job.output, name=job.name, batch=batch_id, now=now)
    )
    limits = job.limits
    limiter = LocalLimiter(limits.requests_per_minute, limits.tokens_per_minute)
    client = make_client()
    tasks = prepare_tasks(job, tasks, limiter, client=client)
    stop = threading.Event()
    records: list[Record] = []

    with Progress(len(tasks), enabled=options.progress) as progress:

        def work(task: ConversationTask) -> None:
            if stop.is_set():
                return
            progress.started()
            try:
                record = run_conversation(task, batch_id=batch_id, limiter=limiter, client=client)
            except BaseException:
                stop.set()
                raise
            records.append(record)
            progress.finished(record)

        with ThreadPoolExecutor(
            max_workers=max(1, min(limits.concurrency, len(tasks))), thread_name_prefix="conv"
        ) as pool:
            futures: list[Future[None]] = [pool.submit(work, t) for t in tasks]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: start nothing new; what is in flight ends on its own
                stop.set()
                raise
            finally:
                for f in futures:
                    f.cancel()
        for f in futures:
            error = None if f.cancelled() else f.exception()
            if error is not None:
                raise error

    records.sort(key=lambda r: r["conversation_id"])
    write_records(output, records)
    return RunOutcome(batch_id=batch_id, output=output, records=records, wall_s=time.monotonic() - began)
