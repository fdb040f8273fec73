"""The limiter and the concurrency cap shared by every worker of every machine on one Redis.

The Redis limiter keeps a sliding-window log per scope under `runner:limit:<scope>:`:

* `req` (sorted set): one member per request, scored by the Redis server's clock (ms), so workers
  on machines with skewed clocks still agree; `tok` (sorted set) + `toksum`: token charges and their
  running sum, corrections from `settle` included; `cool`: the time until which a 429 paused all.
* One Lua script expires old entries, checks the cooldown, the request AND the token budget, and
  takes both or neither, so two workers can never both take the last request of a minute.
* When a cooldown ends, one request goes first (a probe) and the others wait `PROBE_WAIT_S`: if the
  server's window is still full (someone else spends the same key), only the probe meets a 429.
* The scope is `<job name>@<hash of the API base URL>`: a job's `limits:` are its own budget, and
  the same job run against two servers (the simulator, production) does not share one.
* `RedisSemaphore` holds `concurrency` leases (a sorted set scored by expiry); a holder refreshes its
  lease while it works, so a lease of a killed worker frees itself within `SLOT_TTL_S`.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import redis

from runner.engine.limits import WINDOW_MARGIN_S, WINDOW_S
from runner.queue.redis_server import retrying

PROBE_WAIT_S = 1.0
"""After a 429 cooldown, one request goes first; the rest wait this long for it to come back
without a new 429 (a 429 answers at once) instead of all meeting a still-full server window."""

SLOT_TTL_S = 15.0
"""A concurrency slot not refreshed for this long belongs to a dead worker and is freed."""

KEY_PREFIX = "runner:limit:"


def limiter_scope(job: str, base_url: str | None) -> str:
    """The budget a job's requests share: per job name and API base URL (hashed: it may hold a user)."""
    digest = hashlib.sha256((base_url or "").encode()).hexdigest()[:10]
    return f"{job}@{digest}"


