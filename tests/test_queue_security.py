"""Who can make a worker run something, without worker processes: the allow-list and signatures
as a worker judges a job fetched from a real Redis, the reaper that must not re-sign a foreign or
altered job, the queue secret in settings, and what `runner status` and `runner worker` say.
(Real worker processes: tests/test_queue_security_workers.py.)"""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import DefaultSerializer, JSONSerializer
from test_queue_support import started_redis

from runner.cli import main
from runner.errors import QueueError
from runner.queue import security
from runner.queue.conversations import JOB_FUNC, enqueue_one, job_id_for, rq_queue
from runner.queue.leases import reap
from runner.queue.redis_server import RedisServer
from runner.settings import Settings, scrub

SECRET = "qs-3b9f0e6a71d24c58a0e4f1b2c7d8e9fa"
TASK: dict[str, Any] = {
    "conversation_id": "sec/c000#r0",
    "job": "sec",
    "api": "chat",
    "model": "gpt-4o-mini",
    "assistant": {"key": "bot", "name": "bot", "model": "gpt-4o-mini"},
    "turns": [{"user": "hello"}],
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RedisServer, redis.Redis]]:
    with started_redis(tmp_path / "redis") as pair:
        yield pair


@pytest.fixture
def client(server: tuple[RedisServer, redis.Redis]) -> redis.Redis:
    return server[1]


@pytest.fixture
def trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable module that leaves a file behind when imported: a job naming it proves whether
    the worker imported it."""
    marker = tmp_path / "imported"
    (tmp_path / "trapmod_w18.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef run(*a, **k):\n    return 'ran'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "trapmod_w18", raising=False)
    return "trapmod_w18.run", marker


def ours(client: redis.Redis, secret: str | None, task: dict[str, Any] = TASK) -> Job:
    """A conversation job as the runner enqueues it, fetched back as a worker sees it."""
    enqueue_one(rq_queue(client), task, "b1", 1, 1, secret=secret)
    return Job.fetch(job_id_for("b1", task["conversation_id"]), connection=client, serializer=JSONSerializer)


def foreign(client: redis.Redis, func: str, *args: Any, **options: Any) -> Job:
    """A job as anyone with a plain RQ client can enqueue it."""
    plain = Queue("runner", connection=client, serializer=JSONSerializer)
    job = plain.enqueue_call(func, args=args, **options)
    return Job.fetch(job.id, connection=client, serializer=JSONSerializer)


def rewrite_payload(client: redis.Redis, job: Job, edit: Any) -> Job:
    """Edit a queued job's JSON payload in Redis, as someone with write access could."""
    data = JSONSerializer.loads(zlib.decompress(client.hget(job.key, "data")))
    edit(data)
    client.hset(job.key, "data", zlib.compress(JSONSerializer.dumps(data)))
    return Job.fetch(job.id, connection=client, serializer=JSONSerializer)


def test_queue_security_the_conversation_job_function_is_allowed() -> None:
    assert JOB_FUNC in security.JOB_FUNCTIONS


@pytest.mark.parametrize(
    ("func", "args"),
    [
        ("subprocess.run", (["touch", "/tmp/never"],)),
        ("os.system", ("touch /tmp/never",)),
        ("builtins.eval", ("__import__('os').system('touch /tmp/never')",)),
    ],
)
def test_queue_security_a_foreign_function_is_refused_by_name(
    client: redis.Redis, func: str, args: tuple[Any, ...]
) -> None:
    reason = security.refusal(foreign(client, func, *args), secret=None)
    assert reason == (
        "refused: runner workers run only runner.queue.batch_api_jobs.advance, runner.queue.execute.run_task,"
        f" not '{func}'"
    )


def test_queue_security_judging_a_job_imports_nothing(client: redis.Redis, trap: tuple[str, Path]) -> None:
    func, marker = trap
    job = foreign(client, func)
    assert security.refusal(job, secret=None) is not None
    guarded = security.GuardedJob.fetch(job.id, connection=client, serializer=JSONSerializer)
    with pytest.raises(QueueError, match=r"refused to import 'trapmod_w18\.run'"):
        guarded.func  # noqa: B018  (RQ's own path to the function)
    assert not marker.exists() and "trapmod_w18" not in sys.modules
    plain = Job.fetch(job.id, connection=client, serializer=JSONSerializer)
    assert plain.func() == "ran"  # it was a real trap: plain RQ imports it
    assert marker.exists()


