"""Batch state in Redis: what a batch is, where each conversation stands, and its records.

A batch is one enqueue of one job file. Everything about it lives under `runner:batch:<id>`:

    runner:batch:<id>            hash   job, digest, source, output, total, created_at, started_at,
                                        ended_at, aborted; counters per state (queued, running, done,
                                        dropped) and per outcome (passed, failed, errors, nochecks),
                                        tokens, requests, fenced (runs stopped: lease lost)
    runner:batch:<id>:tasks      hash   conversation id -> task JSON (what `retry` re-enqueues)
    runner:batch:<id>:state      hash   conversation id -> queued | running | done | dropped
    runner:batch:<id>:records    hash   conversation id -> transcript record JSON (one per id)
    runner:batch:<id>:gen        hash   conversation id -> generation of its stored record
    runner:batch:<id>:want       hash   conversation id -> generation wanted (bumped by `retry`)
    runner:batch:<id>:outcome    hash   conversation id -> passed | failed | errors | nochecks
    runner:batch:<id>:log        list   conversation ids in the order their records arrived
    runner:batches               zset   recent batch ids by creation time
    runner:workers               zset   worker name -> last heartbeat (server time)

Exactly once: a record is stored only if no record of the same or a later generation is there
(`_STORE_LUA`), so a conversation that ran twice (a worker died after finishing, before RQ heard of
it) keeps its first record, and `retry` (a new generation) replaces the old one. Counters change in
the same scripts as the states, so they always add up. Times are the Redis server's clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from runner.errors import UnknownBatchError
from runner.queue.redis_server import retrying
from runner.records import Outcome, Record, outcome
from runner.settings import scrub
from runner.tasks import ConversationTask

PREFIX = "runner:batch:"
BATCHES_KEY = "runner:batches"
WORKERS_KEY = "runner:workers"
RESUME_PREFIX = "runner:resume:"

BATCH_TTL_S = 7 * 24 * 3600
"""A batch (and its records) stays in Redis this long after its last change: `collect` needs it."""

WORKER_ALIVE_S = 15.0
"""A worker whose last heartbeat is older than this counts as dead in `status`."""

STATES = ("queued", "running", "done", "dropped")
OUTCOMES = ("passed", "failed", "errors", "nochecks")
_COUNTERS = (*STATES, *OUTCOMES, "tokens", "requests", "fenced")
_SUBKEYS = ("tasks", "state", "records", "gen", "want", "outcome", "log")

_NOW = """
local t = redis.call('TIME')
local now = string.format('%.3f', tonumber(t[1]) + tonumber(t[2]) / 1e6)
"""

_EXPIRE_ALL = """
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[#ARGV])) end
"""

# KEYS: batch, tasks, state, records, gen, want, outcome, log (as _STORE_LUA).
# ARGV: conv, to, force ('1' may leave 'done'), ttl.
_TRANSITION_LUA = (
    _NOW
    + """
local from = redis.call('HGET', KEYS[3], ARGV[1])
local to = ARGV[2]
if from == to or (from == 'done' and ARGV[3] ~= '1') then return 0 end
if from then redis.call('HINCRBY', KEYS[1], from, -1) end
redis.call('HINCRBY', KEYS[1], to, 1)
redis.call('HSET', KEYS[3], ARGV[1], to)
if to == 'running' then redis.call('HSETNX', KEYS[1], 'started_at', now) end
if from == 'done' then redis.call('HDEL', KEYS[1], 'ended_at') end
"""
    + _EXPIRE_ALL
    + """
return 1
"""
)

# KEYS: batch, tasks, state, records, gen, want, outcome, log, fence (or the batch again).
# ARGV: conv, generation, record JSON, outcome, tokens, requests, token ('' = unfenced), ttl.
# 1 stored, 0 a duplicate, -1 fenced (the run's token is no longer current: counted, not stored).
_STORE_LUA = (
    _NOW
    + """
local conv, gen = ARGV[1], tonumber(ARGV[2])
if ARGV[7] ~= '' and redis.call('GET', KEYS[9]) ~= ARGV[7] then
  redis.call('HINCRBY', KEYS[1], 'fenced', 1)
  return -1
end
local cur = tonumber(redis.call('HGET', KEYS[5], conv) or '0')
if cur >= gen then return 0 end
if cur > 0 then
  local old = redis.call('HGET', KEYS[7], conv)
  if old then redis.call('HINCRBY', KEYS[1], old, -1) end
end
redis.call('HSET', KEYS[4], conv, ARGV[3])
redis.call('HSET', KEYS[5], conv, gen)
redis.call('HSET', KEYS[7], conv, ARGV[4])
redis.call('HINCRBY', KEYS[1], ARGV[4], 1)
redis.call('HINCRBY', KEYS[1], 'tokens', tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], 'requests', tonumber(ARGV[6]))
local from = redis.call('HGET', KEYS[3], conv)
if from ~= 'done' then
  if from then redis.call('HINCRBY', KEYS[1], from, -1) end
  redis.call('HINCRBY', KEYS[1], 'done', 1)
  redis.call('HSET', KEYS[3], conv, 'done')
