"""The scheduler in-process, on a clock the test controls, against a real Redis and the real queue.

Time is injected (`clock`): a tick happens when the test moves the clock past it and calls
`step()`. Leases still expire on the Redis server's own clock.
"""

from __future__ import annotations

import json
import logging
import textwrap
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from runner.cli import main
from runner.errors import JobFileError, UsageError
from runner.jobs.cron import cron_problem, parse_cron
from runner.queue.batch import BATCHES_KEY, Batch
from runner.queue.conversations import QUEUE_NAME, job_id_for
from runner.queue.redis_server import RedisServer, connect
from runner.queue.scheduler import Scheduler, schedule_status, tick_batch_id
from runner.simulator import RunningSimulator

T0 = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)  # an hour before the daily 06:00 tick


class Clock:
    """The scheduler's `clock`: returns `now`, which only the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, day: int, hour: int, minute: int = 0, second: int = 0) -> None:
        self.now = datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


def job_text(
    name: str = "nightly", schedule: str | None = "0 6 * * *", conversations: int = 1, extra: str = ""
) -> str:
    convs = "".join(
        f"""
          - id: c{i}
            turns:
              - user: Hello {i}
                expect:
                  - icontains: hello"""
        for i in range(conversations)
    )
    sched = f'schedule: "{schedule}"' if schedule is not None else ""
    return textwrap.dedent(
        f"""\
        name: {name}
        api: chat
        model: gpt-4o-mini
        assistants:
          bot:
            instructions: Be brief.
        conversations:{convs}
        output: "runs/{{name}}/{{date}}-{{time}}.jsonl"
        {sched}
        {extra}
        """
    )


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = connect(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def jobfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # outputs are rendered relative to the working directory
    path = tmp_path / "nightly.yaml"
    path.write_text(job_text())
    return path


class Lines:
    """The scheduler's log lines so far (their message part, as `runner schedule` prints them)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def __iter__(self) -> Iterator[str]:
        return iter([rec.getMessage() for rec in self.caplog.records if rec.name == "runner.queue.scheduler"])

    def __contains__(self, line: object) -> bool:
        return line in list(self)


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    caplog.set_level(logging.INFO, logger="runner.queue.scheduler")
    return Lines(caplog)


def line_of(path: Path, key: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(f"{key}:"))


def batches(r: redis.Redis) -> list[str]:
    return sorted(b.decode() for b in r.zrange(BATCHES_KEY, 0, -1))


def scheduler(path: Path, r: redis.Redis, clock: Clock, **kw: object) -> Scheduler:
    return Scheduler([path], r, clock=clock, lease_ttl_s=kw.pop("lease_ttl_s", 30.0), **kw)  # type: ignore[arg-type]


# --- cron -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["0 6 * * *", "*/2 * * * * *", "@daily", "CRON_TZ=Europe/Paris 0 6 * * 1-5", "TZ=UTC 30 5 * * *"],
)
def test_schedule_cron_accepts(text: str) -> None:
    assert cron_problem(text) is None
    assert parse_cron(text).text == text


FIELDS = "use 5 (minute hour day month weekday) or 6 (seconds first)"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "must be a cron expression such as '0 6 * * *'"),
        ("61 6 * * *", "invalid cron expression '61 6 * * *': [61 6 * * *] is not acceptable, out of range"),
        ("0 6 * *", "cron '0 6 * *' has 4 fields; " + FIELDS),
        ("* * * * * * *", "cron '* * * * * * *' has 7 fields; " + FIELDS),
        ("CRON_TZ=Mars/Base 0 6 * * *", "unknown time zone 'Mars/Base' (use an IANA name such as Europe/Paris)"),  # noqa: E501
    ],
)  # fmt: skip
def test_schedule_cron_rejects(text: str, problem: str) -> None:
    assert cron_problem(text) == problem
    with pytest.raises(UsageError, match="schedule"):
        parse_cron(text)


