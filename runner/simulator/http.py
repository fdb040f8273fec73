"""The HTTP frame every `/v1` route runs in: auth, quota, rate limits, faults, body checks, errors,
stats, logging.

`endpoint()` wraps a route's handlers (one per method) so that each request is counted once,
authenticated (401 for a missing, empty or rejected key), refused when over quota or over the
limits (429), possibly turned into a fault (500, 503 or a dropped connection, before or after the
handler ran; a stream may be cut), its body refused when too large (413) or not what OpenAI's
request schema allows (400, see `strict`), and answered with the headers of wire-protocol §1/§8 on
every response. With `validate_responses` every answer is also checked against OpenAI's response
schemas (`audit`). Handlers raise `APIError` for the error bodies of §1
(`{"error": {message, type, param, code}}`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from runner.simulator.core import Simulator
from runner.simulator.faults import Fault
from runner.simulator.ratelimits import RateLimited, key_id

log = logging.getLogger("runner.simulator")

JSON = "application/json"
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information "
    "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)
RAW_SEND_KEY = "runner.simulator.raw_send"


class APIError(Exception):
    """An error answer: status plus the four keys of OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, oid: str) -> APIError:
    return APIError(404, f"No {kind} found with id '{oid}'.")


def quota_error() -> APIError:
    return APIError(
        429, QUOTA_MESSAGE, "insufficient_quota", None, "insufficient_quota", {"x-should-retry": "false"}
    )


def server_error(status: int = 500) -> APIError:
    return APIError(status, SERVER_ERROR_MESSAGE, "server_error")


def shutdown_error() -> APIError:
    """What a request or stream still running gets when the simulator stops (clients may retry)."""
    return APIError(503, "The server is shutting down. Please retry your request.", "server_error")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type=JSON)


class RawJSONResponse(Response):
    """A JSON answer whose headers are given ready-made (the hot path of every request)."""

    def __init__(self, body: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.status_code = status
        self.background = None
        self.raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})


def sse(event: str | None, data: Any) -> bytes:
    """One server-sent event; `data` is JSON-encoded unless it is already a string (`[DONE]`)."""
    payload = data if isinstance(data, str) else dumps(data).decode()
    return (f"event: {event}\ndata: {payload}\n\n" if event else f"data: {payload}\n\n").encode()


@dataclass
class Call:
    """One request as a handler sees it."""

    sim: Simulator
    request: Request
    key: str
    now: float
    headers: dict[str, str] = field(default_factory=dict)
    _body: dict[str, Any] | None = None

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    async def body(self) -> dict[str, Any]:
        """The JSON object sent (an empty body counts as `{}`), or 400 like OpenAI (413 when too big)."""
        if self._body is None:
            raw = await self.request.body()  # read whole even when too big: the client is still sending
            limit = self.sim.config.max_body_bytes
            if len(raw) > limit:
                raise APIError(
                    413,
                    f"Request too large: the body has {len(raw)} bytes, the maximum is {limit} bytes.",
                    code="request_too_large",
                )
            if not raw.strip():
                self._body = {}
            else:
                try:
                    data = json.loads(raw)
                except ValueError:
                    raise bad_request(
                        "We could not parse the JSON body of your request. "
                        "The OpenAI API expects a JSON payload."
                    ) from None
                if not isinstance(data, dict):
                    raise bad_request("The request body must be a JSON object.")
                self._body = data
        return self._body

    def charge(self, tokens: int, model: str) -> None:
        """Take the tokens this request makes the model spend (TPM); 429 `tokens` when they do not fit."""
        self.sim.limiter.charge(self.key, tokens, model, self.now)


Handler = Callable[[Call], Awaitable[Any]]


async def _close_connection(scope: Scope) -> bool:
    """Close the client's TCP connection under uvicorn's feet; False when the server does not allow it."""
    raw = scope.get(RAW_SEND_KEY)
    cycle = getattr(raw, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    transport.close()
    for _ in range(20):  # let connection_lost run so the server does not answer a 500 itself
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)
    return True


class DroppedConnection(Response):
    """Closes the client's connection without any answer (a fault), where the server allows it."""

    def __init__(self, request: Request) -> None:
        super().__init__(status_code=500)
        self.request = request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Read the request out first (cached if a handler did): closing on unread bytes sends a RST.
        await self.request.body()
        if not await _close_connection(scope):  # not uvicorn's httptools/h11 cycle: a bare 500
            await super().__call__(scope, receive, send)


async def _cut(events: AsyncIterable[Any], after: int, scope: Scope) -> AsyncIterator[Any]:
    """A stream that loses its connection after `after` chunks (an after-processing fault)."""
    sent = 0
    async for chunk in events:
        yield chunk
        sent += 1
        if sent >= after:
            await _close_connection(scope)
            return


