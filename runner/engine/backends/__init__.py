"""Wire protocols behind one small interface; the only code that calls the `openai` SDK.

A `Backend` serves one API flavour (`assistants`, `responses`, `chat`). `prepare` runs once per
run (the assistants backend finds, creates or updates the job's assistants there); `open` starts
one conversation, whose `turn` sends one user message and returns what came back as a
`TurnResult`. Every request goes through the conversation's `runner.engine.retry.Caller` (limiter,
retries, request count). Per-conversation problems come back as results, never as exceptions;
only `FatalAPIError` (401/403/quota) escapes.

    get_backend(api, client, settings) ──▶ Backend.open(task, caller, tag) ──▶ Conversation.turn(i, text)
"""

from __future__ import annotations

import openai

from runner.engine.backends.assistants import AssistantsBackend
from runner.engine.backends.base import Backend, Conversation, TurnResult
from runner.engine.backends.chat import ChatBackend
from runner.engine.backends.responses import ResponsesBackend
from runner.settings import Settings
from runner.tasks import Api


def get_backend(api: Api | str, client: openai.OpenAI, settings: Settings | None = None) -> Backend:
    """The backend for a job's `api`, waiting the way the settings say."""
    settings = settings or Settings()
    api = Api(api)
    if api is Api.ASSISTANTS:
        return AssistantsBackend(client, wait=settings.assistants_wait)
    if api is Api.RESPONSES:
        return ResponsesBackend(client, wait=settings.responses_wait)
    return ChatBackend(client, stream=settings.chat_stream)


__all__ = [
    "AssistantsBackend",
    "Backend",
    "ChatBackend",
    "Conversation",
    "ResponsesBackend",
    "TurnResult",
    "get_backend",
]