def test_schedule_cron_ticks_in_its_time_zone_and_seconds() -> None:
    paris = parse_cron("CRON_TZ=Europe/Paris 0 6 * * *")
    winter = paris.next_after(datetime(2026, 11, 27, 0, 0, tzinfo=UTC))
    summer = paris.next_after(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    assert (winter.astimezone(UTC).hour, summer.astimezone(UTC).hour) == (5, 4)
    every2 = parse_cron("*/2 * * * * *")
    t = datetime(2026, 11, 27, 6, 0, 2, tzinfo=UTC)
    assert every2.latest_at_or_before(t) == t  # a tick exactly now is due now
    assert every2.latest_at_or_before(t + timedelta(seconds=1.5)) == t
    assert every2.next_after(t) == t + timedelta(seconds=2)


# --- ticks ------------------------------------------------------------------------------------------


def test_schedule_enqueues_one_batch_per_tick_output_from_tick_time(
    r: redis.Redis, jobfile: Path, lines: Lines
) -> None:
    clock = Clock(T0)
    s = scheduler(jobfile, r, clock)
    s.step()  # first sight of the job: ticks count from now, nothing is "missed"
    assert batches(r) == []
    for day in (27, 28):
        clock.set(day, 6, 0, 0)
        s.step()
        clock.set(day, 6, 0, 1)
        s.step()  # the same tick is not enqueued again
    assert batches(r) == ["nightly-20261127T060000Z", "nightly-20261128T060000Z"]
    info = Batch(r, "nightly-20261127T060000Z").require()
    assert info.output == str(jobfile.parent / "runs/nightly/2026-11-27-060000.jsonl")
    assert [line for line in lines if "enqueued" in line] == [
        "nightly: enqueued tick 2026-11-27T06:00:00Z as batch nightly-20261127T060000Z",
        "nightly: enqueued tick 2026-11-28T06:00:00Z as batch nightly-20261128T060000Z",
    ]
    # The RQ job is JSON (never pickle) like every other job: its payload decodes as JSON.
    rq_id = job_id_for("nightly-20261127T060000Z", "nightly/c0#r0")
    raw = r.hget(RQJob.key_for(rq_id), "data")
    assert raw is not None
    assert json.loads(zlib.decompress(raw))[2][1] == "nightly-20261127T060000Z"
    job = RQJob.fetch(rq_id, connection=r, serializer=JSONSerializer)
    assert job.origin == QUEUE_NAME and job.func_name == "runner.queue.execute.run_task"


def test_schedule_two_schedulers_enqueue_each_tick_once(r: redis.Redis, jobfile: Path, lines: Lines) -> None:
    clock = Clock(T0)
    a, b = scheduler(jobfile, r, clock), scheduler(jobfile, r, clock)
    a.step()
    b.step()
    for day in (27, 28, 29):
        clock.set(day, 6)
        a.step()
        b.step()
        b.step()
    assert batches(r) == [
        tick_batch_id("nightly", datetime(2026, 11, d, 6, tzinfo=UTC)) for d in (27, 28, 29)
    ]
    assert sum(line.startswith("nightly: enqueued tick") for line in lines) == 3
    assert f"nightly: standing by (lease held by {a.holder})" in lines


def test_schedule_restart_does_not_enqueue_a_tick_twice(r: redis.Redis, jobfile: Path, lines: Lines) -> None:
    clock = Clock(T0)
    first = scheduler(jobfile, r, clock)
    first.step()
    clock.set(27, 6)
    first.step()
    first.release()  # a clean exit: the lease is free at once
    assert r.get("runner:schedule:nightly:lease") is None
    clock.set(27, 6, 0, 30)
    second = scheduler(jobfile, r, clock)
    second.step()
    second.step()
    assert batches(r) == ["nightly-20261127T060000Z"]
    assert f"nightly: holding the lease ({second.holder})" in lines


def test_schedule_missed_tick_less_than_one_period_old_is_enqueued_once(
    r: redis.Redis, jobfile: Path, lines: Lines
) -> None:
    clock = Clock(T0)
    s = scheduler(jobfile, r, clock)
    s.step()
    clock.set(27, 6)
    s.step()
    s.release()
    clock.set(28, 14)  # down from 27th 06:00 till 28th 14:00: the 28th 06:00 tick was missed
    restarted = scheduler(jobfile, r, clock)
    restarted.step()
    clock.set(28, 14, 5)
    restarted.step()
    assert batches(r) == ["nightly-20261127T060000Z", "nightly-20261128T060000Z"]
    assert (
        "nightly: enqueued missed tick 2026-11-28T06:00:00Z as batch nightly-20261128T060000Z (late by 8h00m)"
        in lines
    )
    # The output is named after the tick, not after the late enqueue.
    assert Batch(r, "nightly-20261128T060000Z").require().output.endswith("2026-11-28-060000.jsonl")


def test_schedule_missed_ticks_older_than_one_period_are_skipped_with_a_log_line(
    r: redis.Redis, jobfile: Path, lines: Lines
) -> None:
    clock = Clock(T0)
    s = scheduler(jobfile, r, clock)
    s.step()
    clock.set(27, 6)
    s.step()
    s.release()
    clock.set(30, 7)  # the 28th and 29th ticks are more than one period old; the 30th's is not
    scheduler(jobfile, r, clock).step()
    assert batches(r) == ["nightly-20261127T060000Z", "nightly-20261130T060000Z"]
    skipped = [line for line in lines if "skipped" in line]
    assert skipped == [
        "nightly: skipped missed tick 2026-11-28T06:00:00Z (more than one period old)",
        "nightly: skipped missed tick 2026-11-29T06:00:00Z (more than one period old)",
    ]


def test_schedule_many_missed_ticks_are_summed_up_in_one_line(
    r: redis.Redis, jobfile: Path, lines: Lines
) -> None:
    jobfile.write_text(job_text(schedule="*/10 * * * * *"))
    clock = Clock(T0)
    s = scheduler(jobfile, r, clock)
    s.step()
    clock.now = T0 + timedelta(minutes=10, seconds=3)
    s.step()
    assert batches(r) == ["nightly-20261127T051000Z"]
    assert (
        "nightly: skipped 59 missed ticks 2026-11-27T05:00:10Z .. 2026-11-27T05:09:50Z"
        " (more than one period old)" in lines
    )


def test_schedule_first_start_enqueues_nothing_from_the_past(
    r: redis.Redis, jobfile: Path, lines: Lines
) -> None:
    clock = Clock(datetime(2026, 11, 27, 14, tzinfo=UTC))
    scheduler(jobfile, r, clock).step()
    assert batches(r) == []
    assert "nightly: scheduled '0 6 * * *' from 2026-11-27T14:00:00Z, next tick 2026-11-28T06:00:00Z" in lines


def test_schedule_holder_that_lost_its_lease_cannot_claim_a_tick(r: redis.Redis, jobfile: Path) -> None:
    clock = Clock(T0)
    a = scheduler(jobfile, r, clock)
    a.step()
    r.set("runner:schedule:nightly:lease", "someone-else")  # a stalled `a` outlived its lease
    tick = datetime(2026, 11, 27, 6, tzinfo=UTC)
    assert a._advance_to("nightly", tick, timedelta(days=1), "enqueue", "x") == -1
    clock.set(27, 6)
    a.step()
    assert batches(r) == []


def test_schedule_interrupted_enqueue_is_finished_by_the_next_holder(
    r: redis.Redis, jobfile: Path, lines: Lines
) -> None:
    clock = Clock(T0)
    a = scheduler(jobfile, r, clock)
    a.step()
    tick = datetime(2026, 11, 27, 6, tzinfo=UTC)
    assert a._advance_to("nightly", tick, timedelta(days=1), "enqueue", tick_batch_id("nightly", tick)) == 1
    r.delete("runner:schedule:nightly:lease")  # `a` died after the claim, before its enqueue
    clock.set(27, 6, 0, 10)
    b = scheduler(jobfile, r, clock)
    b.step()
    b.step()
    assert batches(r) == ["nightly-20261127T060000Z"]
    assert "nightly: the enqueue of tick 2026-11-27T06:00:00Z was interrupted, finishing it" in lines
    assert schedule_status(r)[0]["last_status"] == "enqueued"


def test_schedule_failed_enqueue_is_logged_recorded_and_the_next_tick_still_runs(
    r: redis.Redis,
    jobfile: Path,
    lines: Lines,
    sim_factory: Callable[..., RunningSimulator],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The assistants api prepares its assistants over the API at enqueue: an exhausted quota fails it.
    sim = sim_factory(quota_exhausted=True)
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    jobfile.write_text(job_text().replace("api: chat", "api: assistants"))
    clock = Clock(T0)
    s = scheduler(jobfile, r, clock)
    s.step()
    clock.set(27, 6)
    s.step()
    [error] = [line for line in lines if "not enqueued" in line]
    assert error.startswith("nightly: tick 2026-11-27T06:00:00Z not enqueued: ")
    [row] = schedule_status(r)
    assert (row["last_status"], row["last_batch"]) == ("error", "nightly-20261127T060000Z")
    assert row["summary"] == f"error: {row['last_error']}" and "sk-test" not in row["last_error"]
    jobfile.write_text(job_text())  # fixed (here: a protocol that needs no preparation)
    clock.set(28, 6)
    s.step()
    assert batches(r) == ["nightly-20261128T060000Z"]
    assert schedule_status(r)[0]["last_status"] == "enqueued"


# --- reload -----------------------------------------------------------------------------------------


def test_schedule_changed_file_is_used_at_the_next_tick(r: redis.Redis, jobfile: Path, lines: Lines) -> None:
    clock = Clock(T0)
    s = scheduler(jobfile, r, clock)
    s.step()
    clock.set(27, 6)
    s.step()
    jobfile.write_text(job_text(conversations=3, schedule="0 7 * * *"))
    clock.set(27, 6, 30)
    s.step()
    assert f"{jobfile}: reloaded (nightly: 0 7 * * *)" in lines
    clock.set(27, 7)
    s.step()
    assert batches(r) == ["nightly-20261127T060000Z", "nightly-20261127T070000Z"]
    assert Batch(r, "nightly-20261127T070000Z").require().total == 3


def test_schedule_invalid_file_is_reported_and_keeps_its_last_valid_version(
    r: redis.Redis, jobfile: Path, lines: Lines
) -> None:
    clock = Clock(T0)
    s = scheduler(jobfile, r, clock)
    s.step()
    jobfile.write_text(job_text(conversations=2, extra="colour: blue"))
    clock.set(27, 5, 30)
    s.step()
    s.step()
    clock.set(27, 6)
    s.step()
    errors = [line for line in lines if "keeping the last valid version" in line]
    assert len(errors) == 1  # reported once, not at every pass
    assert errors[0].startswith(f"{jobfile}:{line_of(jobfile, 'colour')}: unknown key 'colour'; valid keys: ")
    assert batches(r) == ["nightly-20261127T060000Z"]
    assert Batch(r, "nightly-20261127T060000Z").require().total == 1  # the last valid version ran
    jobfile.write_text(job_text(conversations=2))
    clock.set(28, 6)
    s.step()
    assert Batch(r, "nightly-20261128T060000Z").require().total == 2


# --- start-up and status --------------------------------------------------------------------------


def test_schedule_file_without_schedule_is_refused_at_start(r: redis.Redis, jobfile: Path) -> None:
    jobfile.write_text(job_text(schedule=None))
    with pytest.raises(
        UsageError, match=r"nightly.yaml: no `schedule:` in this job file, nothing to schedule"
    ):
        scheduler(jobfile, r, Clock(T0))


def test_schedule_several_files_skip_the_unscheduled_ones(
    r: redis.Redis, jobfile: Path, tmp_path: Path, lines: Lines
) -> None:
    other = tmp_path / "adhoc.yaml"
    other.write_text(job_text(name="adhoc", schedule=None))
    clock = Clock(T0)
    s = Scheduler([jobfile, other], r, clock=clock)
    s.step()
    clock.set(27, 6)
    s.step()
    assert batches(r) == ["nightly-20261127T060000Z"]
    assert f"{other}: no `schedule:`, not scheduled (until it has one)" in lines


def test_schedule_two_files_with_one_job_name_are_refused(
    r: redis.Redis, jobfile: Path, tmp_path: Path
) -> None:
    twin = tmp_path / "twin.yaml"
    twin.write_text(job_text())
    with pytest.raises(UsageError, match="job name 'nightly' is scheduled by more than one file"):
        Scheduler([jobfile, twin], r)


def test_schedule_invalid_file_is_refused_at_start_with_its_line(r: redis.Redis, jobfile: Path) -> None:
    jobfile.write_text(job_text(extra="colour: blue"))
    with pytest.raises(JobFileError) as err:
        scheduler(jobfile, r, Clock(T0))
    assert str(err.value).startswith(
        f"{jobfile}:{line_of(jobfile, 'colour')}: unknown key 'colour'; valid keys: "
    )


def test_schedule_status_shows_job_cron_next_tick_last_batch_and_result(
    r: redis.Redis, jobfile: Path
) -> None:
    clock = Clock(T0)
    s = scheduler(jobfile, r, clock)
    s.step()
    clock.set(27, 6)
    s.step()
    [row] = schedule_status(r)
    assert {k: row[k] for k in ("job", "cron", "next_tick", "last_tick", "last_batch", "last_status")} == {
        "job": "nightly",
        "cron": "0 6 * * *",
        "next_tick": "2026-11-28T06:00:00Z",
        "last_tick": "2026-11-27T06:00:00Z",
        "last_batch": "nightly-20261127T060000Z",
        "last_status": "enqueued",
    }
    assert row["holder"] == s.holder
    assert row["result"]["state"] == "queued" and row["result"]["total"] == 1
    assert row["summary"] == "queued 0/1: 0 passed, 0 failed, 0 errors"
    s.release()
    assert schedule_status(r)[0]["holder"] is None


# --- the command ------------------------------------------------------------------------------------


def test_schedule_cli_file_without_schedule_exits_2(
    r: redis.Redis, redis_server: RedisServer, jobfile: Path
) -> None:
    jobfile.write_text(job_text(schedule=None))
    result = CliRunner().invoke(main, ["schedule", str(jobfile), "--redis-url", redis_server.url])
    assert result.exit_code == 2
    assert result.output == f"error: {jobfile}: no `schedule:` in this job file, nothing to schedule\n"


def test_schedule_cli_invalid_cron_exits_2_with_its_line(redis_server: RedisServer, jobfile: Path) -> None:
    jobfile.write_text(job_text(schedule="0 25 * * *"))
    result = CliRunner().invoke(main, ["schedule", str(jobfile), "--redis-url", redis_server.url])
    assert result.exit_code == 2
    line = line_of(jobfile, "schedule")
    assert result.output.startswith(
        f"error: {jobfile}:{line}: schedule: invalid cron expression '0 25 * * *'"
    )


def test_schedule_cli_needs_a_redis_url(jobfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["schedule", str(jobfile)])
    assert result.exit_code == 2
    assert (
        result.output == "error: `runner schedule` needs a shared Redis: pass --redis-url or set REDIS_URL\n"
    )


def test_schedule_cli_unreachable_redis_exits_3(jobfile: Path) -> None:
    result = CliRunner().invoke(
        main, ["schedule", str(jobfile), "--redis-url", "redis://:pw1234567@127.0.0.1:1/0"]
    )
    assert result.exit_code == 3
    assert result.output.startswith("error: cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "pw1234567" not in result.output