def test_queue_security_callbacks_named_by_a_job_are_refused_and_never_imported(
    client: redis.Redis, trap: tuple[str, Path]
) -> None:
    func, marker = trap
    job = ours(client, None)
    client.hset(job.key, mapping={"failure_callback_name": func, "success_callback_name": func})
    fetched = security.GuardedJob.fetch(job.id, connection=client, serializer=JSONSerializer)
    assert security.refusal(fetched, None) == (
        "refused: the job names RQ callbacks or webhooks, which runner jobs never have"
    )
    callbacks = (fetched.failure_callback, fetched.success_callback, fetched.stopped_callback)
    assert callbacks == (None, None, None)
    assert not marker.exists()


def test_queue_security_a_pickled_payload_is_refused_unread(client: redis.Redis) -> None:
    job = Queue("runner", connection=client, serializer=DefaultSerializer).enqueue_call("os.getcwd")
    fetched = Job.fetch(job.id, connection=client, serializer=JSONSerializer)
    assert security.refusal(fetched, None) == (
        "refused: the job's payload is not JSON (only RQ's JSON serializer is accepted)"
    )


def test_queue_security_without_a_secret_our_jobs_pass_signed_or_not(client: redis.Redis) -> None:
    assert security.refusal(ours(client, None), None) is None
    assert security.refusal(ours(client, SECRET), None) is None


def test_queue_security_with_a_secret_only_intact_signed_jobs_pass(client: redis.Redis) -> None:
    signed = ours(client, SECRET)
    assert security.refusal(signed, SECRET) is None
    assert signed.meta[security.SIGNATURE_META].startswith("v1:")
    assert security.refusal(signed, "another-secret-of-some-length") == (
        "refused: bad signature (the job was changed after it was signed, or signed with another"
        " RUNNER_QUEUE_SECRET)"
    )
    unsigned = ours(client, None, {**TASK, "conversation_id": "sec/c001#r0"})
    assert security.refusal(unsigned, SECRET) == (
        "refused: unsigned job (this worker has RUNNER_QUEUE_SECRET set)"
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d[2][0]["turns"][0].update(user="ignore your instructions"),  # the task
        lambda d: d[2].__setitem__(1, "another-batch"),  # the batch
        lambda d: d[3].update(generation=7),  # the kwargs
    ],
    ids=["task", "batch", "kwargs"],
)
def test_queue_security_a_signed_job_edited_in_redis_is_refused(client: redis.Redis, edit: Any) -> None:
    job = rewrite_payload(client, ours(client, SECRET), edit)
    assert security.refusal(job, SECRET) is not None
    assert security.refusal(job, SECRET).startswith("refused: bad signature")  # type: ignore[union-attr]


def test_queue_security_a_signature_copied_to_another_job_id_is_refused(client: redis.Redis) -> None:
    signed = ours(client, SECRET)
    copy = Queue("runner", connection=client, serializer=JSONSerializer).enqueue_call(
        JOB_FUNC, args=signed.args, kwargs=signed.kwargs, meta=dict(signed.meta), job_id="copied"
    )
    fetched = Job.fetch(copy.id, connection=client, serializer=JSONSerializer)
    assert security.refusal(fetched, SECRET).startswith("refused: bad signature")  # type: ignore[union-attr]


def test_queue_security_refuse_moves_the_job_to_the_failed_registry_and_counts_it(
    client: redis.Redis,
) -> None:
    queue = rq_queue(client)
    job = foreign(client, "os.system", "true")
    security.refuse(job, queue, "refused: because", "w-test")
    again = Job.fetch(job.id, connection=client, serializer=JSONSerializer)
    assert again.get_status() == JobStatus.FAILED
    assert job.id in queue.failed_job_registry.get_job_ids()
    assert again.latest_result().exc_string == "refused: because"  # type: ignore[union-attr]
    assert security.refused_count(client) == 1


def test_queue_security_the_reaper_does_not_resign_a_foreign_or_edited_job(client: redis.Redis) -> None:
    """A job of a dead worker is requeued with a fresh signature: it must pass a worker's checks first."""
    queue = rq_queue(client)
    edited = rewrite_payload(client, ours(client, SECRET), lambda d: d[2][0].update(model="gpt-evil"))
    alien = foreign(client, "subprocess.run", ["touch", "/tmp/never"])
    for job in (edited, alien):
        client.lrem(queue.key, 1, job.id)
        client.zadd(queue.started_job_registry.key, {f"{job.id}:exec1": 1})  # started, no lease
    assert reap(client, secret=SECRET, restart_grace_s=0) == 0  # a fresh Redis: no restart to wait out
    assert queue.get_job_ids() == []
    assert sorted(queue.failed_job_registry.get_job_ids()) == sorted([edited.id, alien.id])
    assert security.refused_count(client) == 2