# Time comes from the Redis server (TIME) unless the caller passes one (tests with a fake clock).
_NOW_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: req, tok, toksum, cool, probe (time of the cooldown that wants a probe), probe_at (when the
# probe went). ARGV: now|'', rpm, tpm, requests, tokens, window_ms, member, probe_wait_ms.
# Returns 0 when taken, else the milliseconds to wait before trying again.
_ACQUIRE_LUA = (
    _NOW_LUA
    + """
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local requests, tokens = tonumber(ARGV[4]), tonumber(ARGV[5])
local window, member = tonumber(ARGV[6]), ARGV[7]
local cutoff = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
local sum = tonumber(redis.call('GET', KEYS[3]) or '0')
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
if #old > 0 then
  for _, m in ipairs(old) do sum = sum - tonumber(string.match(m, '|(-?%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
end
if redis.call('ZCARD', KEYS[2]) == 0 or sum < 0 then sum = 0 end
redis.call('SET', KEYS[3], sum, 'PX', window * 2)
local cool = tonumber(redis.call('GET', KEYS[4]) or '0')
if cool > now then return cool - now end
local probing = false
local probe = redis.call('GET', KEYS[5])
if probe then
  local sent = tonumber(redis.call('GET', KEYS[6]) or '0')
  local wait = tonumber(ARGV[8])
  if sent > tonumber(probe) then
    if now - sent < wait then return wait - (now - sent) end
    redis.call('DEL', KEYS[5], KEYS[6])  -- the probe met no 429: the server takes requests again
  else
    probing = true
  end
end
if rpm > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n + requests > rpm then
    local idx = math.min(n + requests - rpm, n) - 1
    local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')
    if #e == 0 then return 50 end
    return math.max(1, tonumber(e[2]) + window - now)
  end
end
if tpm > 0 and sum > 0 and sum + tokens > tpm then
  local need = sum + tokens - tpm
  local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    need = need - tonumber(string.match(entries[i], '|(-?%d+)$'))
    if need <= 0 then return math.max(1, tonumber(entries[i + 1]) + window - now) end
  end
  return 1000
end
if probing then redis.call('SET', KEYS[6], now, 'PX', window) end
for i = 1, requests do redis.call('ZADD', KEYS[1], now, member .. ':' .. i) end
if tokens ~= 0 then
  redis.call('ZADD', KEYS[2], now, member .. '|' .. tokens)
  redis.call('SET', KEYS[3], sum + tokens, 'PX', window * 2)
end
redis.call('PEXPIRE', KEYS[1], window * 2)
redis.call('PEXPIRE', KEYS[2], window * 2)
return 0
"""
)

# KEYS: tok, toksum. ARGV: now|'', delta, window_ms, member.
_SETTLE_LUA = (
    _NOW_LUA
    + """
local delta, window = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[4] .. '|' .. delta)
local sum = tonumber(redis.call('GET', KEYS[2]) or '0') + delta
redis.call('SET', KEYS[2], sum, 'PX', window * 2)
redis.call('PEXPIRE', KEYS[1], window * 2)
return sum
"""
)

# KEYS: cool, probe. ARGV: now|'', ms, window_ms. Extends, never shortens, the cooldown every worker
# honours, and asks for a probe when it ends.
_COOLDOWN_LUA = (
    _NOW_LUA
    + """
local untl = now + tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[2])) end
redis.call('SET', KEYS[2], now, 'PX', tonumber(ARGV[2]) + tonumber(ARGV[3]))
return untl
"""
)

# KEYS: slots. ARGV: now|'', limit, member, ttl_ms. 1 when the lease is held.
_SEMAPHORE_LUA = (
    _NOW_LUA
    + """
local limit, member, ttl = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], member) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + ttl, member)
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return 1
end
return 0
"""
)


class RedisLimiter:
    """The limiter shared by all workers on one Redis (see the module docstring for the design).

    `clock` (seconds) replaces the Redis server's clock, for tests only. Redis outages (a restart)
    are ridden out by retrying; a `QueueError` after `OUTAGE_S`.
    """

    def __init__(
        self,
        redis: redis.Redis,
        scope: str,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        window_s: float = WINDOW_S + WINDOW_MARGIN_S,
    ) -> None:
        self.redis = redis
        self.scope = scope
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._window_ms = int(window_s * 1000)
        base = f"{KEY_PREFIX}{scope}:"
        names = ("req", "tok", "toksum", "cool", "probe", "probe_at")
        self._keys = {name: base + name for name in names}
        self._probe_wait_ms = int(PROBE_WAIT_S * 1000)
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        self._cooldown = redis.register_script(_COOLDOWN_LUA)
        self.waited_s = 0.0  # time this limiter made its callers wait (for figures)

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    def try_acquire(self, requests: int = 1, tokens: int = 0) -> float:
        """Take the budget now if it fits and return 0.0; else the seconds to wait (nothing taken)."""
        k = self._keys
        keys = [k["req"], k["tok"], k["toksum"], k["cool"], k["probe"], k["probe_at"]]
        args: list[str | int] = [self._now(), self.rpm or 0, self.tpm or 0, requests, tokens, self._window_ms]
        args += [uuid.uuid4().hex, self._probe_wait_ms]
        wait_ms = retrying(lambda: self._acquire(keys=keys, args=args), what="rate limiter")
        return int(wait_ms) / 1000.0

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        while True:
            wait = self.try_acquire(requests, tokens)
            if wait <= 0:
                return
            # Jitter spreads the workers that all wait for the same slot of the window.
            pause = min(wait, 2.0) + random.uniform(0, 0.02)
            self.waited_s += pause
            self._sleep(pause)

    def settle(self, estimated: int, actual: int) -> None:
        delta = actual - estimated
        if delta == 0 or self.tpm is None:
            return
        args: list[str | int] = [self._now(), delta, self._window_ms, uuid.uuid4().hex]
        keys = [self._keys["tok"], self._keys["toksum"]]
        retrying(lambda: self._settle(keys=keys, args=args), what="rate limiter")

    def cooldown(self, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        args: list[str | int] = [self._now(), ms, self._window_ms]
        keys = [self._keys["cool"], self._keys["probe"]]
        retrying(lambda: self._cooldown(keys=keys, args=args), what="rate limiter")


class RedisSemaphore:
    """At most `limit` holders at once across all workers; leases of dead holders expire."""

    def __init__(
        self,
        redis: redis.Redis,
        scope: str,
        limit: int,
        *,
        clock: Callable[[], float] | None = None,
        ttl_s: float = SLOT_TTL_S,
        poll_s: float = 0.1,
    ) -> None:
        self.redis = redis
        self.key = f"{KEY_PREFIX}{scope}:slots"
        self.limit = max(1, limit)
        self._clock = clock
        self._ttl_ms = int(ttl_s * 1000)
        self._poll_s = poll_s
        self._script = redis.register_script(_SEMAPHORE_LUA)

    def try_acquire(self, member: str) -> bool:
        """Take (or refresh) the lease `member`; False when all `limit` leases are held by others."""
        now = "" if self._clock is None else str(int(self._clock() * 1000))
        args: list[str | int] = [now, self.limit, member, self._ttl_ms]
        return bool(retrying(lambda: self._script(keys=[self.key], args=args), what="concurrency limit"))

    def release(self, member: str) -> None:
        retrying(lambda: self.redis.zrem(self.key, member), what="concurrency limit")

    def in_flight(self) -> int:
        return int(self.redis.zcard(self.key))

    @contextlib.contextmanager
    def hold(self, member: str) -> Iterator[None]:
        """Wait for a lease, keep it fresh from a thread while the body runs, give it back after."""
        while not self.try_acquire(member):
            time.sleep(self._poll_s + random.uniform(0, self._poll_s))
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(self._ttl_ms / 3000):
                with contextlib.suppress(Exception):  # Redis away: the next beat tries again
                    self.try_acquire(member)

        beat = threading.Thread(target=refresh, name="runner-lease", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join(timeout=2)
            with contextlib.suppress(Exception):
                self.release(member)
