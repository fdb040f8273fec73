"""The limiters: LocalLimiter (one process) and the Redis ones shared by every worker.

Fast unit tests on fakeredis (with Lua) and a fake clock; one test on a real Redis server with
real threads racing for the last requests of a minute.
"""

from __future__ import annotations

import threading
from pathlib import Path

import fakeredis
import pytest
from test_queue_support import started_redis

from runner.engine.limits import WINDOW_MARGIN_S, WINDOW_S, LocalLimiter, ServerLimits
from runner.queue.limits import PROBE_WAIT_S, RedisLimiter, RedisSemaphore, limiter_scope


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter(
    r: fakeredis.FakeRedis, clock: Clock, rpm: int | None = None, tpm: int | None = None
) -> RedisLimiter:
    """A job's limiter (these caps) in a scope whose server said it allows more than any test sends."""
    lim = RedisLimiter(r, "job@abc", rpm, tpm, clock=clock, sleep=clock.sleep)
    lim.learn(ServerLimits(rpm=10**6, tpm=10**12))
    return lim


# --- LocalLimiter (kept as it was) -------------------------------------------------------------


def test_limits_local_rpm_waits_for_the_window(clock: Clock) -> None:
    lim = LocalLimiter(requests_per_minute=2, clock=clock, sleep=clock.sleep)
    lim.acquire()
    lim.acquire()
    start = clock.now
    lim.acquire()
    assert clock.now - start == pytest.approx(WINDOW_S, abs=0.01)


def test_limits_local_cooldown_and_oversized_request(clock: Clock) -> None:
    lim = LocalLimiter(tokens_per_minute=100, clock=clock, sleep=clock.sleep)
    lim.acquire(tokens=500)  # larger than the whole budget: goes through alone
    lim.cooldown(5)
    start = clock.now
    lim.settle(500, 0)
    lim.acquire(tokens=10)
    assert clock.now - start >= 5


# --- RedisLimiter ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rpm", "tpm", "calls", "expect_waits"),
    [
        (3, None, [(1, 0)] * 4, [0, 0, 0, 1]),
        (None, 100, [(1, 40), (1, 40), (1, 40)], [0, 0, 1]),
        (10, 100, [(1, 100), (1, 1)], [0, 1]),
        (None, 100, [(1, 500)], [0]),  # larger than the budget: alone, it goes through
        (None, None, [(1, 10**9)] * 5, [0] * 5),
    ],
)
def test_limits_redis_budget_per_sliding_minute(
    fake: fakeredis.FakeRedis,
    clock: Clock,
    rpm: int | None,
    tpm: int | None,
    calls: list[tuple[int, int]],
    expect_waits: list[int],
) -> None:
    lim = limiter(fake, clock, rpm, tpm)
    waits = [lim.try_acquire(r, t) for r, t in calls]
    assert [1 if w > 0 else 0 for w in waits] == expect_waits
    if any(expect_waits):
        assert max(waits) == pytest.approx(WINDOW_S + WINDOW_MARGIN_S, abs=0.01)


def test_limits_redis_takes_requests_and_tokens_together_or_neither(
    fake: fakeredis.FakeRedis, clock: Clock
) -> None:
    lim = limiter(fake, clock, rpm=10, tpm=100)
    assert lim.try_acquire(1, 90) == 0
    assert lim.try_acquire(1, 20) > 0  # the request would fit, the tokens do not: nothing taken
    assert fake.zcard("runner:limit:job@abc:req") == 1
    assert lim.try_acquire(1, 10) == 0


def test_limits_redis_window_slides(fake: fakeredis.FakeRedis, clock: Clock) -> None:
    lim = limiter(fake, clock, rpm=2)
    lim.try_acquire()
    clock.now += 30
    lim.try_acquire()
    left = WINDOW_S + WINDOW_MARGIN_S - 30  # until the first one leaves the window
    assert lim.try_acquire() == pytest.approx(left, abs=0.01)
    clock.now += left
    assert lim.try_acquire() == 0
    assert lim.try_acquire() > 0


def test_limits_redis_acquire_sleeps_until_it_fits(fake: fakeredis.FakeRedis, clock: Clock) -> None:
    lim = limiter(fake, clock, rpm=1)
    lim.acquire()
    start = clock.now
    lim.acquire()
    assert WINDOW_S <= clock.now - start <= WINDOW_S + WINDOW_MARGIN_S + 0.1
    assert lim.waited_s == pytest.approx(clock.now - start)