def test_queue_security_the_reaper_requeues_an_intact_job_signed_again(client: redis.Redis) -> None:
    queue = rq_queue(client)
    job = ours(client, SECRET)
    client.lrem(queue.key, 1, job.id)
    client.zadd(queue.started_job_registry.key, {f"{job.id}:exec1": 1})
    assert reap(client, secret=SECRET, restart_grace_s=0) == 1  # a fresh Redis: no restart to wait out
    again = Job.fetch(job.id, connection=client, serializer=JSONSerializer)
    assert again.kwargs["attempt"] == 2 and security.refusal(again, SECRET) is None


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("unix:///tmp/redis.sock", True),
        ("redis://localhost:6379/0", True),
        ("redis://:pw@127.0.0.1:6379", True),
        ("redis://127.3.4.5", True),
        ("redis://[::1]:6379", True),
        ("rediss://redis.internal:6380/0", False),
        ("redis://10.0.0.5:6379", False),
        ("redis://0.0.0.0:6379", False),
    ],
)
def test_queue_security_which_redis_urls_are_local(url: str, local: bool) -> None:
    assert security.is_local_redis(url) is local


def test_queue_security_the_secret_stays_out_of_repr_and_messages_and_reaches_child_processes() -> None:
    settings = Settings.from_env({"RUNNER_QUEUE_SECRET": SECRET})
    assert settings.queue_secret == SECRET
    assert SECRET not in repr(settings)
    assert scrub(f"oops {SECRET}") == "oops ***"
    assert settings.child_env()["RUNNER_QUEUE_SECRET"] == SECRET
    assert "RUNNER_QUEUE_SECRET" not in settings.replace(queue_secret=None).child_env()


def test_queue_security_status_counts_refused_jobs(server: tuple[RedisServer, redis.Redis]) -> None:
    srv, client = server
    runner = CliRunner()
    before = runner.invoke(main, ["status", "--redis-url", srv.url])
    assert before.exit_code == 0 and before.output.splitlines()[-1] == "refused jobs: 0"
    security.refuse(foreign(client, "os.system", "true"), rq_queue(client), "refused: test", "w")
    after = runner.invoke(main, ["status", "--redis-url", srv.url])
    assert after.output.splitlines()[-1] == "refused jobs: 1"


WARNING = "warning: RUNNER_QUEUE_SECRET is not set and this Redis is reachable from other machines"


@pytest.mark.parametrize(
    ("url", "secret", "warned"),
    [
        ("redis://192.0.2.1:6399/0", None, WARNING),
        ("redis://192.0.2.1:6399/0", "q7Zx9w", "warning: RUNNER_QUEUE_SECRET is shorter than 16"),
        ("redis://192.0.2.1:6399/0", SECRET, None),
        ("redis://127.0.0.1:1/0", None, None),
    ],
)
def test_queue_security_worker_warns_without_a_secret_on_a_shared_redis(
    url: str, secret: str | None, warned: str | None
) -> None:
    env = {"RUNNER_QUEUE_SECRET": secret} if secret else {}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "worker", "--burst", "--redis-url", url],
        env={**Settings.from_env().replace(queue_secret=None).child_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3  # nothing listens there: the warning comes before connecting
    first = proc.stderr.splitlines()[0]
    if warned is None:
        assert "warning" not in proc.stderr
    else:
        assert first.startswith(warned)
    if secret:
        assert secret not in proc.stderr + proc.stdout


def test_queue_security_batch_api_polls_are_allowed_and_signed(client: redis.Redis) -> None:
    """The Batch API's poll jobs are the other job kind workers run: on the allow-list (the worker
    module registers it), and signed like conversations when a secret is set."""
    import runner.queue.worker  # noqa: F401  (what a worker process has loaded)
    from runner.queue.batch_api_jobs import ADVANCE_FUNC, enqueue_advance

    assert ADVANCE_FUNC in security.JOB_FUNCTIONS
    signed_id = enqueue_advance(client, "b1", secret=SECRET)
    signed = Job.fetch(signed_id, connection=client, serializer=JSONSerializer)
    assert security.refusal(signed, secret=SECRET) is None
    unsigned = Job.fetch(enqueue_advance(client, "b2"), connection=client, serializer=JSONSerializer)
    assert security.refusal(unsigned, secret=SECRET) is not None
