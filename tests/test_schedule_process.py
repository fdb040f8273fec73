"""`runner schedule` as real processes on a real Redis, in real time, with seconds-resolution crons.

Two schedulers on one Redis: every tick is enqueued once; the standby takes over when the holder is
SIGKILLed; a restart does not enqueue a tick twice. Then a scheduled batch goes through an ordinary
`runner worker --burst` against the simulator and lands in its time-stamped JSONL.

Every tick is accounted for from the schedulers' own log lines ("enqueued [missed] tick T as batch
B", "skipped missed tick T", "skipped N missed ticks A .. B") and checked against the batches Redis
really holds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from runner.cli import main
from runner.queue.batch import BATCHES_KEY
from runner.queue.redis_server import RedisServer, connect
from runner.queue.scheduler import Scheduler as Schedule
from runner.queue.scheduler import schedule_status
from runner.simulator import RunningSimulator

pytestmark = pytest.mark.timeout(120)

LEASE_TTL = "1.5"
ENQUEUED = re.compile(r"nightly: enqueued (?:missed )?tick (\S+) as batch (\S+)")
SKIPPED_ONE = re.compile(r"nightly: skipped missed tick (\S+)")
SKIPPED_MANY = re.compile(r"nightly: skipped \d+\+? missed ticks (\S+) \.\. (\S+)")


def job_text(schedule: str) -> str:
    return textwrap.dedent(
        f"""\
        name: nightly
        api: chat
        model: gpt-4o-mini
        assistants:
          bot:
            instructions: Be brief.
        conversations:
          - id: greet
            turns:
              - user: Hello there
                expect:
                  - icontains: hello
        output: "runs/{{name}}/{{date}}-{{time}}.jsonl"
        schedule: "{schedule}"
        """
    )


class Scheduler:
    """One `runner schedule` process and its log file."""

    def __init__(self, cwd: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.log = cwd / f"{name}.log"
        with self.log.open("w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "schedule", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.text())) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"scheduler exited {self.proc.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {pattern!r} within {timeout}s:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def enqueued(self) -> list[tuple[str, str]]:
        return ENQUEUED.findall(self.text())

    def skipped(self) -> list[str]:
        text = self.text()
        ticks = SKIPPED_ONE.findall(text)
        for first, last in SKIPPED_MANY.findall(text):
            ticks += [f"{first}..{last}"]  # a summary line: expanded by `accounted`
        return ticks


def parse(tick: str) -> datetime:
    return datetime.strptime(tick, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def accounted(*schedulers: Scheduler) -> list[str]:
    """Every tick any scheduler enqueued or skipped, with repeats (a repeat is a double enqueue)."""
    ticks = [tick for s in schedulers for tick, _ in s.enqueued()]
    for s in schedulers:
        for item in s.skipped():
            if ".." in item:  # every second in the range
                first, last = (parse(t) for t in item.split(".."))
                ticks += [
                    f"{first + timedelta(seconds=i):%Y-%m-%dT%H:%M:%SZ}"
                    for i in range(int((last - first).total_seconds()) + 1)
                ]
            else:
                ticks.append(item)
    return sorted(ticks)


def assert_each_tick_once(ticks: list[str]) -> None:
    """No tick twice, and none lost: every second from the first to the last is there once."""
    assert len(ticks) == len(set(ticks)), f"a tick was handled twice: {ticks}"
    first, last = parse(ticks[0]), parse(ticks[-1])
    expected = [
        f"{first + timedelta(seconds=i):%Y-%m-%dT%H:%M:%SZ}"
        for i in range(int((last - first).total_seconds()) + 1)
    ]
    assert ticks == expected


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = connect(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def start(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Scheduler]]:
    """start(name, schedule=..., lease_ttl=...) -> a running `runner schedule` on the test's Redis."""
    started: list[Scheduler] = []
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "OPENAI_BASE_URL")}
    env.update(RUNNER_HOME=str(tmp_path / "home"), OPENAI_API_KEY="sk-test")

    def make(name: str, schedule: str = "* * * * * *", lease_ttl: str = LEASE_TTL) -> Scheduler:
        job = tmp_path / "nightly.yaml"
        if not job.exists():
            job.write_text(job_text(schedule))
        args = [str(job), "--redis-url", redis_server.url, "--lease-ttl", lease_ttl, "--no-collect"]
        s = Scheduler(tmp_path, name, args, env)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def batches(r: redis.Redis) -> set[str]:
    return {b.decode() for b in r.zrange(BATCHES_KEY, 0, -1)}


