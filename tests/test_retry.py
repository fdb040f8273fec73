"""The retry layer: which errors are retried, how long it waits, what is fatal (no server needed:
the SDK's own exception objects are built from real httpx responses)."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx2
import openai
import pytest

from runner.engine.limits import LocalLimiter
from runner.engine.retry import (
    Caller,
    backoff_s,
    describe_error,
    is_fatal,
    is_retryable,
    redact,
    retry_wait_s,
    server_wait_s,
)
from runner.errors import FatalAPIError

URL = "http://127.0.0.1:9/v1/threads/runs"
CLIENT = openai.OpenAI(api_key="sk-test-key-123456", base_url="http://127.0.0.1:9/v1", max_retries=0)
"""Only to build the SDK's own exception objects (its status → class mapping); never sends."""


def status_error(
    status: int,
    *,
    headers: dict[str, str] | None = None,
    type_: str | None = None,
    code: str | None = None,
    message: str = "boom",
) -> openai.APIStatusError:
    request = httpx2.Request("POST", URL)
    response = httpx2.Response(status, headers=headers or {}, request=request)
    body = {"message": message, "type": type_, "param": None, "code": code}
    return CLIENT._make_status_error(message, body={"error": body}, response=response)


def connection_error() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=httpx2.Request("POST", URL))


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (400, False),
        (404, False),
        (422, False),
    ],
)
def test_retry_classifies_by_status(status: int, retried: bool) -> None:
    assert is_retryable(status_error(status)) is retried


def test_retry_retries_connection_errors_and_timeouts() -> None:
    assert is_retryable(connection_error())
    assert is_retryable(openai.APITimeoutError(request=httpx2.Request("GET", URL)))


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [
        (401, "invalid_request_error", "invalid_api_key"),
        (403, None, None),
        (429, "insufficient_quota", "insufficient_quota"),
        (429, "insufficient_quota", None),
        (429, None, "insufficient_quota"),
        (429, "requests", "credit_balance_exhausted"),
    ],
)
def test_retry_auth_and_quota_are_fatal_never_retried(
    status: int, type_: str | None, code: str | None
) -> None:
    exc = status_error(status, type_=type_, code=code)
    assert is_fatal(exc)
    assert not is_retryable(exc)


def test_retry_rate_limit_is_not_fatal() -> None:
    exc = status_error(429, type_="requests", code="rate_limit_exceeded")
    assert not is_fatal(exc)
    assert is_retryable(exc)


def test_retry_request_too_large_is_not_retried() -> None:
    exc = status_error(
        429, type_="tokens", code="rate_limit_exceeded", message="Request too large for gpt-4o"
    )
    assert not is_retryable(exc)


def test_retry_x_should_retry_overrides_the_status() -> None:
    assert not is_retryable(status_error(503, headers={"x-should-retry": "false"}))
    assert is_retryable(status_error(400, headers={"x-should-retry": "true"}))


def test_retry_wait_prefers_retry_after_ms_then_retry_after() -> None:
    both = status_error(429, headers={"retry-after-ms": "250", "retry-after": "3"})
    assert server_wait_s(both) == pytest.approx(0.25)
    assert server_wait_s(status_error(429, headers={"retry-after": "2"})) == pytest.approx(2.0)
    assert server_wait_s(status_error(429, headers={"retry-after": "1.5"})) == pytest.approx(1.5)
    assert server_wait_s(status_error(429)) is None


def test_retry_wait_reads_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (server_wait_s(status_error(503, headers={"retry-after": when})) or 0) <= 31


def test_retry_wait_honours_the_header_with_small_positive_jitter() -> None:
    exc = status_error(429, headers={"retry-after-ms": "1000"})
    assert retry_wait_s(exc, 0, rng=lambda: 0.0) == pytest.approx(1.0)
    assert retry_wait_s(exc, 5, rng=lambda: 1.0) == pytest.approx(1.1)


