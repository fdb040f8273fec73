"""The local spool (`runner.queue.spool`) and the outage setting, as fast unit tests on fakeredis
(with Lua): a record written while Redis is away is delivered once through the fenced store, a
duplicate or a stale (fenced) one is refused, and a file goes only once Redis answered for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest
from click.testing import CliRunner
from test_queue_support import write_job

from runner.cli import main
from runner.errors import LeaseLostError, UsageError
from runner.jobs import expand, load_job
from runner.queue import fence, spool
from runner.queue.batch import Batch
from runner.queue.conversations import error_record
from runner.records import Record
from runner.settings import REDIS_OUTAGE_DEFAULT_S, Settings
from runner.tasks import ConversationTask

BATCH = "b-spool"


@pytest.fixture
def tasks(tmp_path: Path) -> list[ConversationTask]:
    return expand(load_job(write_job(tmp_path / "job.yaml", "spool", conversations=3)))


def _record(task: ConversationTask, note: str) -> Record:
    return error_record(task, BATCH, 1, note)  # any complete record will do


def _claimed(redis: fakeredis.FakeRedis, job_id: str) -> tuple[str, int]:
    return fence.fence_key(job_id), fence.claim(redis, job_id)


def test_put_writes_one_whole_file_per_record(tmp_path: Path, tasks: list[ConversationTask]) -> None:
    record = _record(tasks[0], "first")
    path = spool.put(tmp_path, BATCH, 1, ("runner:fence:j0", 7), "j0", record)
    assert path == spool.spool_dir(tmp_path) / "j0-7.json"
    assert [p.name for p in spool.spool_dir(tmp_path).iterdir()] == ["j0-7.json"]  # no temporary left
    body = json.loads(path.read_text())
    assert body == {"batch": BATCH, "generation": 1, "fence": ["runner:fence:j0", 7], "record": record}
    assert spool.pending(tmp_path) == 1


def test_deliver_stores_through_the_fenced_store_once(tmp_path: Path, tasks: list[ConversationTask]) -> None:
    redis = fakeredis.FakeRedis()
    batch = Batch(redis, BATCH)
    record = _record(tasks[0], "spooled")
    spool.put(tmp_path, BATCH, 1, _claimed(redis, "j0"), "j0", record)
    assert spool.deliver(redis, tmp_path) == 1
    assert batch.record(tasks[0].conversation_id) == record
    assert spool.pending(tmp_path) == 0
    assert spool.deliver(redis, tmp_path) == 0  # nothing left to deliver twice


def test_a_redelivered_record_is_a_duplicate(tmp_path: Path, tasks: list[ConversationTask]) -> None:
    """A crash between the store and the file's removal: delivered again, the first record wins."""
    redis = fakeredis.FakeRedis()
    batch = Batch(redis, BATCH)
    claim = _claimed(redis, "j0")
    first = _record(tasks[0], "stored before the crash")
    assert batch.store_fenced(first, 1, fence=claim) == 1
    spool.put(tmp_path, BATCH, 1, claim, "j0", _record(tasks[0], "the same, spooled"))
    assert spool.deliver(redis, tmp_path) == 0
    assert batch.record(tasks[0].conversation_id) == first
    assert spool.pending(tmp_path) == 0


def test_a_stale_record_is_refused_and_counted(tmp_path: Path, tasks: list[ConversationTask]) -> None:
    """The reaper re-ran the job meanwhile (the token moved on): the spooled record is refused."""
    redis = fakeredis.FakeRedis()
    batch = Batch(redis, BATCH)
    claim = _claimed(redis, "j0")
    spool.put(tmp_path, BATCH, 1, claim, "j0", _record(tasks[0], "stale"))
    fence.bump(redis, "j0")
    assert spool.deliver(redis, tmp_path) == 0
    assert batch.record(tasks[0].conversation_id) is None
    assert int(redis.hget(batch.key, "fenced") or 0) == 1
    assert spool.pending(tmp_path) == 0
    # The run that holds the token now stores its own.
    rerun = _record(tasks[0], "re-run")
    assert batch.store_fenced(rerun, 1, fence=(claim[0], claim[1] + 1)) == 1
    assert batch.record(tasks[0].conversation_id) == rerun


