"""The limiter and the concurrency cap shared by every worker of every machine on one Redis.

The budget belongs to what the provider counts: a **scope** is (API base URL, salted fingerprint of
the API key, model) (`runner.queue.scopes`). Every job on the same key and model shares one
scope's budget and one 429 cooldown; a job's own `limits:` are caps for that job inside it.

Per scope, under `runner:limit:<scope>:`:

* `req` (sorted set): one member per request, scored by the Redis server's clock (ms), so workers
  on machines with skewed clocks still agree; `tok` (sorted set) + `toksum`: token charges and their
  running sum, corrections from `settle` included; `cool`: the time until which a 429 paused all.
* `state` (hash): the scope's limits learned from the server's `x-ratelimit-*` headers (`rpm`,
  `tpm`, `mode=headers`), or, for a server that states none, `mode=aimd` and `aimd_rpm`: start at
  `AIMD_START_RPM`, +1 per answer while the budget is nearly used, halved at each 429.
  Nothing learned yet: `BOOT_REQUESTS` requests every `BOOT_WINDOW_S` until the first answer
  says more (start conservatively). A job that sets its own `requests_per_minute` is not held by that.
* `job:<name>:req|tok|toksum`: the same window for one job's caps (when its `limits:` set some).
* One Lua script expires old entries, checks the cooldown, the scope's AND the job's request and token
  budgets, and takes all or nothing, so two workers can never both take the last request of a minute.
* When a cooldown ends, one request goes first (a probe) and the others wait `PROBE_WAIT_S`: if the
  server's window is still full (someone else spends the same key), only the probe meets a 429.
* What the server says is left of its minute (`remaining`) reconciles the window: requests or tokens
  it counted that we did not send (another client of the key) are added to our window.
* Within one process, one thread at a time asks the script for budget; the other threads of the
  process wait on a lock (no CPU, no Redis call) instead of each polling Redis.
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

from runner.engine.limits import WINDOW_MARGIN_S, WINDOW_S, ServerLimits
from runner.queue.redis_server import retrying

PROBE_WAIT_S = 1.0
"""After a 429 cooldown, one request goes first; the rest wait this long for it to come back
without a new 429 (a 429 answers at once) instead of all meeting a still-full server window."""

SLOT_TTL_S = 15.0
"""A concurrency slot not refreshed for this long belongs to a dead worker and is freed."""

BOOT_REQUESTS = 4
"""Requests a scope sends every `BOOT_WINDOW_S` before any answer has told its limits (start
conservatively; a few more go if no answer comes, so lost requests cannot stall the scope)."""

BOOT_WINDOW_S = 5.0

BOOT_WAIT_S = 0.2
"""How often a request held by `BOOT_REQUESTS` looks again (the first answer comes soon)."""

AIMD_START_RPM = 60
"""A server that states no limits: the scope starts at this many requests per minute."""

AIMD_MIN_RPM = 1
LEARN_EVERY_S = 2.0
"""A process writes what the headers say to the scope at most this often (unless they changed)."""

STATE_TTL_S = 7 * 86400
"""Learned limits are kept this long after the last answer that stated them."""

KEY_PREFIX = "runner:limit:"


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def limiter_scope(job: str, base_url: str | None) -> str:
    """A job's own scope per API base URL (hashed: it may hold a user): its concurrency slots."""
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

