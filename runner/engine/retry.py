"""Which API errors are retried, how long to wait, and the one retry layer every request goes through.

The SDK's own retries are off (`max_retries=0`) so that retries do not multiply; `Caller.call` is the
only place a request is repeated. For every attempt it first takes one request (and an estimate of
its tokens) from the shared `Limiter`, counts the request, then sends it.

    retried      408, 409, 429 rate limits, 5xx, connection errors and timeouts
                 (`x-should-retry` from the server overrides the status either way)
    waits        `retry-after-ms`, else `retry-after` (seconds or an HTTP date), else exponential
                 backoff with jitter; a 429 also sets the limiter's cooldown so every sender pauses
    not retried  other 4xx, "Request too large", a server asking us to wait more than 120 s
    fatal        401/403 and `insufficient_quota`: `FatalAPIError`, one message, nothing more is sent

A POST that failed without an answer may still have created its object (there is no idempotency
key); `call(..., reconcile=...)` asks the caller to look for it before the request is sent again.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

import openai
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from runner.engine.limits import Limiter, observing
from runner.errors import FatalAPIError
from runner.records import RetryRecord
from runner.settings import redact

T = TypeVar("T")

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429})
"""Besides every 5xx: the statuses the API documents as worth another try."""

MAX_SERVER_WAIT_S = 120.0
"""A server asking for a longer pause is not retried (as the SDK does): the conversation records it."""

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 8.0
"""Fallback backoff when the server gives no Retry-After: 0.5 s doubling up to 8 s, minus up to 25 %."""

QUOTA_CODES = frozenset({"insufficient_quota", "credit_balance_exhausted"})

request_guard: ContextVar[Callable[[], None] | None] = ContextVar("request_guard", default=None)
"""Called before every attempt of every `Caller` in this context (a queue worker's fence: it raises
to stop a conversation whose lease was lost); a `Caller`'s own `guard` takes precedence."""


def _header(exc: BaseException, name: str) -> str | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get(name)
    return None if value is None else str(value)


def _error_field(exc: BaseException, name: str) -> str | None:
    value = getattr(exc, name, None)
    if value is None:
        body = getattr(exc, "body", None)
        if isinstance(body, dict):
            value = body.get(name)
    return None if value is None else str(value)


def is_quota_error(exc: BaseException) -> bool:
    """Quota or credit exhausted: `type` OR `code` says so (OpenAI sends it as a 429)."""
    if not isinstance(exc, openai.APIStatusError):
        return False
    return _error_field(exc, "type") in QUOTA_CODES or _error_field(exc, "code") in QUOTA_CODES


def is_fatal(exc: BaseException) -> bool:
    """401/403 or an exhausted quota: nothing more should be sent with this key."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (401, 403) or is_quota_error(exc)
    return False


def fatal_message(exc: BaseException) -> str:
    """One clear line for the operator; never the key (401 bodies often echo part of it)."""
    if isinstance(exc, openai.APIStatusError) and is_quota_error(exc):
        return "the API reports the quota is exhausted (insufficient_quota): check the plan and billing"
    status = getattr(exc, "status_code", "?")
    if status == 403:
        return "the API refused access (403 permission denied): check OPENAI_API_KEY and its project"
    return f"the API rejected the credentials ({status} authentication error): check OPENAI_API_KEY"


def is_request_too_large(exc: BaseException) -> bool:
    """A single request over the TPM limit: waiting cannot make it fit."""
    return isinstance(exc, openai.RateLimitError) and "request too large" in str(exc).lower()


def server_wait_s(exc: BaseException) -> float | None:
    """The pause the server asked for, from `retry-after-ms` or `retry-after` (seconds or HTTP date)."""
    ms = _header(exc, "retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    after = _header(exc, "retry-after")
    if after is None:
        return None
    try:
        return max(0.0, float(after))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(after)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_retryable(exc: BaseException) -> bool:
    """Worth sending again: transient by status or transport, and not fatal or hopeless."""
    if isinstance(exc, FatalAPIError) or is_fatal(exc) or is_request_too_large(exc):
        return False
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if not isinstance(exc, openai.APIStatusError):
        return False
    wait = server_wait_s(exc)
    if wait is not None and wait > MAX_SERVER_WAIT_S:
        return False
    should = (_header(exc, "x-should-retry") or "").lower()
    if should in ("true", "false"):
        return should == "true"
    return exc.status_code in RETRY_STATUSES or exc.status_code >= 500


def is_unanswered(exc: BaseException) -> bool:
    """The request may have been processed although we got no usable answer (so a POST may have
    created its object): transport errors, timeouts and 5xx from something in between."""
    if isinstance(exc, openai.APIConnectionError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def backoff_s(retries_done: int, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: min(0.5·2^n, 8) × (1 − 0.25·U)."""
    base = min(BACKOFF_INITIAL_S * 2.0**retries_done, BACKOFF_MAX_S)
    return base * (1.0 - 0.25 * rng())


def retry_wait_s(exc: BaseException, retries_done: int, rng: Callable[[], float] = random.random) -> float:
    """How long to wait before the next attempt: the server's word if it gave one, else backoff.

    A small positive jitter (up to 10 %) keeps threads told the same pause from arriving together."""
    wait = server_wait_s(exc)
    if wait is not None and wait > 0:
        return wait * (1.0 + 0.1 * rng())
    return backoff_s(retries_done, rng)


