"""The scheduler: job files with `schedule:` enqueued as one batch per cron tick into the shared queue.

`runner schedule FILE...` runs a `Scheduler`. Several schedulers may run against the same Redis
(one per machine, for availability); every tick is still enqueued exactly once:

* **Lease.** Each scheduled job has a lease in Redis (`SET NX PX` with a random token, renewed every
  third of its TTL, released on a clean exit). Only the holder enqueues the job's ticks; the others
  stand by and take the lease over within one TTL when the holder dies.
* **Watermark + claim.** The last tick handled per job is kept in Redis. A tick is claimed by one Lua
  script that checks the caller still holds the lease (a fence against a holder that stalled past
  its TTL), that the tick is after the watermark, and sets `runner:schedule:<job>:tick:<iso>` NX.
  Only then is the batch enqueued, with a batch id made from the job name and the tick time. So a
  restart, a failover or a second scheduler never enqueues a tick again. If a scheduler dies between
  the claim and the end of the enqueue, the next lease holder enqueues the tick again under the same
  batch id, which `enqueue_job` turns into "fill in what is missing", never into a second batch.
* **Missed ticks.** Ticks that came while no scheduler ran are handled when a scheduler starts (or
  takes a lease over): the latest one is enqueued once if it is less than one period old (its next
  tick has not come yet, which always holds for the latest tick of a regular cron), and every older
  one is skipped with a log line. The first scheduler ever to see a job starts from its next tick.
* **Reload.** Files are re-read when they change and at every tick, so an edit is picked up without a
  restart; a file that no longer validates is reported (`PATH:LINE: where: what`) and its last valid
  version stays scheduled.
* **Collection.** The lease holder writes each finished batch's JSONL (as `runner collect` would) to
  the job's `output` rendered with the tick time, and keeps the result for `runner status`.

Cron (`cron_problem`, `parse_cron`): five fields (minute resolution) or six with seconds first
(`*/10 * * * * *`), `@daily`-style aliases, in UTC unless prefixed with `CRON_TZ=<IANA zone> ` (or
`TZ=`), e.g. `CRON_TZ=Europe/Paris 0 6 * * *`. Time is injected (`clock`, `sleep`) so tests control it.
What `runner status` shows of the schedules is in `runner.queue.schedules`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis as redis_lib

from runner.errors import JobFileError, Problem, QueueError, RunnerError, UsageError
from runner.jobs import Job, load_job
from runner.jobs.cron import Cron, cron_problem, parse_cron
from runner.queue.batch import Batch
from runner.queue.collector import collect
from runner.queue.enqueue import enqueue_job
from runner.queue.schedules import (
    KEY_PREFIX,
    SCHEDULES_KEY,
    decoded,
    iso,
    schedule_status,
    tick_batch_id,
    utc_now,
)

log = logging.getLogger("runner.queue.scheduler")

DEFAULT_LEASE_TTL_S = 5.0
"""A dead holder's lease expires after this; a standby takes over within it (plus one renewal)."""
CLAIM_TTL_MIN_S = 3600.0
"""Tick claims outlive any race on their tick; the watermark, not the claim, guards restarts."""
CLAIM_TTL_MAX_S = 40 * 86400.0
LATE_AFTER_S = 2.0
"""A tick enqueued later than this after its time is logged as a missed tick."""
SKIPPED_LINES_MAX = 5
"""More skipped ticks than this are logged as one summary line, not one line each."""
SKIPPED_COUNT_MAX = 10_000

Clock = Callable[[], datetime]
Sleep = Callable[[float], None]
Enqueue = Callable[..., str]


# --- Redis scripts --------------------------------------------------------------------------------

