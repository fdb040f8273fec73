"""Request/token limits and the 429 cooldown: what a limiter is, and the one of a single process.

Every API request a backend sends first takes one request and an estimate of its tokens from a
`Limiter`, atomically together; when the real usage is known the estimate is corrected with
`settle`. A 429 from the server calls `cooldown`, which every user of the same limiter honours.
`LocalLimiter` serves one process (`runner run --inline`); `runner.queue.limits.RedisLimiter` is
shared by every worker of every machine on the same Redis.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    pass

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


class LocalLimiter:
    """A sliding-window limiter for the threads of one process."""

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