# One window (requests + tokens). `expire` drops what left the minute and returns the token sum;
# `wait_for` the ms until `requests`/`tokens` fit under rpm/tpm (0: they fit; limits 0: none);
# `take` records them.
_WINDOW_LUA = """
local function expire(reqk, tokk, sumk, cutoff, window)
  redis.call('ZREMRANGEBYSCORE', reqk, '-inf', cutoff)
  local sum = tonumber(redis.call('GET', sumk) or '0')
  local old = redis.call('ZRANGEBYSCORE', tokk, '-inf', cutoff)
  if #old > 0 then
    for _, m in ipairs(old) do sum = sum - tonumber(string.match(m, '|(-?%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', tokk, '-inf', cutoff)
  end
  if redis.call('ZCARD', tokk) == 0 or sum < 0 then sum = 0 end
  redis.call('SET', sumk, sum, 'PX', window * 2)
  return sum
end
local function wait_for(reqk, tokk, sum, rpm, tpm, requests, tokens, now, window)
  if rpm > 0 then
    local n = redis.call('ZCARD', reqk)
    if n + requests > rpm then
      local idx = math.min(n + requests - rpm, n) - 1
      local e = redis.call('ZRANGE', reqk, idx, idx, 'WITHSCORES')
      if #e == 0 then return 50 end
      return math.max(1, tonumber(e[2]) + window - now)
    end
  end
  if tpm > 0 and sum > 0 and sum + tokens > tpm then
    local need = sum + tokens - tpm
    local entries = redis.call('ZRANGE', tokk, 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      need = need - tonumber(string.match(entries[i], '|(-?%d+)$'))
      if need <= 0 then return math.max(1, tonumber(entries[i + 1]) + window - now) end
    end
    return 1000
  end
  return 0
end
local function take(reqk, tokk, sumk, sum, requests, tokens, now, member, window)
  for i = 1, requests do redis.call('ZADD', reqk, now, member .. ':' .. i) end
  if tokens ~= 0 then
    redis.call('ZADD', tokk, now, member .. '|' .. tokens)
    redis.call('SET', sumk, sum + tokens, 'PX', window * 2)
  end
  redis.call('PEXPIRE', reqk, window * 2)
  redis.call('PEXPIRE', tokk, window * 2)
end
"""

# KEYS: req, tok, toksum, cool, probe (time of the cooldown that wants a probe), probe_at (when the
# probe went), state, then the job's req, tok, toksum. ARGV: now|'', job rpm cap, job tpm cap,
# requests, tokens, window_ms, member, probe_wait_ms, boot requests, boot wait ms, boot window ms.
# Returns 0 when taken, else the milliseconds to wait before trying again.
_ACQUIRE_LUA = (
    _NOW_LUA
    + _WINDOW_LUA
    + """
local cap_rpm, cap_tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local requests, tokens = tonumber(ARGV[4]), tonumber(ARGV[5])
local window, member = tonumber(ARGV[6]), ARGV[7]
local cutoff = now - window
local sum = expire(KEYS[1], KEYS[2], KEYS[3], cutoff, window)
local jsum = 0
if cap_rpm > 0 or cap_tpm > 0 then jsum = expire(KEYS[8], KEYS[9], KEYS[10], cutoff, window) end
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
-- The scope's budget: what the server said, else AIMD, else (nothing known yet) a few requests.
local st = redis.call('HMGET', KEYS[7], 'rpm', 'tpm', 'mode', 'aimd_rpm')
local srpm, stpm = tonumber(st[1]) or 0, tonumber(st[2]) or 0
if st[3] == 'aimd' and cap_rpm == 0 then srpm = tonumber(st[4]) or 0 end
if not st[3] and cap_rpm == 0 and cap_tpm == 0 then
  local recent = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[11]), '+inf')
  if recent + requests > tonumber(ARGV[9]) then return tonumber(ARGV[10]) end
end
local w = wait_for(KEYS[1], KEYS[2], sum, srpm, stpm, requests, tokens, now, window)
if w > 0 then return w end
if cap_rpm > 0 or cap_tpm > 0 then
  w = wait_for(KEYS[8], KEYS[9], jsum, cap_rpm, cap_tpm, requests, tokens, now, window)
  if w > 0 then return w end
  take(KEYS[8], KEYS[9], KEYS[10], jsum, requests, tokens, now, member, window)
end
if probing then redis.call('SET', KEYS[6], now, 'PX', window) end
take(KEYS[1], KEYS[2], KEYS[3], sum, requests, tokens, now, member, window)
return 0
"""
)

# KEYS: tok, toksum (the scope's, then the job's when it has caps). ARGV: now|'', delta, window_ms, member.
_SETTLE_LUA = (
    _NOW_LUA
    + """
local delta, window = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, #KEYS, 2 do
  redis.call('ZADD', KEYS[i], now, ARGV[4] .. '|' .. delta)
  local sum = tonumber(redis.call('GET', KEYS[i + 1]) or '0') + delta
  redis.call('SET', KEYS[i + 1], sum, 'PX', window * 2)
  redis.call('PEXPIRE', KEYS[i], window * 2)
end
return 0
"""
)

# KEYS: cool, probe, state. ARGV: now|'', ms, window_ms, aimd min. Extends, never shortens, the
# cooldown every worker honours, asks for a probe when it ends, and halves an AIMD budget.
_COOLDOWN_LUA = (
    _NOW_LUA
    + """
local untl = now + tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[2])) end
redis.call('SET', KEYS[2], now, 'PX', tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[3], 'cooldowns', 1)
if cur <= now and redis.call('HGET', KEYS[3], 'mode') == 'aimd' then
  local r = tonumber(redis.call('HGET', KEYS[3], 'aimd_rpm') or '0')
  redis.call('HSET', KEYS[3], 'aimd_rpm', math.max(tonumber(ARGV[4]), math.floor(r / 2)))
end
return untl
"""
)

