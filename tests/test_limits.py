"""The limiters: LocalLimiter (one process) and the Redis ones shared by every worker.

Fast unit tests on fakeredis (with Lua) and a fake clock; one test on a real Redis server with
real threads racing for the last requests of a minute.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import fakeredis
import pytest
from click.testing import CliRunner
from test_queue_support import scan_for, started_redis

from runner.cli import main
from runner.engine.client import make_client
from runner.engine.limits import (
    WINDOW_MARGIN_S,
    WINDOW_S,
    LocalLimiter,
    ServerLimits,
    parse_duration,
    parse_server_limits,
)
from runner.engine.retry import Caller
from runner.queue.execute import limiter_for
from runner.queue.limits import (
    AIMD_START_RPM,
    BOOT_REQUESTS,
    KEY_PREFIX,
    LEARN_EVERY_S,
    PROBE_WAIT_S,
    RedisLimiter,
    RedisSemaphore,
    limiter_scope,
)
from runner.queue.scopes import SALT_KEY, scope_for, scope_status
from runner.settings import Settings
from runner.simulator.config import NOMINAL_TPM
from runner.tasks import Limits


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


def test_limits_scope_follows_a_redis_flushed_or_replaced_at_the_same_address() -> None:
    server = fakeredis.FakeServer()
    fake, peer = fakeredis.FakeRedis(server=server), fakeredis.FakeRedis(server=server)
    key, url = "sk-test-salt-0123456789", "https://api.example.com/v1"
    settings = Settings(api_key=key, base_url=url)
    before = scope_for(fake, url, key, "gpt-4o-mini")
    assert before == scope_for(fake, url, key, "gpt-4o-mini")  # stable while the salt is
    assert key not in before.name and fake.get(SALT_KEY)
    old_limiter = limiter_for(fake, "nightly", Limits(), settings, "gpt-4o-mini")
    assert old_limiter.scope == before.name

    fake.flushall()  # same address, same client, a new Redis: its first asker makes a new salt
    after_peer = scope_for(peer, url, key, "gpt-4o-mini")  # another process, never cached anything
    after = scope_for(fake, url, key, "gpt-4o-mini")
    assert after == after_peer  # one scope for the key on this Redis, whoever names it
    assert after.key != before.key  # the old salt is gone with the old Redis
    limiter = limiter_for(fake, "nightly", Limits(), settings, "gpt-4o-mini")
    assert limiter.scope == after.name and limiter is not old_limiter


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


def test_limits_redis_one_thread_per_process_asks_while_the_others_wait(fake: fakeredis.FakeRedis) -> None:
    # Hundreds of conversation threads each polling the script cost more CPU than the turns: while
    # the budget is closed (a cooldown), one thread of the process asks Redis, the rest queue behind it.
    lim = RedisLimiter(fake, "gate@abc")
    lim.learn(ServerLimits(rpm=10**6, tpm=10**12))
    inside, most, calls = 0, 0, 0
    lock = threading.Lock()
    ask = lim.try_acquire

    def counted(requests: int = 1, tokens: int = 0) -> float:
        nonlocal inside, most, calls
        with lock:
            inside, calls = inside + 1, calls + 1
            most = max(most, inside)
        try:
            return ask(requests, tokens)
        finally:
            with lock:
                inside -= 1

    lim.try_acquire = counted  # type: ignore[method-assign]
    lim.cooldown(0.3)
    threads = [threading.Thread(target=lim.acquire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.zcard("runner:limit:gate@abc:req") == 8  # every thread got its request
    assert most == 1
    assert calls >= 9  # at least one of them met the cooldown and asked again


# --- scopes: what the provider counts; limits learned from the server --------------------------------


def test_limits_two_jobs_on_one_key_and_model_share_one_scope_and_cooldown(tmp_path: Path) -> None:
    key = "sk-test-scope-0123456789abcdef"
    settings = Settings(api_key=key, base_url="https://user:pw@api.example.com/v1")
    with started_redis(tmp_path / "redis") as (server, client):
        a = limiter_for(client, "nightly", Limits(), settings, "gpt-4o-mini")
        b = limiter_for(client, "bulk-eval", Limits(requests_per_minute=50), settings, "gpt-4o-mini")
        other_model = limiter_for(client, "nightly", Limits(), settings, "gpt-4.1-mini")
        other_key = limiter_for(
            client, "nightly", Limits(), settings.replace(api_key=key + "x"), "gpt-4o-mini"
        )
        assert a.scope == b.scope
        assert len({a.scope, other_model.scope, other_key.scope}) == 3
        for lim in (a, b, other_model, other_key):
            lim.learn(ServerLimits(rpm=1000, tpm=10**6))
        assert a.try_acquire() == 0 and b.try_acquire() == 0
        assert client.zcard(f"{KEY_PREFIX}{a.scope}:req") == 2  # one budget for both jobs

        b.cooldown(5.0)  # a 429 met by one job pauses the other on the same key and model
        assert a.try_acquire() == pytest.approx(5.0, abs=0.1)
        assert other_model.try_acquire() == 0 and other_key.try_acquire() == 0

        listed = scope_status(client)
        assert [(s.host, s.model, s.rpm, s.source) for s in listed if s.name == a.scope] == [
            ("api.example.com", "gpt-4o-mini", 1000, "headers")
        ]
        assert scan_for(client, [key, "pw@"]) == []  # neither the key nor the URL's password

        shown = CliRunner().invoke(main, ["status", "--redis-url", server.url])
        assert shown.exit_code == 0, shown.output
        header = next(line for line in shown.output.splitlines() if line.startswith("SERVER"))
        assert header.split() == ["SERVER", "KEY", "MODEL", "RPM", "USED", "TPM", "USED", "FROM", "COOLDOWN"]
        fingerprint = a.scope.split(".")[1]  # the other key's scope lists gpt-4o-mini too: in any order
        lines = shown.output.splitlines()
        row = next(line for line in lines if "gpt-4o-mini" in line and fingerprint in line)
        assert row.split()[:8] == ["api.example.com", a.scope.split(".")[1], "gpt-4o-mini", "1000", "2",
                                   "1000000", "0", "headers"]  # fmt: skip
        assert key not in shown.output


def test_limits_learned_from_headers_replace_the_boot_budget(fake: fakeredis.FakeRedis, clock: Clock) -> None:
    lim = RedisLimiter(fake, "s", clock=clock, sleep=clock.sleep)
    waits = [lim.try_acquire() for _ in range(BOOT_REQUESTS + 1)]
    assert waits[:-1] == [0] * BOOT_REQUESTS and waits[-1] > 0  # nothing known: a few go first
    lim.learn(parse_server_limits({
        "x-ratelimit-limit-requests": "6", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-requests": "2", "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "12ms",
    }))  # fmt: skip
    assert lim.state()["rpm"] == "6" and lim.state()["mode"] == "headers"
    assert [lim.try_acquire() == 0 for _ in range(3)] == [True, True, False]  # 4 + 2 of 6


def test_limits_reconcile_counts_requests_of_others_on_the_key(
    fake: fakeredis.FakeRedis, clock: Clock
) -> None:
    lim = RedisLimiter(fake, "s", clock=clock, sleep=clock.sleep)
    # Someone else on the key used 8 of 10 this minute: we may send 2, not 10.
    lim.learn(ServerLimits(rpm=10, remaining_requests=2))
    assert [lim.try_acquire() == 0 for _ in range(3)] == [True, True, False]


def test_limits_server_without_headers_falls_back_to_aimd(fake: fakeredis.FakeRedis, clock: Clock) -> None:
    lim = RedisLimiter(fake, "s", clock=clock, sleep=clock.sleep)
    lim.learn(ServerLimits())
    assert lim.state()["mode"] == "aimd" and int(lim.state()["aimd_rpm"]) == AIMD_START_RPM
    taken = sum(lim.try_acquire() == 0 for _ in range(AIMD_START_RPM + 5))
    assert taken == AIMD_START_RPM
    clock.now += LEARN_EVERY_S
    lim.learn(ServerLimits())  # an answer while the budget is in use: additive increase
    assert int(lim.state()["aimd_rpm"]) == AIMD_START_RPM + 1
    lim.cooldown(1.0)  # a 429: multiplicative decrease
    assert int(lim.state()["aimd_rpm"]) == (AIMD_START_RPM + 1) // 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("12ms", 0.012),
        ("1h2m3s", 3723.0),
        ("7", 7.0),
        ("", None),
        ("soon", None),
    ],
)
def test_limits_reset_durations_parse(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


def test_limits_client_hook_teaches_the_limiter_of_the_request(sim_factory: Any) -> None:
    sim = sim_factory(rpm=240)
    client = make_client(Settings(api_key="sk-test-hook", base_url=sim.base_url))
    chat: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    class Learning(LocalLimiter):
        learned: ClassVar[list[ServerLimits]] = []

        def learn(self, limits: ServerLimits) -> None:
            self.learned.append(limits)

    learning = Learning()
    Caller(learning).call(client.chat.completions.create, **chat)
    [said] = learning.learned  # one request, one answer, told to the limiter of that request
    assert (said.rpm, said.tpm, said.remaining_requests) == (240, NOMINAL_TPM, 239)
    plain = LocalLimiter()  # a limiter that does not learn is left alone
    Caller(plain).call(client.chat.completions.create, **chat)
    assert (plain.rpm, plain.tpm) == (None, None)