def test_limits_redis_settle_corrects_the_estimate(fake: fakeredis.FakeRedis, clock: Clock) -> None:
    lim = limiter(fake, clock, tpm=100)
    assert lim.try_acquire(1, 90) == 0
    assert lim.try_acquire(1, 50) > 0
    lim.settle(90, 40)  # the server counted fewer tokens than estimated
    assert lim.try_acquire(1, 50) == 0
    lim.settle(50, 80)  # and now more
    assert lim.try_acquire(1, 1) > 0


def test_limits_redis_cooldown_is_honoured_by_every_limiter_of_the_scope(
    fake: fakeredis.FakeRedis, clock: Clock
) -> None:
    a, b = limiter(fake, clock), limiter(fake, clock)
    other = RedisLimiter(fake, "other@abc", clock=clock)
    a.cooldown(2.5)
    assert b.try_acquire() == pytest.approx(2.5)
    assert other.try_acquire() == 0
    a.cooldown(1.0)  # a shorter cooldown never shortens a longer one
    assert b.try_acquire() == pytest.approx(2.5)
    clock.now += 2.5
    assert b.try_acquire() == 0


def test_limits_redis_after_a_cooldown_one_probe_goes_first(fake: fakeredis.FakeRedis, clock: Clock) -> None:
    workers = [limiter(fake, clock) for _ in range(4)]
    workers[0].cooldown(3.0)
    clock.now += 3.0
    assert workers[1].try_acquire() == 0  # the probe
    assert [w.try_acquire() for w in workers] == [PROBE_WAIT_S] * 4  # the rest wait for its answer
    workers[1].cooldown(2.0)  # the probe met a 429: a new cooldown, then a new probe
    clock.now += 2.0
    assert workers[2].try_acquire() == 0
    assert workers[3].try_acquire() == pytest.approx(PROBE_WAIT_S)
    clock.now += PROBE_WAIT_S  # no 429 came back: everyone goes again
    assert [w.try_acquire() for w in workers] == [0, 0, 0, 0]


def test_limits_scope_is_per_job_and_server_without_the_url() -> None:
    a = limiter_scope("job", "https://user:secret@api.example.com/v1")
    assert a.startswith("job@") and "secret" not in a and "example" not in a
    assert a != limiter_scope("job", "http://127.0.0.1:8000/v1")
    assert a != limiter_scope("other", "https://user:secret@api.example.com/v1")
    assert a == limiter_scope("job", "https://user:secret@api.example.com/v1")


# --- RedisSemaphore -------------------------------------------------------------------------------


def test_limits_semaphore_caps_holders_and_frees_dead_leases(fake: fakeredis.FakeRedis, clock: Clock) -> None:
    sem = RedisSemaphore(fake, "job@abc", 2, clock=clock, ttl_s=15)
    assert sem.try_acquire("a") and sem.try_acquire("b")
    assert not sem.try_acquire("c")
    assert sem.try_acquire("a")  # a holder refreshing its lease
    clock.now += 10
    assert sem.try_acquire("a")  # a refreshed; b's lease (a dead worker) runs out first
    clock.now += 6
    assert sem.try_acquire("c")
    assert not sem.try_acquire("d")
    sem.release("a")
    assert sem.try_acquire("d")


def test_limits_semaphore_hold_gives_the_lease_back_on_errors(fake: fakeredis.FakeRedis) -> None:
    sem = RedisSemaphore(fake, "job@abc", 1)
    with pytest.raises(RuntimeError), sem.hold("a"):
        assert sem.in_flight() == 1
        raise RuntimeError("boom")
    assert sem.in_flight() == 0
    with sem.hold("b"):
        assert not sem.try_acquire("c")


# --- a real Redis, real threads ---------------------------------------------------------------------


def test_limits_redis_threads_never_exceed_the_minute(tmp_path: Path) -> None:
    with started_redis(tmp_path / "redis") as (_, client):
        lim = RedisLimiter(client, "race@abc", requests_per_minute=50, tokens_per_minute=10_000)
        taken: list[int] = []
        lock = threading.Lock()

        def race() -> None:
            for _ in range(20):
                if lim.try_acquire(1, 100) == 0:
                    with lock:
                        taken.append(1)

        threads = [threading.Thread(target=race) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(taken) == 50  # 160 attempts, exactly the budget granted (server clock, one script)
        assert client.zcard("runner:limit:race@abc:req") == 50
        assert int(client.get("runner:limit:race@abc:toksum")) == 5000