# KEYS: state, req, tok, toksum. ARGV: now|'', rpm|'', tpm|'', remaining requests|'', remaining
# tokens|'', window_ms, ttl_s, aimd start, aimd answers, member.
# With limits: store them and reconcile the window with what the server counted. Without (a
# server that states none): AIMD, +1 per answer while at least 80 % of the budget is in use.
_LEARN_LUA = (
    _NOW_LUA
    + """
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[6])
if rpm or tpm then
  redis.call('HSET', KEYS[1], 'mode', 'headers', 'learned_at', now)
  if rpm then redis.call('HSET', KEYS[1], 'rpm', rpm) end
  if tpm then redis.call('HSET', KEYS[1], 'tpm', tpm) end
  local rem = tonumber(ARGV[4])
  if rpm and rem then
    local ours = redis.call('ZCARD', KEYS[2])
    local extra = math.min(rpm, (rpm - rem) - ours)
    for i = 1, extra do redis.call('ZADD', KEYS[2], now, ARGV[10] .. ':x' .. i) end
    if extra > 0 then redis.call('PEXPIRE', KEYS[2], window * 2) end
  end
  local remt = tonumber(ARGV[5])
  if tpm and remt then
    local sum = tonumber(redis.call('GET', KEYS[4]) or '0')
    local extra = (tpm - remt) - sum
    if extra > 0 then
      redis.call('ZADD', KEYS[3], now, ARGV[10] .. 'x|' .. extra)
      redis.call('SET', KEYS[4], sum + extra, 'PX', window * 2)
      redis.call('PEXPIRE', KEYS[3], window * 2)
    end
  end
else
  local mode = redis.call('HGET', KEYS[1], 'mode')
  if mode == 'headers' then return 0 end
  if not mode then redis.call('HSET', KEYS[1], 'mode', 'aimd', 'aimd_rpm', tonumber(ARGV[8])) end
  local r = tonumber(redis.call('HGET', KEYS[1], 'aimd_rpm'))
  if redis.call('ZCARD', KEYS[2]) * 5 >= r * 4 then
    redis.call('HSET', KEYS[1], 'aimd_rpm', r + tonumber(ARGV[9]))
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
return 0
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
    """The limiter of one scope and one job, shared by all workers on one Redis (module docstring).

    `requests_per_minute` / `tokens_per_minute` are the job's caps inside the scope (None: none).
    `announce` runs once, before the first request (it lists the scope for `runner status`).
    `clock` (seconds) replaces the Redis server's clock, for tests only. Redis outages (a restart)
    are ridden out by retrying; a `QueueError` after `OUTAGE_S`. Thread-safe.
    """

    def __init__(
        self,
        redis: redis.Redis,
        scope: str,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        job: str = "-",
        announce: Callable[[], None] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        window_s: float = WINDOW_S + WINDOW_MARGIN_S,
    ) -> None:
        self.redis = redis
        self.scope = scope
        self.job = job
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._window_ms = int(window_s * 1000)
        base = f"{KEY_PREFIX}{scope}:"
        names = ("req", "tok", "toksum", "cool", "probe", "probe_at", "state")
        self._keys = {name: base + name for name in names}
        for name in ("req", "tok", "toksum"):
            self._keys["job_" + name] = f"{base}job:{job}:{name}"
        self._capped = bool(self.rpm or self.tpm)
        self._probe_wait_ms = int(PROBE_WAIT_S * 1000)
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        self._cooldown = redis.register_script(_COOLDOWN_LUA)
        self._learn = redis.register_script(_LEARN_LUA)
        self._lock = threading.Lock()
        self._gate = threading.Lock()  # the one thread of this process that asks Redis for budget
        self._learned: tuple[int | None, int | None] | None = None
        self._learned_at = float("-inf")
        self._answers = 0  # answers without limits not yet told to the scope (AIMD)
        self._turn_s: float | None = None
        self._turn_written_at = float("-inf")
        self.waited_s = 0.0  # time this limiter made its callers wait (for figures)
        self._announce = announce  # called once, before the first request (lists the scope)

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    def _elapsed(self) -> float:
        return time.monotonic() if self._clock is None else self._clock()

    def try_acquire(self, requests: int = 1, tokens: int = 0) -> float:
        """Take the budget now if it fits and return 0.0; else the seconds to wait (nothing taken)."""
        announce, self._announce = self._announce, None
        if announce is not None:
            retrying(announce, what="rate limiter")
        k = self._keys
        keys = [k["req"], k["tok"], k["toksum"], k["cool"], k["probe"], k["probe_at"], k["state"],
                k["job_req"], k["job_tok"], k["job_toksum"]]  # fmt: skip
        args: list[str | int] = [self._now(), self.rpm or 0, self.tpm or 0, requests, tokens, self._window_ms]
        args += [uuid.uuid4().hex, self._probe_wait_ms, BOOT_REQUESTS, int(BOOT_WAIT_S * 1000)]
        args += [int(BOOT_WINDOW_S * 1000)]
        wait_ms = retrying(lambda: self._acquire(keys=keys, args=args), what="rate limiter")
        return int(wait_ms) / 1000.0

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        # One thread per process asks Redis at a time; the others of this process queue on the gate
        # (blocked, no CPU, no Redis call). Hundreds of conversation threads each polling the script
        # cost more CPU than the conversations themselves once the budget binds.
        with self._gate:
            while True:
                wait = self.try_acquire(requests, tokens)
                if wait <= 0:
                    return
                # Jitter spreads the processes (and machines) that all wait for the same slot.
                pause = min(wait, 2.0) + random.uniform(0, 0.02)
                self.waited_s += pause
                self._sleep(pause)

    def settle(self, estimated: int, actual: int) -> None:
        delta = actual - estimated
        if delta == 0:
            return
        args: list[str | int] = [self._now(), delta, self._window_ms, uuid.uuid4().hex]
        keys = [self._keys["tok"], self._keys["toksum"]]
        if self._capped:
            keys += [self._keys["job_tok"], self._keys["job_toksum"]]
        retrying(lambda: self._settle(keys=keys, args=args), what="rate limiter")

    def cooldown(self, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        args: list[str | int] = [self._now(), ms, self._window_ms, AIMD_MIN_RPM]
        keys = [self._keys["cool"], self._keys["probe"], self._keys["state"]]
        retrying(lambda: self._cooldown(keys=keys, args=args), what="rate limiter")

    def learn(self, limits: ServerLimits) -> None:
        """What an answer's headers said (`runner.engine.limits.observe`): into the scope, at most
        every `LEARN_EVERY_S` per process unless the limits changed."""
        now = self._elapsed()
        with self._lock:
            stated = None if limits.empty else (limits.rpm, limits.tpm)
            if stated is None:
                self._answers += 1
            if stated == self._learned and now - self._learned_at < LEARN_EVERY_S:
                return
            answers, self._answers = self._answers, 0
            self._learned, self._learned_at = stated, now
        k = self._keys

        def opt(v: int | None) -> str | int:
            return "" if v is None else v

        args: list[str | int] = [
            self._now(), opt(limits.rpm), opt(limits.tpm), opt(limits.remaining_requests),
            opt(limits.remaining_tokens), self._window_ms, STATE_TTL_S, AIMD_START_RPM, answers,
            uuid.uuid4().hex,
        ]  # fmt: skip
        keys = [k["state"], k["req"], k["tok"], k["toksum"]]
        with contextlib.suppress(redis.RedisError):  # learning is best effort: the next answer tells again
            self._learn(keys=keys, args=args)

    def note_turn(self, seconds: float) -> None:
        """How long a turn took (a moving average, written to the scope as `turn_s` at most every
        `LEARN_EVERY_S`): what `runner run` sizes its pool with next time."""
        now = self._elapsed()
        with self._lock:
            self._turn_s = seconds if self._turn_s is None else 0.9 * self._turn_s + 0.1 * seconds
            if now - self._turn_written_at < LEARN_EVERY_S:
                return
            self._turn_written_at, value = now, self._turn_s
        with contextlib.suppress(redis.RedisError):
            self.redis.hset(self._keys["state"], "turn_s", f"{value:.3f}")

    def state(self) -> dict[str, str]:
        """The scope's learned state (`rpm`, `tpm`, `mode`, `aimd_rpm`, `cooldowns`...)."""
        raw = self.redis.hgetall(self._keys["state"])
        return {as_text(key): as_text(value) for key, value in raw.items()}


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