def holder_and_standby(a: Scheduler, b: Scheduler) -> tuple[Scheduler, Scheduler]:
    """Started together, one takes the lease and the other stands by; which one is up to the race."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for x, y in ((a, b), (b, a)):
            if "nightly: holding the lease" in x.text() and "nightly: standing by" in y.text():
                return x, y
        time.sleep(0.05)
    raise AssertionError(f"no holder and standby:\n{a.text()}\n{b.text()}")


@pytest.mark.slow
def test_schedule_two_processes_enqueue_each_tick_once(
    start: Callable[..., Scheduler], r: redis.Redis
) -> None:
    # A longer lease than the failover test's: a loaded CI machine must not look like a dead holder.
    holder, standby = holder_and_standby(start("a", lease_ttl="5"), start("b", lease_ttl="5"))
    holder.wait_for("nightly: enqueued", count=len(holder.enqueued()) + 3)
    assert (standby.stop(), holder.stop()) == (0, 0)  # standby first: it must never see a free lease
    assert standby.enqueued() == []  # the standby never enqueued anything
    assert_each_tick_once(accounted(holder, standby))
    assert batches(r) == {batch for _, batch in holder.enqueued()}
    assert "nightly: released the lease" in holder.text()
    assert r.exists("runner:schedule:nightly:lease") == 0


@pytest.mark.slow
def test_schedule_standby_takes_over_when_the_holder_is_killed(
    start: Callable[..., Scheduler], r: redis.Redis
) -> None:
    holder, standby = holder_and_standby(start("a"), start("b"))
    holder.wait_for("nightly: enqueued")
    holder.proc.send_signal(signal.SIGKILL)  # no clean exit: the lease has to expire
    holder.proc.wait()
    killed = time.monotonic()
    standby.wait_for("nightly: holding the lease")
    took_over_s = time.monotonic() - killed
    standby.wait_for("nightly: enqueued", count=2)
    assert standby.stop() == 0
    assert_each_tick_once(accounted(holder, standby))
    assert batches(r) == {batch for s in (holder, standby) for _, batch in s.enqueued()}
    print(f"takeover after SIGKILL: {took_over_s:.2f} s (lease TTL {LEASE_TTL} s)")


@pytest.mark.slow
def test_schedule_restart_does_not_enqueue_a_tick_twice(
    start: Callable[..., Scheduler], r: redis.Redis
) -> None:
    first = start("first")
    first.wait_for("nightly: enqueued", count=2)
    assert first.stop() == 0  # SIGTERM: the lease is released, nothing waits for it to expire
    assert r.exists("runner:schedule:nightly:lease") == 0
    second = start("second")
    second.wait_for("nightly: enqueued")
    assert second.stop() == 0
    assert_each_tick_once(accounted(first, second))
    assert len(batches(r)) == len(first.enqueued()) + len(second.enqueued())


@pytest.mark.slow
def test_schedule_batch_is_run_by_a_worker_and_collected_into_its_timestamped_jsonl(
    r: redis.Redis,
    redis_server: RedisServer,
    sim_factory: Callable[..., RunningSimulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The scheduler runs in this process on a clock the test sets (a daily tick, a fixed file name);
    # the worker is an ordinary `runner worker --burst` process against the simulator.
    caplog.set_level(logging.INFO, logger="runner.queue.scheduler")
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "nightly.yaml"
    job.write_text(job_text("0 6 * * *"))
    now = datetime(2026, 11, 27, 5, 59, 59, tzinfo=UTC)
    scheduler = Schedule([job], r, clock=lambda: now, collect=True)
    scheduler.step()
    now = datetime(2026, 11, 27, 6, 0, 0, tzinfo=UTC)
    scheduler.step()
    batch_id = "nightly-20261127T060000Z"
    assert batches(r) == {batch_id}
    sim = sim_factory(rules={"rules": [{"when": "(?i)hello", "reply": "Hello! How can I help?"}]})
    env = {**os.environ, "OPENAI_BASE_URL": sim.base_url, "OPENAI_API_KEY": "sk-test"}
    worker = subprocess.run(
        [sys.executable, "-m", "runner", "worker", "--burst", "--redis-url", redis_server.url],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    scheduler.step()  # the lease holder writes the JSONL of its finished batches
    scheduler.release()
    out = tmp_path / "runs" / "nightly" / "2026-11-27-060000.jsonl"
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "runner.queue.scheduler"]
    assert f"nightly: batch {batch_id} finished (1 passed, 0 failed, 0 errors), wrote {out}" in logged
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["batch_id"], record["conversation_id"]) == (batch_id, "nightly/greet#r0")
    assert (record["status"], record["passed"]) == ("completed", True)
    assert record["turns"][0]["assistant"] == "Hello! How can I help?"
    assert schedule_status(r)[0]["summary"] == "finished: 1 passed, 0 failed, 0 errors"
    # `runner collect` writes the same file again (idempotent), as an operator would after the fact.
    out.unlink()
    result = CliRunner().invoke(main, ["collect", batch_id, "--redis-url", redis_server.url])
    assert (result.exit_code, result.output) == (0, f"1 conversations written to {out}\n")
    assert json.loads(out.read_text()) == record
