"""Server-side rate limits of the simulator: requests and tokens per sliding minute, per API key.

Keys are identified by a hash, never stored. A request over `rpm` or a request whose tokens do not
fit in `tpm` is refused with a `RateLimited` carrying the 429 body and the headers of
wire-protocol §8 (`retry-after-ms`, `retry-after`, `x-ratelimit-*`). Refused requests are not
counted, so a client that waits as told gets through. Without limits the headers still report
plausible (nominal, unenforced) values.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass, field

from runner.simulator.config import NOMINAL_RPM, NOMINAL_TPM

WINDOW_S = 60.0
_MORE = "Visit https://platform.openai.com/account/rate-limits to learn more."


def key_id(api_key: str) -> str:
    """A stable identifier of an API key that cannot be turned back into the key."""
    return hashlib.blake2b(api_key.encode(), digest_size=12).hexdigest()


def go_duration(seconds: float) -> str:
    """A duration in Go's style, as OpenAI's reset headers use: `12ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class RateLimited(Exception):
    """A 429 for `requests` or `tokens`; `retry_after_s` is when a retry can first succeed."""

    def __init__(self, kind: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s

    def retry_headers(self) -> dict[str, str]:
        return {
            "retry-after-ms": str(max(1, math.ceil(self.retry_after_s * 1000))),
            "retry-after": str(max(1, math.ceil(self.retry_after_s))),
        }


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def expire(self, now: float) -> None:
        cutoff = now - WINDOW_S
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.token_sum -= self.tokens.popleft()[1]


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._windows: dict[str, _Window] = {}

    def _window(self, key: str, now: float) -> _Window:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        w.expire(now)
        return w

    def admit(self, key: str, now: float) -> None:
        """Count one request for `key`, or raise RateLimited when the minute is full."""
        w = self._window(key, now)
        if self.rpm is not None and len(w.requests) >= self.rpm:
            wait = w.requests[0] + WINDOW_S - now
            raise RateLimited(
                "requests",
                "Rate limit reached in organization org-simulator on requests per min (RPM): "
                f"Limit {self.rpm}, Used {len(w.requests)}, Requested 1. Please try again in "
                f"{go_duration(wait)}. {_MORE}",
                wait,
            )
        w.requests.append(now)

    def charge(self, key: str, tokens: int, model: str, now: float) -> None:
        """Take `tokens` for `key` from this minute's budget, or raise RateLimited (type `tokens`)."""
        if tokens <= 0:
            return
        w = self._window(key, now)
        if self.tpm is not None:
            if tokens > self.tpm:
                raise RateLimited(
                    "tokens",
                    f"Request too large for {model} in organization org-simulator on tokens per min (TPM): "
                    f"Limit {self.tpm}, Requested {tokens}. The input or output tokens must be reduced "
                    "in order to run successfully.",
                    WINDOW_S,
                )
            if w.token_sum + tokens > self.tpm:
                need = w.token_sum + tokens - self.tpm
                freed, wait = 0, 0.0
                for ts, n in w.tokens:
                    freed += n
                    wait = ts + WINDOW_S - now
                    if freed >= need:
                        break
                raise RateLimited(
                    "tokens",
                    f"Rate limit reached for {model} in organization org-simulator on tokens per min (TPM): "
                    f"Limit {self.tpm}, Used {w.token_sum}, Requested {tokens}. Please try again in "
                    f"{go_duration(wait)}. {_MORE}",
                    wait,
                )
        w.tokens.append((now, tokens))
        w.token_sum += tokens

    def headers(self, key: str | None, now: float) -> dict[str, str]:
        """The `x-ratelimit-*` headers for a response to `key` (None: a request without a usable key)."""
        return {k.decode(): v.decode() for k, v in self.raw_headers(key, now)}

    def raw_headers(self, key: str | None, now: float) -> list[tuple[bytes, bytes]]:
        rpm = self.rpm or NOMINAL_RPM
        tpm = self.tpm or NOMINAL_TPM
        used_r, used_t, reset_r, reset_t = 0, 0, b"0ms", b"0ms"
        w = self._windows.get(key) if key is not None else None
        if w is not None:
            w.expire(now)
            used_r, used_t = len(w.requests), w.token_sum
            if w.requests:
                reset_r = go_duration(w.requests[-1] + WINDOW_S - now).encode()
            if w.tokens:
                reset_t = go_duration(w.tokens[-1][0] + WINDOW_S - now).encode()
        return [
            (b"x-ratelimit-limit-requests", str(rpm).encode()),
            (b"x-ratelimit-limit-tokens", str(tpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, rpm - used_r)).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(0, tpm - used_t)).encode()),
            (b"x-ratelimit-reset-requests", reset_r),
            (b"x-ratelimit-reset-tokens", reset_t),
        ]
