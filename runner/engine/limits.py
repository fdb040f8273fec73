"""Request/token limits and the 429 cooldown: what a limiter is, and the one of a single process.

Every API request a backend sends first takes one request and an estimate of its tokens from a
`Limiter`, atomically together; when the real usage is known the estimate is corrected with
`settle`. A 429 from the server calls `cooldown`, which every user of the same limiter honours.
`LocalLimiter` serves one process (`runner run --inline`); `runner.queue.limits.RedisLimiter` is
shared by every worker of every machine on the same Redis.

Learned limits: the server states its limits on every answer (`x-ratelimit-limit-requests`,
`-limit-tokens`, `-remaining-*`, `-reset-*`). The SDK client's response hook (`runner.engine.client`)
hands each answer's headers to `observe`, which passes them to the limiter of the request being sent
(`observing`, set by `runner.engine.retry.Caller` around every request), if it `learn`s.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

WINDOW_S = 60.0
"""Rate limits are per sliding minute, as the server counts them."""

WINDOW_MARGIN_S = 2.0
"""The Redis limiter counts a slightly longer minute: a request reaches the server a little after we
count it (a busy machine may delay it by a second or more), and that jitter must never let the
server's own sliding minute see one request too many. It caps the steady rate at 60/62 of the RPM."""


class Limiter(Protocol):
    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        """Block until `requests` requests and `tokens` tokens fit in the window, then take them."""

    def settle(self, estimated: int, actual: int) -> None:
        """Correct an earlier estimate with the tokens the server really counted."""

    def cooldown(self, seconds: float) -> None:
        """The server said 429: nobody sends anything for `seconds`."""


@dataclass(frozen=True)
class ServerLimits:
    """What one answer's `x-ratelimit-*` headers say (None: not said)."""

    rpm: int | None = None
    tpm: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str | None) -> float | None:
    """Seconds from OpenAI's reset headers: a Go duration (`6m0s`, `1.5s`, `12ms`) or plain seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(float(text))
    except ValueError:
        return None


def parse_server_limits(headers: Mapping[str, str]) -> ServerLimits:
    """The limits a response states; limits that are not positive integers are ignored."""
    rpm, tpm = _int(headers.get("x-ratelimit-limit-requests")), _int(headers.get("x-ratelimit-limit-tokens"))
    return ServerLimits(
        rpm=rpm if rpm and rpm > 0 else None,
        tpm=tpm if tpm and tpm > 0 else None,
        remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


@runtime_checkable
class Learner(Protocol):
    def learn(self, limits: ServerLimits) -> None:
        """The server answered with these limits (empty: it states none)."""


_observer: contextvars.ContextVar[Learner | None] = contextvars.ContextVar("runner_limiter", default=None)


@contextlib.contextmanager
def observing(limiter: object) -> Iterator[None]:
    """Answers received in this block (this thread) teach `limiter`, if it learns."""
    token = _observer.set(limiter if isinstance(limiter, Learner) else None)
    try:
        yield
    finally:
        _observer.reset(token)


def observe(headers: Mapping[str, str]) -> None:
    """One answer's headers, from the HTTP client's response hook: to the limiter of its request."""
    learner = _observer.get()
    if learner is not None:
        learner.learn(parse_server_limits(headers))


class LocalLimiter:
    """A sliding-window limiter for the threads of one process (it does not learn: `--inline` keeps
    to the job's limits and the server's 429s)."""

    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._events: deque[tuple[float, int, int]] = deque()  # (time, requests, tokens)
        self._requests = 0
        self._tokens = 0
        self._paused_until = 0.0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - WINDOW_S:
            _, r, t = self._events.popleft()
            self._requests -= r
            self._tokens -= t

    def _wait_time(self, now: float, requests: int, tokens: int) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        self._expire(now)
        fits_r = self.rpm is None or self._requests + requests <= self.rpm
        # A single request larger than the whole budget could never fit: let it through alone.
        fits_t = self.tpm is None or self._tokens + tokens <= self.tpm or self._tokens == 0
        if fits_r and fits_t:
            return 0.0
        if not self._events:
            return 0.05
        return max(0.01, self._events[0][0] + WINDOW_S - now)

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_time(now, requests, tokens)
                if wait == 0.0:
                    self._events.append((now, requests, tokens))
                    self._requests += requests
                    self._tokens += tokens
                    return
            self._sleep(min(wait, 1.0))

    def settle(self, estimated: int, actual: int) -> None:
        delta = actual - estimated
        if delta == 0:
            return
        with self._lock:
            now = self._clock()
            self._events.append((now, 0, delta))
            self._tokens += delta

    def cooldown(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


class Unlimited:
    """No limits at all (a server that enforces its own, or tests)."""

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        return None

    def settle(self, estimated: int, actual: int) -> None:
        return None

    def cooldown(self, seconds: float) -> None:
        return None