_HOLD = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return {1, cur} end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return {2, ''} end
return {0, cur}
"""
"""Renew our lease (1), take a free one (2), or report its holder (0)."""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_ADVANCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local done = tonumber(redis.call('HGET', KEYS[2], 'handled_until_ms') or '-1')
if done >= tonumber(ARGV[2]) then return 0 end
if ARGV[5] == 'enqueue' then
  if not redis.call('SET', KEYS[3], 'enqueuing ' .. ARGV[1], 'NX', 'PX', ARGV[4]) then return 0 end
  redis.call('HSET', KEYS[2], 'last_tick', ARGV[3], 'last_batch', ARGV[6], 'last_status', 'enqueuing',
             'last_error', '')
end
redis.call('HSET', KEYS[2], 'handled_until_ms', ARGV[2], 'handled_until', ARGV[3])
return 1
"""
"""Fenced by the lease: move the job's watermark to a tick, claiming it when it is to be enqueued.
Returns 1 when done, 0 when the tick was already handled, -1 when the lease is no longer ours."""


# --- the scheduler --------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One job file as the scheduler sees it: its last valid version and its lease state."""

    path: Path
    job: Job | None = None
    cron: Cron | None = None
    stat: tuple[int, int, int] | None = None
    reported: str | None = None  # the last load problem logged, so it is logged once
    held: bool = False
    holder_seen: str | None = None
    next_written: str | None = None

    @property
    def name(self) -> str | None:
        return self.job.name if self.job is not None and self.cron is not None else None


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class Scheduler:
    """Enqueues the ticks of job files with `schedule:`; see the module docstring for the rules.

    `run()` loops until `stop()`; `step()` is one pass (tests drive it with an injected clock).
    With `collect`, the lease holder also writes each finished batch's JSONL (`runner collect`).
    """

    paths: Sequence[str | Path]
    redis: redis_lib.Redis
    enqueue: Enqueue | None = None  # default: runner.queue.enqueue.enqueue_job
    clock: Clock = utc_now
    sleep: Sleep | None = None  # default: wait on the stop event, so a signal wakes us at once
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    collect: bool = True
    holder: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._entries = [_Entry(Path(p)) for p in self.paths]
        self._hold = self.redis.register_script(_HOLD)
        self._release = self.redis.register_script(_RELEASE)
        self._advance = self.redis.register_script(_ADVANCE)
        self._renew = self.redis.register_script(_RENEW)
        self._load_all()

    # -- files --

    def _read(self, e: _Entry) -> tuple[Job, Cron | None]:
        """Load and parse one file; raises JobFileError (a bad schedule located like other problems)."""
        job = load_job(e.path)
        if job.schedule is None:
            return job, None
        problem = cron_problem(job.schedule)
        if problem is not None:
            raise JobFileError([Problem(str(e.path), None, "schedule", problem)])
        return job, parse_cron(job.schedule)

    def _load_all(self) -> None:
        """At start every file must validate (exit 2 otherwise) and one at least must be scheduled."""
        problems: list[Problem] = []
        for e in self._entries:
            e.stat = _stat(e.path)
            try:
                e.job, e.cron = self._read(e)
            except JobFileError as err:
                problems.extend(err.problems)
        if problems:
            raise JobFileError(problems)
        unscheduled = [e for e in self._entries if e.cron is None]
        if len(self._entries) == 1 and unscheduled:
            raise UsageError(f"{self._entries[0].path}: no `schedule:` in this job file, nothing to schedule")
        if len(unscheduled) == len(self._entries):
            raise UsageError("none of these job files has a `schedule:`, nothing to schedule")
        for e in unscheduled:
            log.warning("%s: no `schedule:`, not scheduled (until it has one)", e.path)
        names = [e.name for e in self._entries if e.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"job name {dupes[0]!r} is scheduled by more than one file")

    def _report(self, e: _Entry, lines: list[str]) -> None:
        if "\n".join(lines) != e.reported:  # once per distinct problem, not once per pass
            e.reported = "\n".join(lines)
            for line in lines:
                log.error("%s (keeping the last valid version)", line)

    def _reload(self, e: _Entry, *, force: bool) -> None:
        """Pick up an edited file; a broken one keeps its last valid version scheduled."""
        stat = _stat(e.path)
        if not force and stat == e.stat:
            return
        e.stat = stat
        try:
            job, cron = self._read(e)
        except JobFileError as err:
            return self._report(e, [str(p) for p in err.problems])
        except (RunnerError, OSError) as err:
            return self._report(e, [f"{e.path}: {getattr(err, 'strerror', None) or err}"])
        if cron is not None and job.name in {o.name for o in self._entries if o is not e}:
            return self._report(e, [f"{e.path}: job name {job.name!r} is scheduled by another file"])
        e.reported = None
        assert e.job is not None
        if e.job.digest == job.digest and e.cron == cron and e.job.name == job.name:
            return
        if cron is None:
            log.warning("%s: no `schedule:` any more, not scheduled (until it has one)", e.path)
        else:
            log.info("%s: reloaded (%s: %s)", e.path, job.name, cron.text)
        if e.name is not None and job.name != e.name:
            self._release_lease(e)
        e.job, e.cron, e.next_written = job, cron, None

    # -- leases --

    def _key(self, name: str, suffix: str = "") -> str:
        return f"{KEY_PREFIX}{name}{suffix}"

    def _hold_lease(self, e: _Entry, name: str) -> bool | None:
        """True: we hold it (and held it before); None: we just took it; False: someone else has it."""
        ttl_ms = int(self.lease_ttl_s * 1000)
        status, holder = self._hold(keys=[self._key(name, ":lease")], args=[self.holder, ttl_ms])
        holder = decoded(holder)
        if status == 0:
            if e.held:
                log.warning("%s: lost the lease to %s, standing by", name, holder)
            elif holder != e.holder_seen:
                log.info("%s: standing by (lease held by %s)", name, holder)
            e.held, e.holder_seen = False, holder
            return False
        fresh = not e.held
        if fresh:
            log.info("%s: holding the lease (%s)", name, self.holder)
        e.held, e.holder_seen = True, self.holder
        return None if fresh else True

    def _release_lease(self, e: _Entry) -> None:
        if e.name is not None and e.held:
            self._release(keys=[self._key(e.name, ":lease")], args=[self.holder])
            log.info("%s: released the lease", e.name)
        e.held = False

    def release(self) -> None:
        """Give up every lease held, so a standby takes over at once (called on a clean exit)."""
        for e in self._entries:
            try:
                self._release_lease(e)
            except redis_lib.RedisError as err:
                log.warning("%s: could not release the lease: %s", e.name, err)

    # -- ticks --

    def _register(self, e: _Entry, name: str, now: datetime) -> None:
        assert e.cron is not None
        nxt = iso(e.cron.next_after(now))
        if e.next_written != nxt:
            fields: dict[Any, Any] = {
                "job": name,
                "cron": e.cron.text,
                "source": str(e.path),
                "next_tick": nxt,
            }
            pipe = self.redis.pipeline()
            pipe.sadd(SCHEDULES_KEY, name)
            pipe.hset(self._key(name), mapping=fields)
            pipe.execute()
            e.next_written = nxt

    def _advance_to(self, name: str, tick: datetime, period: timedelta, mode: str, batch_id: str = "") -> int:
        ttl_ms = int(min(max(CLAIM_TTL_MIN_S, 3 * period.total_seconds()), CLAIM_TTL_MAX_S) * 1000)
        keys = [self._key(name, ":lease"), self._key(name), self._key(name, f":tick:{iso(tick)}")]
        args: list[str | int] = [self.holder, int(tick.timestamp() * 1000), iso(tick), ttl_ms, mode, batch_id]
        return int(self._advance(keys=keys, args=args))

    def _due(self, e: _Entry, name: str, now: datetime) -> None:
        """As the lease holder: enqueue the job's due tick, skip the stale ones."""
        assert e.cron is not None
        state = self._key(name)
        done_ms = self.redis.hget(state, "handled_until_ms")
        if done_ms is None:  # the first scheduler ever for this job: nothing was missed
            self.redis.hset(
                state, mapping={"handled_until_ms": int(now.timestamp() * 1000), "handled_until": iso(now)}
            )
            nxt = iso(e.cron.next_after(now))
            log.info("%s: scheduled '%s' from %s, next tick %s", name, e.cron.text, iso(now), nxt)
            return
        done = datetime.fromtimestamp(int(done_ms) / 1000, UTC)
        latest = e.cron.latest_at_or_before(now)
        if latest <= done:
            return
        skipped = self._between(e.cron, done, latest)
        period = e.cron.next_after(latest) - latest
        if now - latest >= period:  # cannot happen with a regular cron; the rule holds anyway
            if self._advance_to(name, latest, period, "skip") == 1:
                self._log_skipped(name, [*skipped, latest])
            return
        cron = e.cron
        self._reload(e, force=True)  # the file as it is at the tick, edits and datasets included
        if e.name != name or e.cron != cron:
            return  # renamed or rescheduled just now: the next pass goes by the new version
        batch_id = tick_batch_id(name, latest)
        claimed = self._advance_to(name, latest, period, "enqueue", batch_id)
        if claimed == -1:
            log.warning("%s: lease lost before tick %s, standing by", name, iso(latest))
            e.held = False
        elif claimed == 0:
            log.info("%s: tick %s already enqueued by another scheduler", name, iso(latest))
        else:
            self._log_skipped(name, skipped)
            self._enqueue_tick(e, name, latest, batch_id, late=now - latest)

    def _resume(self, e: _Entry, name: str) -> None:
        """On taking a lease: a tick claimed by a scheduler that died before its enqueue finished is
        enqueued again under the same batch id (enqueue_job is idempotent for a given batch id)."""
        status, tick, batch_id = (decoded(v) if v is not None else None for v in self.redis.hmget(
            self._key(name), "last_status", "last_tick", "last_batch"))  # fmt: skip
        if status == "enqueuing" and tick and batch_id:
            log.warning("%s: the enqueue of tick %s was interrupted, finishing it", name, tick)
            when = datetime.strptime(tick, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            self._reload(e, force=True)
            self._enqueue_tick(e, name, when, batch_id, late=timedelta(0))

    def _enqueue_tick(self, e: _Entry, name: str, tick: datetime, batch_id: str, late: timedelta) -> None:
        assert e.job is not None
        enqueue = self.enqueue or enqueue_job
        state = self._key(name)
        try:
            batch_id = enqueue(e.job, redis=self.redis, output=None, now=tick, batch_id=batch_id)
        except Exception as err:  # the API or Redis failed: this tick is spent, the next one tries
            why = str(err) if isinstance(err, RunnerError) else f"{type(err).__name__}: {err}"
            self.redis.hset(state, mapping={"last_status": "error", "last_error": why})
            log.error("%s: tick %s not enqueued: %s", name, iso(tick), why.replace("\n", "; "))
            return
        done: dict[Any, Any] = {
            "last_batch": batch_id,
            "last_status": "enqueued",
            "last_enqueued_at": iso(self.clock()),
        }
        pipe = self.redis.pipeline()
        pipe.hset(state, mapping=done)
        pipe.set(self._key(name, f":tick:{iso(tick)}"), batch_id, keepttl=True, xx=True)
        if self.collect:
            pipe.sadd(self._key(name, ":pending"), batch_id)
        pipe.execute()
        if late.total_seconds() > LATE_AFTER_S:
            log.info("%s: enqueued missed tick %s as batch %s (late by %s)",
                     name, iso(tick), batch_id, _human(late))  # fmt: skip
        else:
            log.info("%s: enqueued tick %s as batch %s", name, iso(tick), batch_id)

    def _between(self, cron: Cron, after: datetime, before: datetime) -> list[datetime]:
        ticks: list[datetime] = []
        t = cron.next_after(after)
        while t < before and len(ticks) < SKIPPED_COUNT_MAX:
            ticks.append(t)
            t = cron.next_after(t)
        return ticks

    def _log_skipped(self, name: str, skipped: list[datetime]) -> None:
        if len(skipped) <= SKIPPED_LINES_MAX:
            for t in skipped:
                log.info("%s: skipped missed tick %s (more than one period old)", name, iso(t))
        else:
            more = "+" if len(skipped) >= SKIPPED_COUNT_MAX else ""
            first, last = iso(skipped[0]), iso(skipped[-1])
            log.info("%s: skipped %d%s missed ticks %s .. %s (more than one period old)",
                     name, len(skipped), more, first, last)  # fmt: skip

    def _collect_finished(self, name: str) -> None:
        """Write the JSONL of every finished batch of the job (once: the lease holder does it)."""
        pending = self._key(name, ":pending")
        for batch_id in sorted(decoded(b) for b in self.redis.smembers(pending)):
            info = Batch(self.redis, batch_id).info()
            if info is not None and not info.finished and not info.aborted:
                continue
            self.redis.srem(pending, batch_id)
            if info is None:
                continue
            c = info.counts
            result = f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors"
            result += f", {c['nochecks']} without checks" if c["nochecks"] else ""
            result += f", aborted: {info.aborted}" if info.aborted else ""
            try:
                path = collect(batch_id, self.redis)
            except (OSError, RunnerError) as err:
                log.error("%s: batch %s finished (%s) but was not written: %s (run `runner collect %s`)",
                          name, batch_id, result, err, batch_id)  # fmt: skip
                continue
            self.redis.hset(self._key(name), mapping={"last_result": result, "last_result_batch": batch_id})
            log.info("%s: batch %s finished (%s), wrote %s", name, batch_id, result, path)

    # -- the loop --

    def step(self) -> float:
        """One pass: reload changed files, hold leases, enqueue due ticks; returns seconds to sleep."""
        now = _aware(self.clock())
        wake = now + timedelta(seconds=self.lease_ttl_s / 3)
        for e in self._entries:
            self._reload(e, force=False)
        for e in self._entries:
            name = e.name
            if name is None:
                self._release_lease(e)
                continue
            held = self._hold_lease(e, name)
            if held is False:
                continue
            if held is None:
                self._resume(e, name)
            self._due(e, name, now)
            if self.collect:
                self._collect_finished(name)
            assert e.cron is not None
            self._register(e, name, now)
            wake = min(wake, e.cron.next_after(now))
        return max(0.0, (wake - _aware(self.clock())).total_seconds())

    def _keep_leases(self) -> None:
        """Renew held leases on a clock of their own, so a slow enqueue (preparing assistants over
        the API) never lets a lease lapse while its holder is alive; losses are noticed by `step`."""
        ttl_ms = int(self.lease_ttl_s * 1000)
        while not self._stop.wait(self.lease_ttl_s / 3):
            for name in [e.name for e in self._entries if e.held and e.name]:
                with contextlib.suppress(redis_lib.RedisError):  # the main loop reports outages
                    self._renew(keys=[self._key(str(name), ":lease")], args=[self.holder, ttl_ms])

    def run(self) -> None:
        """Loop until `stop()`; leases are released on the way out."""
        sleep = self.sleep or self._stop.wait
        keeper = threading.Thread(target=self._keep_leases, name="schedule-leases", daemon=True)
        keeper.start()
        down = False
        try:
            while not self._stop.is_set():
                try:
                    delay = self.step()
                    if down:
                        log.warning("Redis reachable again")
                    down = False
                except (redis_lib.RedisError, QueueError) as err:  # an outage: lease and ticks wait
                    if not down:
                        log.error("Redis unreachable (%s), retrying", err)
                    down = True
                    for e in self._entries:
                        e.held = False
                    delay = self.lease_ttl_s / 3
                if not self._stop.is_set():
                    sleep(delay)
        finally:
            self._stop.set()
            keeper.join()
            self.release()

    def stop(self) -> None:
        self._stop.set()


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _human(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h{(s % 3600) // 60:02d}m"


__all__ = ["Scheduler", "schedule_status", "tick_batch_id"]
