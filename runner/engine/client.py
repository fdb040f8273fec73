"""The SDK client and the backend serving each API, one per process and settings.

    make_client(settings)      an `openai.OpenAI` from the settings' key and server, SDK retries off;
                               its HTTP client hands every answer's headers to the limiter of the
                               request (`runner.engine.limits.observe`: limits learned from the server)
    shared_client(settings)    one per process and settings (workers fork: a client never crosses a fork)
    backend_for(api, client, settings)   one backend per client, API and wait mode, so what it
                               learns (how long runs take) is shared by the conversations
    check_reachable(settings)  fail fast (exit 3, naming the URL) when nothing answers at the server
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import httpx2
import openai
from openai._base_client import SyncHttpxClientWrapper
from openai._constants import DEFAULT_CONNECTION_LIMITS

from runner.engine.backends import Backend, get_backend
from runner.engine.limits import observe
from runner.errors import MissingKeyError, ServerUnavailableError
from runner.settings import Settings, redact
from runner.tasks import Api

REQUEST_TIMEOUT = httpx2.Timeout(60.0, connect=10.0)
"""Per request; streams and long waits set their own from the run deadline."""

_lock = threading.Lock()
_clients: dict[tuple[int, str | None, str], openai.OpenAI] = {}
_backends: dict[tuple[int, str, str], Backend] = {}

KEEP_ALIVE_LIMITS = httpx2.Limits(
    max_connections=DEFAULT_CONNECTION_LIMITS.max_connections,
    max_keepalive_connections=DEFAULT_CONNECTION_LIMITS.max_connections,
)


def make_client(settings: Settings) -> openai.OpenAI:
    """A client from the settings' key and server with the SDK's retries off (ours decide)."""
    if not settings.api_key:
        raise MissingKeyError("OPENAI_API_KEY is not set")
    # The SDK's own connection limits, but every open connection kept alive: a worker holds up to
    # its concurrency's streams at once, and past the SDK's 100 each answer closed one and the next
    # request opened another (py-spy: ~4% of a worker's CPU at 150 in flight). One response hook:
    # the rate-limit headers of every answer reach the limiter, whatever backend sent the request.
    # The SDK's own wrapper class: like the client it makes when given none, it closes its
    # connections when garbage-collected (a plain httpx2.Client would leak them).
    http = SyncHttpxClientWrapper(
        timeout=REQUEST_TIMEOUT, limits=KEEP_ALIVE_LIMITS, event_hooks={"response": [_learn]}
    )
    return openai.OpenAI(
        api_key=settings.api_key,
        base_url=settings.base_url,
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
        http_client=http,
    )


def _learn(response: httpx2.Response) -> None:
    """The response hook: runs when the headers arrive (before a stream's body)."""
    if "x-ratelimit-limit-requests" in response.headers or response.status_code == 429:
        observe(response.headers)
    else:
        observe({})  # a server that states no limits: the limiter falls back to AIMD on 429s


def shared_client(settings: Settings) -> openai.OpenAI:
    """One client per process, server and key."""
    key = hashlib.sha256((settings.api_key or "").encode()).hexdigest()
    ident = (os.getpid(), settings.base_url, key)
    with _lock:
        client = _clients.get(ident)
        if client is None:
            client = _clients[ident] = make_client(settings)
        return client


def _answer_types(api: Api) -> tuple[object, ...]:
    """The SDK types a backend of `api` parses answers into (imported only for the APIs in use:
    the Assistants types alone pull in every beta type, half a second)."""
    if api is Api.ASSISTANTS:  # its stream events stay dicts (`AssistantsConversation._stream_post`)
        from openai.types.beta import Assistant, Thread
        from openai.types.beta.threads import Message, Run

        return Assistant, Thread, Run, Message
    if api is Api.RESPONSES:
        from openai.types.conversations import Conversation
        from openai.types.responses import Response, ResponseStreamEvent

        return Response, Conversation, ResponseStreamEvent
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    return ChatCompletion, ChatCompletionChunk


def warm_models(apis: tuple[Api, ...] = tuple(Api)) -> int:
    """Build the pydantic schemas of the SDK's answer types of `apis` now (the SDK defers them to
    first use): threads that parse their first answers at the same moment race in that build (seen
    as `PydanticUserError` / `AttributeError: __pydantic_core_schema__`). `backend_for` does it for
    its API before handing out the backend; a pool preloads all before forking. Returns how many
    were built."""
    import typing

    from openai._models import BaseModel as SDKModel

    seen: set[type] = set()

    def walk(tp: object) -> None:
        if isinstance(tp, type) and issubclass(tp, SDKModel):
            if tp not in seen:
                seen.add(tp)
                for f in tp.model_fields.values():
                    walk(f.annotation)
            return
        for arg in typing.get_args(tp):
            walk(arg)

    for api in apis:
        for tp in _answer_types(api):
            walk(tp)
    built = 0
    for model in seen:
        if not model.__pydantic_complete__:  # type: ignore[attr-defined]
            model.model_rebuild()  # type: ignore[attr-defined]
            built += 1
    return built


def backend_for(api: Api | str, client: openai.OpenAI, settings: Settings) -> Backend:
    """One backend per client, API and wait mode."""
    modes = f"{settings.assistants_wait}/{settings.responses_wait}/{settings.chat_stream}"
    ident = (id(client), str(api), modes)
    with _lock:
        backend = _backends.get(ident)
        if backend is None or backend.client is not client:
            warm_models((Api(api),))  # under the lock: the conversations that get it parse safely
            backend = _backends[ident] = get_backend(api, client, settings)
        return backend

PROBE_TIMEOUT_S = 5.0
"""How long `check_reachable` waits for a TCP connection."""

_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


def check_reachable(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ServerUnavailableError at once when nothing listens at the API server's address, rather
    than after every conversation has spent its retries on it. A TCP connection, no request (so
    nothing is counted or billed); skipped behind a proxy, where the proxy decides."""
    if any(os.environ.get(name) for name in _PROXY_VARS):
        return
    url = httpx2.URL(settings.server)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.host, port), timeout=timeout_s).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise ServerUnavailableError(
            f"could not reach the API at {redact(str(url))}: {why.lower()} (check OPENAI_BASE_URL)"
        ) from None
