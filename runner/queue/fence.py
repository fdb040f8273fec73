"""Fencing: a token per run of a conversation, so a worker that lost its lease stops spending.

Every run of a conversation job takes a token: `INCR runner:fence:<job id>` when a worker leases
it (`claim`), and again when the reaper requeues it (`bump`). Only the run holding the current
token may go on. A worker checks it (`Fence.check`, installed as `runner.engine.retry.request_guard`)
before every API request of the conversation, together with the batch's abort flag, and the record
is stored only if the token still matches (`Batch.store_record(..., fence=...)`, atomically in Lua).
A worker stalled past its lease (SIGSTOP, a partition, a long pause) thus sends at most the request
it had in flight when it stalled, and its record is refused; each stop is logged and counted
(`fenced` in the batch's hash, shown by `runner status`).

Redis away (a restart, a partition: a worker cannot tell them apart): a check that cannot reach
Redis lets the request go while the process confirmed its leases within `TRUST_S` (shorter than the
lease: nobody can have taken the conversation over yet). After that the conversation *waits* for
Redis instead of sending: a partitioned worker's lease lapses after `LEASE_TTL_S` and another worker
may be re-running the conversation, so going on would spend twice for as long as the partition
lasts. When Redis answers again, the token says whether the run may go on. Past the outage limit
(`redis_server.outage_limit()`: RUNNER_REDIS_OUTAGE_S, default 60 s, counted from the last
confirmation) or once the worker gave up (`redis_server.abandon()`), the conversation stops
(`LeaseLostError`, `Fence.away`): nothing recorded, its job is re-run once Redis is back. The keeper's
beat also tells which leases it could not renew (`revoke`): their runs stop at their next check.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from runner.errors import LeaseLostError
from runner.queue.redis_server import abandoned, outage_limit

log = logging.getLogger("runner.queue.fence")

FENCE_PREFIX = "runner:fence:"
FENCE_TTL_S = 7 * 24 * 3600
TRUST_S = 6.0
"""A process whose leases were confirmed this recently still holds them (the lease lasts 10 s)."""

POLL_S = 0.5

AWAY_S = 3.0
"""The keeper beats every 2 s: a last confirmation older than this means a beat failed, and calls
that are only best effort (limiter corrections) are skipped instead of waiting for Redis."""

_claimed: dict[str, int] = {}
_revoked: set[tuple[str, int]] = set()
_lock = threading.Lock()
_last_ok: float | None = None  # None: no keeper in this process (a plain `rq worker`)
_quick: dict[int, redis_lib.Redis] = {}

# KEYS: lease, fence. ARGV: owner, token, ttl. Re-take the lease only while the token is current.
_RELEASE_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
return 1
"""


def fence_key(job_id: str) -> str:
    return FENCE_PREFIX + job_id


def confirmed(sent_at: float | None = None) -> None:
    """Redis answered this process's keeper: its leases were renewed no earlier than `sent_at` (the
    monotonic time the beat was sent: a slow answer must not stretch the trust past the lease)."""
    global _last_ok
    _last_ok = time.monotonic() if sent_at is None else sent_at


def since_confirmed() -> float:
    """Seconds since the keeper's last beat reached Redis (0 in a process without a keeper, whose
    Redis calls simply wait the way `retrying` does)."""
    return 0.0 if _last_ok is None else time.monotonic() - _last_ok


def redis_away() -> bool:
    """The keeper's last beat failed: Redis is (probably) away right now."""
    return since_confirmed() > AWAY_S


def quick(redis: redis_lib.Redis) -> redis_lib.Redis:
    """A client on the same server that fails at once when Redis is away (short timeouts, no retries)."""
    return _quick_client(redis)


def out_of_patience() -> bool:
    """This process stops waiting for Redis: it gave up, or Redis has been away past the limit."""
    return abandoned() or since_confirmed() > outage_limit()


def reachable(redis: redis_lib.Redis) -> bool:
    """Does Redis answer now (one quick PING, no retries; a server still loading says no)?"""
    try:
        return bool(_quick_client(redis).ping())
    except redis_lib.RedisError:
        return False


def revoke(job_id: str, token: int) -> None:
    """The keeper could not renew this run's lease (its token is no longer current): it stops."""
    with _lock:
        _revoked.add((job_id, token))