def test_retry_wait_backs_off_exponentially_with_jitter_when_no_header() -> None:
    assert [backoff_s(n, rng=lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_s(0, rng=lambda: 1.0) == pytest.approx(0.375)
    assert retry_wait_s(status_error(500), 1, rng=lambda: 0.0) == pytest.approx(1.0)


def test_retry_a_server_asking_for_more_than_two_minutes_is_not_retried() -> None:
    assert not is_retryable(status_error(429, headers={"retry-after": "600"}))


class RecordingLimiter(LocalLimiter):
    def __init__(self) -> None:
        super().__init__()
        self.acquired: list[tuple[int, int]] = []
        self.cooldowns: list[float] = []
        self.settled: list[tuple[int, int]] = []

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        self.acquired.append((requests, tokens))

    def cooldown(self, seconds: float) -> None:
        self.cooldowns.append(seconds)

    def settle(self, estimated: int, actual: int) -> None:
        self.settled.append((estimated, actual))


def flaky(errors: list[BaseException], result: Any = "ok") -> Any:
    def fn() -> Any:
        if errors:
            raise errors.pop(0)
        return result

    return fn


def test_retry_caller_retries_then_succeeds_counting_every_request() -> None:
    limiter = RecordingLimiter()
    sleeps: list[float] = []
    caller = Caller(limiter, max_attempts=4, sleep=sleeps.append, rng=lambda: 0.0)
    rate_limited = status_error(
        429, headers={"retry-after-ms": "200"}, type_="requests", code="rate_limit_exceeded"
    )
    assert caller.call(flaky([rate_limited, status_error(503)]), tokens=10) == "ok"
    assert caller.requests == 3 and caller.retries == 2
    assert limiter.acquired == [(1, 10)] * 3
    assert sleeps == [pytest.approx(0.2), pytest.approx(1.0)]
    assert limiter.cooldowns == [pytest.approx(0.2)]  # only the 429 pauses everyone
    assert limiter.settled == [(10, 0), (10, 0)]  # refused requests spent no tokens


def test_retry_caller_gives_up_after_max_attempts() -> None:
    caller = Caller(RecordingLimiter(), max_attempts=3, sleep=lambda s: None)
    with pytest.raises(openai.InternalServerError):
        caller.call(flaky([status_error(500)] * 5))
    assert caller.requests == 3


def test_retry_caller_does_not_retry_a_bad_request() -> None:
    caller = Caller(RecordingLimiter(), max_attempts=4, sleep=lambda s: None)
    with pytest.raises(openai.BadRequestError):
        caller.call(flaky([status_error(400)]))
    assert caller.requests == 1


def test_retry_caller_raises_fatal_once_without_the_key() -> None:
    caller = Caller(RecordingLimiter(), max_attempts=4, sleep=lambda s: None)
    exc = status_error(401, code="invalid_api_key", message="Incorrect API key provided: sk-test-key-123456")
    with pytest.raises(FatalAPIError) as info:
        caller.call(flaky([exc]))
    assert caller.requests == 1
    assert "sk-" not in str(info.value) and "401" in str(info.value)


def test_retry_caller_reconciles_after_an_unanswered_attempt() -> None:
    caller = Caller(RecordingLimiter(), max_attempts=4, sleep=lambda s: None)
    looked: list[int] = []

    def reconcile() -> str | None:
        looked.append(1)
        return "found"

    assert caller.call(flaky([connection_error()], result="created"), reconcile=reconcile) == "found"
    assert looked == [1] and caller.requests == 1


def test_retry_caller_does_not_reconcile_after_an_answered_refusal() -> None:
    caller = Caller(RecordingLimiter(), max_attempts=4, sleep=lambda s: None)
    looked: list[int] = []
    rate_limited = status_error(429, headers={"retry-after-ms": "1"})
    assert (
        caller.call(flaky([rate_limited], result="created"), reconcile=lambda: looked.append(1)) == "created"
    )
    assert looked == []


def test_retry_descriptions_never_hold_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "custom-secret-value")
    assert "custom-secret-value" not in redact("key custom-secret-value rejected")
    assert redact("Incorrect API key provided: sk-proj-abcdef123") == "Incorrect API key provided: sk-***"
    text = describe_error(status_error(400, code="bad", message="sk-abcdefgh is wrong"))
    assert text == "HTTP 400 bad: sk-*** is wrong"
    assert describe_error(connection_error()) == "connection error (no answer from the server)"