def bearer_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _authenticate(sim: Simulator, request: Request) -> str:
    """The key's id, or 401 `invalid_api_key` for a missing, empty or rejected key."""
    token = bearer_key(request)
    if token is None:
        raise APIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    if sim.config.is_rejected_key(token):
        raise APIError(
            401,
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
    return key_id(token)


def endpoint(
    sim: Simulator, route: str, handlers: dict[str, Handler], beta: bool = False
) -> Callable[..., Any]:
    """The Starlette endpoint for `route` (a template like `/v1/threads/{thread_id}`)."""
    verbose = sim.config.verbose
    spec_route = route.removeprefix("/v1")
    check_requests = sim.config.validate_requests
    audit = sim.audit if sim.config.validate_responses else None

    async def run(request: Request) -> Response:
        started = time.perf_counter()
        status = 200
        method = request.method
        sim.stats.request(method, route)
        now = sim.now()
        key: str | None = None
        extra: dict[str, str] = {}
        fault: Fault | None = None
        try:
            key = _authenticate(sim, request)
            if sim.config.quota_exhausted:
                sim.stats.event("quota")
                raise quota_error()
            sim.limiter.admit(key, now)
            fault = sim.faults.request_fault()
            if fault is not None:
                sim.stats.event("faults")
                if not fault.after:
                    if fault.kind == "drop":
                        sim.stats.event("dropped")
                        _log(verbose, method, request, "dropped", started)
                        return DroppedConnection(request)
                    raise server_error(int(fault.kind))
            handler = handlers.get(method)
            if handler is None:
                raise APIError(404, f"Invalid URL ({method} {request.url.path})")
            if beta and request.headers.get("openai-beta", "").replace(" ", "") != "assistants=v2":
                raise bad_request(
                    "You must provide the 'OpenAI-Beta' header to access the Assistants API. "
                    "Please try again by setting the header 'OpenAI-Beta: assistants=v2'.",
                    code="invalid_beta",  # OpenAI's code for this refusal (param null)
                )
            call = Call(sim, request, key, now, extra)
            multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
            if method == "POST" and not multipart:  # a file upload is read by its own handler
                sent = await call.body()
                if check_requests:
                    _check_body(sim, method, spec_route, sent)
            result = await handler(call)
        except RateLimited as e:
            sim.stats.event("rate_limited")
            err = APIError(429, e.message, e.kind, None, "rate_limit_exceeded", e.retry_headers())
            result, status = err.body(), err.status
            extra.update(err.headers)
        except APIError as e:
            result, status = e.body(), e.status
            extra.update(e.headers)
        except Exception:  # a simulator bug: answer like OpenAI's 500 and say where it came from
            log.exception("simulator error on %s %s", method, route)
            result, status = server_error().body(), 500
        if fault is not None and fault.after:  # processed (state changed), now the answer is lost
            sim.stats.event("faults_after")
            if isinstance(result, StreamingResponse):
                sim.stats.event("streams_cut")
                result.body_iterator = _cut(result.body_iterator, fault.cut_after_events, request.scope)
            elif fault.kind == "drop":
                sim.stats.event("dropped")
                _log(verbose, method, request, "dropped", started)
                return DroppedConnection(request)
            else:
                err = server_error(int(fault.kind))
                result, status = err.body(), err.status
        # Headers are assembled once as raw bytes: Starlette's MutableHeaders rescans on every set.
        headers = [
            (b"x-request-id", sim.request_id().encode()),
            (b"openai-processing-ms", str(int((time.perf_counter() - started) * 1000)).encode()),
            *sim.limiter.raw_headers(key, now),
            *((k.encode(), v.encode()) for k, v in extra.items()),
        ]
        if isinstance(result, Response):  # a stream
            response = result
            response.raw_headers.extend(headers)
            if audit is not None and isinstance(response, StreamingResponse):
                response.body_iterator = audit.checked_stream(method, spec_route, response.body_iterator)
        else:
            body = result if isinstance(result, bytes) else dumps(result)
            response = RawJSONResponse(body, status, headers)
            if audit is not None:
                audit.check_answer(method, spec_route, status, body)
        sim.stats.status(response.status_code)
        _log(verbose, method, request, response.status_code, started)
        return response

    return run


def _check_body(sim: Simulator, method: str, route: str, body: dict[str, Any]) -> None:
    """400 for a body OpenAI's request schema refuses (counted in the stats: a client bug)."""
    from runner.simulator.strict import check_body  # imports http: loaded once the server runs

    try:
        check_body(method, route, body)
    except APIError as e:
        sim.stats.invalid_request(f"{method} /v1{route}: {e.message}")
        raise


def _log(verbose: bool, method: str, request: Request, status: int | str, started: float) -> None:
    """One line per request at --verbose: method, path, status, milliseconds. Never headers or bodies."""
    if verbose:
        log.info("%s %s %s %.1fms", method, request.url.path, status, (time.perf_counter() - started) * 1000)