end
redis.call('HSETNX', KEYS[1], 'started_at', now)
redis.call('RPUSH', KEYS[8], conv)
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
if done >= tonumber(redis.call('HGET', KEYS[1], 'total') or '0') then
  redis.call('HSETNX', KEYS[1], 'ended_at', now)
end
"""
    + _EXPIRE_ALL
    + """
return 1
"""
)


_COUNTER = {
    Outcome.PASSED: "passed",
    Outcome.FAILED: "failed",
    Outcome.ERROR: "errors",
    Outcome.NO_CHECKS: "nochecks",
}
"""The batch's counter of each outcome (names kept in Redis, `runner status` and the scheduler)."""


def outcome_of(record: Record) -> str:
    """The name of the counter this record counts in: passed | failed | errors | nochecks."""
    return _COUNTER[outcome(record)]


def _s(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _decode_map(raw: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


@dataclass(frozen=True)
class BatchInfo:
    """A snapshot of one batch's hash, with the figures `status` shows."""

    id: str
    job: str
    digest: str
    output: str
    total: int
    created_at: float
    started_at: float | None
    ended_at: float | None
    aborted: str | None
    counts: dict[str, int] = field(default_factory=dict)
    now: float = 0.0  # the Redis server's clock when this was read

    @classmethod
    def from_hash(cls, batch_id: str, raw: Mapping[bytes, bytes], now: float) -> BatchInfo:
        h = {k.decode(): v.decode() for k, v in raw.items()}

        def num(name: str) -> float | None:
            return float(h[name]) if h.get(name) else None

        return cls(
            id=batch_id,
            job=h.get("job", "?"),
            digest=h.get("digest", ""),
            output=h.get("output", ""),
            total=int(h.get("total", "0")),
            created_at=num("created_at") or 0.0,
            started_at=num("started_at"),
            ended_at=num("ended_at"),
            aborted=h.get("aborted") or None,
            counts={name: int(h.get(name, "0")) for name in _COUNTERS},
            now=now,
        )

    @property
    def done(self) -> int:
        return self.counts["done"]

    @property
    def state(self) -> str:
        if self.aborted:
            return "aborted"
        if self.ended_at is not None:
            return "finished"
        return "running" if self.started_at is not None else "queued"

    @property
    def finished(self) -> bool:
        return self.ended_at is not None and self.done >= self.total

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return max(0.0, (self.ended_at or self.now) - self.started_at)

    @property
    def rate(self) -> float:
        """Conversations finished per second since the batch started."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        left = self.total - self.done
        if left <= 0:
            return 0.0
        return left / self.rate if self.rate > 0 else None


class Batch:
    """One batch's keys and the operations on them (all atomic where counters are involved)."""

    def __init__(self, redis: redis.Redis, batch_id: str) -> None:
        self.redis = redis
        self.id = batch_id
        self.key = PREFIX + batch_id
        self.keys = {name: f"{self.key}:{name}" for name in _SUBKEYS}
        self._transition = redis.register_script(_TRANSITION_LUA)
        self._store = redis.register_script(_STORE_LUA)

    @property
    def all_keys(self) -> list[str]:
        return [self.key, *self.keys.values()]

    def _script_keys(self) -> list[str]:
        k = self.keys
        return [self.key, k["tasks"], k["state"], k["records"], k["gen"], k["want"], k["outcome"], k["log"]]

    def exists(self) -> bool:
        return bool(retrying(lambda: self.redis.exists(self.key)))

    def info(self) -> BatchInfo | None:
        def read() -> tuple[dict[bytes, bytes], float]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(self.key)
            pipe.time()
            raw, (sec, usec) = pipe.execute()
            return raw, sec + usec / 1e6

        raw, now = retrying(read)
        return BatchInfo.from_hash(self.id, raw, now) if raw else None

    def source(self) -> str | None:
        """The job file the batch was enqueued from (as given then)."""
        raw = self.redis.hget(self.key, "source")
        return raw.decode() if isinstance(raw, bytes) else raw

    def require(self) -> BatchInfo:
        info = self.info()
        if info is None:
            raise UnknownBatchError(
                f"no batch {self.id} on this Redis (batches are kept {BATCH_TTL_S // 86400} days)"
            )
        return info

    def create(
        self, *, job: str, digest: str, source: str, output: str, tasks: Iterable[ConversationTask]
    ) -> None:
        """Create the batch, or add to it (idempotent: a resumed batch keeps its creation fields)."""
        payload: dict[Any, Any] = {t.conversation_id: json.dumps(t.model_dump(mode="json")) for t in tasks}
        sec, usec = self.redis.time()
        pipe = self.redis.pipeline()
        for name, value in (("job", job), ("digest", digest), ("source", source), ("output", output)):
            pipe.hsetnx(self.key, name, value)
        pipe.hsetnx(self.key, "created_at", f"{sec + usec / 1e6:.3f}")
        if payload:
            pipe.hset(self.keys["tasks"], mapping=payload)
        pipe.zadd(BATCHES_KEY, {self.id: sec}, nx=True)
        pipe.execute()
        self.redis.hset(self.key, "total", self.redis.hlen(self.keys["tasks"]))
        self.touch()

    def touch(self) -> None:
        pipe = self.redis.pipeline()
        for key in self.all_keys:
            pipe.expire(key, BATCH_TTL_S)
        pipe.execute()

    def transition(self, conversation_id: str, to: str, *, force: bool = False, client: Any = None) -> bool:
        args: list[str | int] = [conversation_id, to, "1" if force else "0", BATCH_TTL_S]
        if client is not None:
            self._transition(keys=self._script_keys(), args=args, client=client)
            return True
        return bool(retrying(lambda: self._transition(keys=self._script_keys(), args=args)))

    def store_record(
        self, record: Record, generation: int = 1, *, fence: tuple[str, int] | None = None
    ) -> bool:
        """Store a finished conversation's record; False if one of this generation is already there,
        or if `fence` (fence key, token) is given and the token is no longer current."""
        return self.store_fenced(record, generation, fence=fence) == 1

    def store_fenced(
        self,
        record: Record,
        generation: int = 1,
        *,
        fence: tuple[str, int] | None = None,
        deadline_s: float | None = None,
    ) -> int:
        """`store_record`, telling why not: 1 stored, 0 a duplicate, -1 fenced (`runner.queue.fence`)."""
        text = scrub(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        usage = record.get("usage") or {}
        args: list[str | int] = [
            record["conversation_id"],
            generation,
            text,
            outcome_of(record),
            int(usage.get("total_tokens", 0) or 0),
            int(record.get("requests", 0) or 0),
            "" if fence is None else fence[1],
            BATCH_TTL_S,
        ]
        keys = [*self._script_keys(), self.key if fence is None else fence[0]]
        store = lambda: self._store(keys=keys, args=args)  # noqa: E731
        return int(retrying(store, what="storing a record", deadline_s=deadline_s))

    def has_record(self, conversation_id: str, generation: int = 1) -> bool:
        stored = retrying(lambda: self.redis.hget(self.keys["gen"], conversation_id))
        return stored is not None and int(stored) >= generation

    def wanted_generations(self) -> dict[str, int]:
        return {k: int(v) for k, v in _decode_map(self.redis.hgetall(self.keys["want"])).items()}

    def record_generations(self) -> dict[str, int]:
        return {k: int(v) for k, v in _decode_map(self.redis.hgetall(self.keys["gen"])).items()}

    def outcomes(self) -> dict[str, str]:
        return _decode_map(self.redis.hgetall(self.keys["outcome"]))

    def bump_generation(self, conversation_id: str) -> int:
        """`retry`: ask for a new record of this conversation (replacing the stored one)."""
        current = self.redis.hget(self.keys["gen"], conversation_id)
        base = int(current) if current is not None else 0
        want = max(base + 1, int(self.redis.hget(self.keys["want"], conversation_id) or 1))
        self.redis.hset(self.keys["want"], conversation_id, want)
        return want

    def tasks(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in _decode_map(self.redis.hgetall(self.keys["tasks"])).items()}

    def task(self, conversation_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys["tasks"], conversation_id)
        return json.loads(raw) if raw else None

    def records(self) -> dict[str, Record]:
        raw = retrying(lambda: self.redis.hgetall(self.keys["records"]))
        return {k: json.loads(v) for k, v in _decode_map(raw).items()}

    def record(self, conversation_id: str) -> Record | None:
        raw = self.redis.hget(self.keys["records"], conversation_id)
        return json.loads(raw) if raw else None

    def records_since(self, offset: int) -> tuple[int, dict[str, Record]]:
        """Records that arrived after the first `offset` (the `run` command collects as they come)."""

        def read() -> tuple[int, dict[str, Record]]:
            ids = [_s(x) for x in self.redis.lrange(self.keys["log"], offset, offset + 999)]
            if not ids:
                return offset, {}
            unique = sorted({i for i in ids if i})
            values = self.redis.hmget(self.keys["records"], unique)
            return offset + len(ids), {c: json.loads(v) for c, v in zip(unique, values, strict=True) if v}

        return retrying(read, what="collecting records")

    def abort(self, message: str) -> None:
        """Fatal API error (auth, quota): workers drop this batch's conversations until resumed."""
        retrying(lambda: self.redis.hsetnx(self.key, "aborted", scrub(message)))

    def clear_abort(self) -> None:
        self.redis.hdel(self.key, "aborted")

    def aborted(self) -> str | None:
        return _s(retrying(lambda: self.redis.hget(self.key, "aborted")))

    def reopen(self) -> None:
        """A retry makes a finished batch unfinished again."""
        self.redis.hdel(self.key, "ended_at")


def recent_batches(redis: redis.Redis, limit: int = 20) -> list[BatchInfo]:
    """The newest batches first; ids whose batch expired are dropped from the index."""
    ids = [_s(x) or "" for x in redis.zrevrange(BATCHES_KEY, 0, limit - 1)]
    found = []
    for batch_id in ids:
        info = Batch(redis, batch_id).info()
        if info is None:
            redis.zrem(BATCHES_KEY, batch_id)
        else:
            found.append(info)
    return found


def workers_alive(redis: redis.Redis) -> int:
    sec, usec = redis.time()
    return int(redis.zcount(WORKERS_KEY, sec + usec / 1e6 - WORKER_ALIVE_S, "+inf"))