def test_files_stay_while_redis_is_away(tmp_path: Path, tasks: list[ConversationTask]) -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    spool.put(tmp_path, BATCH, 1, _claimed(redis, "j0"), "j0", _record(tasks[0], "waits"))
    server.connected = False
    with pytest.raises(Exception):  # noqa: B017 (QueueError or redis's ConnectionError: both mean "away")
        spool.deliver(redis, tmp_path)
    assert spool.pending(tmp_path) == 1
    server.connected = True
    assert spool.deliver(redis, tmp_path) == 1
    assert spool.pending(tmp_path) == 0


def test_deliver_one_job_only(tmp_path: Path, tasks: list[ConversationTask]) -> None:
    """A conversation's thread delivers its own record, not the rest of the spool."""
    redis = fakeredis.FakeRedis()
    for i, task in enumerate(tasks[:2]):
        spool.put(tmp_path, BATCH, 1, _claimed(redis, f"j{i}"), f"j{i}", _record(task, "x"))
    assert spool.deliver(redis, tmp_path, job_id="j1") == 1
    assert [p.name for p in spool.spool_dir(tmp_path).glob("*.json")] == ["j0-1.json"]


def test_unreadable_files_are_skipped(tmp_path: Path, tasks: list[ConversationTask]) -> None:
    """A temporary file (a crash mid-write) is never delivered; a torn file is left for a look."""
    redis = fakeredis.FakeRedis()
    directory = spool.spool_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "j9-1.tmp").write_text('{"batch": ')
    (directory / "j8-1.json").write_text('{"batch": ')
    spool.put(tmp_path, BATCH, 1, _claimed(redis, "j0"), "j0", _record(tasks[0], "good"))
    assert spool.deliver(redis, tmp_path) == 1
    assert sorted(p.name for p in directory.iterdir()) == ["j8-1.json", "j9-1.tmp"]


def test_a_revoked_run_stops_without_asking_redis(tasks: list[ConversationTask]) -> None:
    """The keeper's beat could not renew a lease (its token moved on): the run's next check stops it."""
    redis = fakeredis.FakeRedis()
    batch = Batch(redis, BATCH)
    token = fence.claim(redis, "j-revoked")
    run = fence.Fence(redis, "j-revoked", token, batch.key)
    fence.revoke("j-revoked", token)
    with pytest.raises(LeaseLostError):
        run.check()
    assert run.lost is not None and not run.away
    assert int(redis.hget(batch.key, "fenced") or 0) == 1


def test_outage_setting() -> None:
    assert Settings.from_env({}).redis_outage_s == REDIS_OUTAGE_DEFAULT_S == 60
    settings = Settings.from_env({"RUNNER_REDIS_OUTAGE_S": "2.5"})
    assert settings.redis_outage_s == 2.5
    assert settings.child_env()["RUNNER_REDIS_OUTAGE_S"] == "2.5"  # a pool's workers get it
    for bad in ("soon", "-1", "nan", "inf"):
        with pytest.raises(UsageError, match="RUNNER_REDIS_OUTAGE_S"):
            Settings.from_env({"RUNNER_REDIS_OUTAGE_S": bad})


@pytest.mark.parametrize("bad", ["-1", "soon"])
def test_worker_option_refuses_a_bad_outage_limit(bad: str) -> None:
    """`runner worker --redis-outage` is checked before anything connects (exit 2)."""
    result = CliRunner().invoke(
        main, ["worker", "--redis-outage", bad, "--redis-url", "redis://127.0.0.1:1/0"]
    )
    assert result.exit_code == 2, result.output
    assert "--redis-outage" in result.output