def _is_revoked(job_id: str, token: int) -> bool:
    with _lock:
        return (job_id, token) in _revoked


def claim(redis: redis_lib.Redis, job_id: str) -> int:
    """A new token for a run of this job, kept for the thread that runs it (`take`)."""
    pipe = redis.pipeline()
    pipe.incr(fence_key(job_id))
    pipe.expire(fence_key(job_id), FENCE_TTL_S)
    token = int(pipe.execute()[0])
    with _lock:
        _claimed[job_id] = token
    return token


def take(job_id: str) -> int | None:
    """The token `claim` took for this job in this process (None: claimed elsewhere, or never)."""
    with _lock:
        return _claimed.pop(job_id, None)


def bump(client: Any, job_id: str) -> None:
    """The reaper takes a job back: whoever ran it so far is fenced off (`client` may be a pipeline)."""
    client.incr(fence_key(job_id))
    client.expire(fence_key(job_id), FENCE_TTL_S)


def relet(client: Any, lease_key: str, job_id: str, owner: str, token: int, ttl: int) -> None:
    """The keeper's beat: renew (or, after a Redis restart, re-take) a lease while the token is
    current (on a pipeline: its result is 1, or 0 when the token moved on)."""
    client.eval(_RELEASE_LUA, 2, lease_key, fence_key(job_id), owner, token, ttl)


_RELEASE_OWN_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def release(redis: redis_lib.Redis, lease_key: str, owner: str) -> None:
    """Give a lease back if it is still `owner`'s: a fenced run must not delete the lease of the run
    that took its job over (same job id), or the reaper would start a third."""
    redis.eval(_RELEASE_OWN_LUA, 1, lease_key, owner)


def _quick_client(redis: redis_lib.Redis) -> redis_lib.Redis:
    """A client on the same server with short timeouts and no retries: a check must not hang for
    the main client's 30 s socket timeout while the network is partitioned."""
    client = _quick.get(id(redis))
    if client is None:
        kwargs = dict(redis.connection_pool.connection_kwargs)
        kwargs.update(socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        pool = redis_lib.ConnectionPool(connection_class=redis.connection_pool.connection_class, **kwargs)
        client = _quick[id(redis)] = redis_lib.Redis(connection_pool=pool)
    return client


@dataclass
class Fence:
    """One run of one conversation: its job, token and batch; `check` is its request guard."""

    redis: redis_lib.Redis
    job_id: str
    token: int
    batch_key: str
    lost: str | None = None  # why this run stopped; once set, every check fails at once
    away: bool = False  # stopped because Redis stayed away: the job is left to the reaper

    @property
    def key(self) -> str:
        return fence_key(self.job_id)

    def check(self) -> None:
        """Raise `LeaseLostError` if this run may not send another request (module docstring)."""
        if self.lost is not None:
            raise LeaseLostError(self.lost)
        if _is_revoked(self.job_id, self.token):
            self.count()
            self._stop(f"lease lost (token {self.token}): conversation stopped")
        quick = _quick_client(self.redis)
        while True:
            try:
                pipe = quick.pipeline(transaction=False)
                pipe.get(self.key)
                pipe.hget(self.batch_key, "aborted")
                current, aborted = pipe.execute()
                break
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, redis_lib.BusyLoadingError):
                away = since_confirmed()
                if away < TRUST_S and not abandoned():
                    return  # the lease is still ours: go on through a blip
                if out_of_patience():
                    self.away = True
                    self._stop(f"Redis unreachable for {away:.0f}s: conversation stopped")
                time.sleep(POLL_S)
        if aborted:
            self._stop("batch aborted: conversation stopped")
        if current is None or int(current) != self.token:
            self.count()
            self._stop(f"lease lost (token {self.token}, now {_text(current)}): conversation stopped")

    def _stop(self, why: str) -> None:
        self.lost = why
        raise LeaseLostError(why)

    def count(self) -> None:
        """Log and count a fenced run (the batch's `fenced` counter)."""
        log.warning("job %s: lease lost (token %d): stopping its conversation", self.job_id, self.token)
        with contextlib.suppress(redis_lib.RedisError):
            self.redis.hincrby(self.batch_key, "fenced", 1)


def _text(value: Any) -> str:
    return "none" if value is None else value.decode() if isinstance(value, bytes) else str(value)
