"""One conversation through its backend: one task in, one transcript record out.

    prepare_tasks()      once per run: the assistants backend finds/creates/updates the job's
                         assistants and every task gets its assistant id (no-op for other APIs)
    run_conversation()   carries one task through its backend turn by turn, checks every reply,
                         returns the contract's record; never raises for a per-conversation
                         problem (status "error" and a message), only FatalAPIError (401/403/quota)

`runner run --inline` (`runner.run.inline`) and the queue's job function call these, with a local
or a Redis-shared limiter.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import openai

from runner.engine.client import backend_for, shared_client
from runner.engine.graders import Grader, conversation_turn, not_run
from runner.engine.limits import Limiter
from runner.engine.retry import Caller, describe_error, redact
from runner.errors import FatalAPIError, ServerUnavailableError
from runner.jobs.checks import evaluate_turn
from runner.jobs.models import Job
from runner.records import CheckResult, Record, TurnRecord, new_record
from runner.settings import Settings
from runner.tasks import Api, AssistantSpec, ConversationTask

log = logging.getLogger(__name__)


# -- preparation ------------------------------------------------------------------------------


def prepare_tasks(
    job: Job,
    tasks: Sequence[ConversationTask],
    limiter: Limiter,
    *,
    client: openai.OpenAI | None = None,
    settings: Settings | None = None,
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
    settings = settings or Settings.from_env()
    client = client or shared_client(settings)
    backend = backend_for(Api.ASSISTANTS, client, settings)
    caller = Caller(limiter, max_attempts=job.limits.max_attempts)
    try:
        ids = backend.prepare(list(specs.values()), caller, job=todo[0].job)
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


def run_conversation(
    task: ConversationTask,
    *,
    batch_id: str,
    limiter: Limiter,
    attempt: int = 1,
    client: openai.OpenAI | None = None,
    settings: Settings | None = None,
) -> Record:
    """Carry one conversation through its backend and return its record (see the module doc).

    `settings` default to the environment's (for callers of the Python API)."""
    started = datetime.now(UTC)
    caller = Caller(limiter, max_attempts=task.limits.max_attempts)
    turns: list[TurnRecord] = []
    status, error = "completed", None
    thread_id: str | None = None
    final_checks: list[CheckResult] = []
    grader: Grader | None = None
    try:
        settings = settings or Settings.from_env()
        client = client or shared_client(settings)
        backend = backend_for(task.api, client, settings)
        grader = Grader(task, caller, client, settings)  # judge/python/similar: same caller and limiter
        conversation = backend.open(task, caller, conversation_tag(task, batch_id, attempt))
        for index, spec in enumerate(task.turns):
            began = time.monotonic()
            mark = caller.checkpoint()
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
                "via": "direct",  # not through the provider's Batch API
            }
            turn.update(caller.since(mark))  # requests, retries, limiter wait, server-side latency
            grader.history = list(turns)
            turn["checks"] = evaluate_turn(turn, spec.expect, grader.grade)
            if grader.usage is not None:
                turn["grader_usage"] = grader.take_usage()
            turns.append(turn)
            if result.status != "completed":  # people count turns from 1
                status, error = result.status, f"turn {index + 1}: {result.error or result.status}"
                break  # later turns would answer a conversation that went wrong
        if task.expect and status == "completed":  # the conversation's own checks, on all of it
            grader.history, grader.scope = list(turns), "conversation"
            final_checks = evaluate_turn(conversation_turn(turns), task.expect, grader.grade)
    except FatalAPIError:
        raise
    except Exception as e:  # a per-conversation problem must not take the batch down
        log.warning("conversation %s: %s", task.conversation_id, describe_error(e))
        log.debug("conversation %s failed", task.conversation_id, exc_info=True)
        status, error = "error", describe_error(e)
    if task.expect and not final_checks:
        final_checks = not_run(task.expect, "the conversation did not complete")
    return new_record(
        task,
        batch_id=batch_id,
        attempt=attempt,
        status=status,
        started=started,
        turns=turns,
        thread_id=thread_id,
        error=error,
        requests=caller.requests,
        checks=final_checks,
        grader_usage=grader.take_usage() if grader is not None else None,
    )