def describe_error(exc: BaseException) -> str:
    """A one-line, key-free description of an API error for a record."""
    if isinstance(exc, openai.APIStatusError):
        text = f"HTTP {exc.status_code}"
        code = _error_field(exc, "code")
        if code:
            text += f" {code}"
        message = _error_field(exc, "message") or exc.message
        return redact(f"{text}: {message}")
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "connection error (no answer from the server)"
    return redact(f"{type(exc).__name__}: {exc}")


@dataclass
class Caller:
    """Sends API requests for one conversation (or one preparation): limiter, retries, counting.

    `requests` counts every request sent, including retries, polls and failed attempts."""

    limiter: Limiter
    max_attempts: int = 4
    requests: int = 0
    retries: int = 0
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = field(default=random.random)
    # What the turns report (see `checkpoint`/`since`): every retry with its cause and wait, the
    # time spent waiting for the limiter, and the time spent on attempts that failed.
    retry_log: list[RetryRecord] = field(default_factory=list)
    limiter_wait_s: float = 0.0
    failed_s: float = 0.0
    guard: Callable[[], None] | None = None

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        tokens: int = 0,
        reconcile: Callable[[], T | None] | None = None,
        **kwargs: Any,
    ) -> T:
        """`fn(*args, **kwargs)` with retries. `tokens` is the estimate taken from the limiter.

        `reconcile`, when given, runs before a retry that follows an unanswered attempt; if it
        finds what the failed attempt created, that is returned instead of sending again."""
        ambiguous = False

        def attempt() -> T:
            nonlocal ambiguous
            if ambiguous and reconcile is not None:
                found = reconcile()
                if found is not None:
                    return found
            began = time.monotonic()
            self.limiter.acquire(1, tokens)
            sent = time.monotonic()
            self.limiter_wait_s += sent - began
            guard = self.guard or request_guard.get()
            if guard is not None:
                try:
                    guard()  # last thing before sending: the limiter's wait may have been long
                except BaseException:
                    if tokens:
                        self.limiter.settle(tokens, 0)
                    raise
            self.requests += 1
            try:
                with observing(self.limiter):  # what the answer says of the limits teaches the limiter
                    return fn(*args, **kwargs)
            except openai.APIError as e:
                self.failed_s += time.monotonic() - sent
                if tokens:
                    self.limiter.settle(tokens, 0)  # a refused request spends no tokens
                if is_fatal(e):
                    raise FatalAPIError(fatal_message(e)) from None
                ambiguous = is_unanswered(e)
                raise

        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.max_attempts)),
            wait=self._wait,
            retry=retry_if_exception(is_retryable),
            before_sleep=self._before_sleep,
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(attempt)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None:
            return 0.0
        return retry_wait_s(exc, state.attempt_number - 1, self.rng)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        cause = retry_cause(exc)
        self.retry_log.append(RetryRecord(cause=cause, wait_ms=int(state.upcoming_sleep * 1000)))
        log.info(
            "retry %d of %d after %s: waiting %.1fs",
            state.attempt_number,
            self.max_attempts - 1,
            cause,
            state.upcoming_sleep,
        )
        if isinstance(exc, openai.RateLimitError):
            # Everyone sharing the limiter pauses, not just this thread.
            log.info("429 from the server: every sender sharing the limit pauses %.1fs", state.upcoming_sleep)
            self.limiter.cooldown(state.upcoming_sleep)

    def checkpoint(self) -> Checkpoint:
        """Where the counters stand, so `since` can tell what one turn cost."""
        return Checkpoint(
            time.monotonic(), self.requests, len(self.retry_log), self.limiter_wait_s, self.failed_s
        )

    def since(self, mark: Checkpoint) -> TurnCost:
        """What was spent since `mark`: requests, retries with causes, limiter wait, and the
        server-side latency — the wall time less the runner's own waiting (limiter, retry backoff)
        and the attempts that failed, i.e. from the request that was answered to the end."""
        wall = time.monotonic() - mark.at
        retries = self.retry_log[mark.retries :]
        limiter = self.limiter_wait_s - mark.limiter_wait_s
        backoff = sum(r["wait_ms"] for r in retries) / 1000
        server = wall - limiter - backoff - (self.failed_s - mark.failed_s)
        return {
            "requests": self.requests - mark.requests,
            "retries": [RetryRecord(cause=r["cause"], wait_ms=r["wait_ms"]) for r in retries],
            "limiter_wait_ms": int(limiter * 1000),
            "server_latency_ms": max(0, int(server * 1000)),
        }


@dataclass(frozen=True)
class Checkpoint:
    at: float
    requests: int
    retries: int
    limiter_wait_s: float
    failed_s: float


class TurnCost(TypedDict):
    requests: int
    retries: list[RetryRecord]
    limiter_wait_ms: int
    server_latency_ms: int | None


def retry_cause(exc: BaseException | None) -> str:
    """Why an attempt is retried, in a record's words: the HTTP status ("429", "503"), "timeout",
    or "dropped" (the connection failed without an answer)."""
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "dropped"
    return type(exc).__name__ if exc is not None else "unknown"
