"""Who can make a worker run something: the job allow-list, signed job payloads, refusals.

Anyone who can write to the queue's Redis can put a job on the queue `runner`. RQ would import and
call whatever function such a job names (`subprocess.run`, `os.system`...): the JSON serializer
stops code hidden in serialized objects, not that. So a worker checks every job *before RQ imports
or calls anything* (`accept`, called where `RunnerWorker` takes a job):

* **Allow-list**: the job's function name (read from its JSON payload, never imported) must be one
  of `JOB_FUNCTIONS` (the runner's own job functions; a later job kind adds its function with
  `allow_job_function`). No bound instance, no RQ callbacks, no webhooks: ours never have any.
* **Signature**: with `RUNNER_QUEUE_SECRET` set, every job the runner enqueues carries in its meta
  an HMAC-SHA256 (`sign`) over a canonical JSON of (function, args, kwargs, job id). A worker with
  the secret refuses an unsigned job and one whose function, arguments or id changed since signing.
  The HMAC is stored; the secret is never written to Redis, records or logs (and `scrub` removes
  it from any message that might quote it).

A refused job is moved to RQ's FailedJobRegistry with the reason (`refuse`), logged, and counted
(`REFUSED_KEY`, shown by `runner status`). `GuardedJob` is the worker's RQ job class: even on paths
that never pass through `refusal` (RQ's registry maintenance), it neither imports a function outside
the allow-list nor any callback a job hash names.

Not covered: someone with write access to Redis can still delete or reorder jobs, edit batch state
and records, and re-enqueue a job that was signed before (it runs a conversation the user asked
for). Signing proves who enqueued a job, not that Redis is private.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis as redis_lib
from rq import Queue
from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.results import Result

from runner.errors import QueueError

log = logging.getLogger("runner.queue.security")

JOB_FUNCTIONS: set[str] = {"runner.queue.execute.run_task"}
"""The only functions a runner worker calls (`conversations.JOB_FUNC` and later job kinds)."""

SIGNATURE_META = "runner_sig"
"""The job meta field holding the payload's HMAC ("v1:<hex>")."""

SIGNATURE_VERSION = "v1"
REFUSED_KEY = "runner:refused"
"""How many jobs workers refused (all time, all batches), for `runner status`."""

REFUSED_TTL_S = 7 * 24 * 3600
"""A refused job stays in the failed registry this long (its own failure_ttl is the sender's)."""

MIN_SECRET_LEN = 16
"""`runner worker` warns below this: the HMACs in Redis would let an attacker guess a short secret offline."""

_CALLBACK_FIELDS = ("success_callback_name", "failure_callback_name", "stopped_callback_name")


def allow_job_function(name: str) -> None:
    """Let workers run jobs naming `name` (for a new job kind: call it where its function is defined)."""
    JOB_FUNCTIONS.add(name)


def canonical(func_name: str, args: Sequence[Any], kwargs: dict[str, Any], job_id: str) -> bytes:
    """The signed bytes: what RQ's JSON serializer stores (tuples are lists), keys sorted."""
    body = {"func": func_name, "args": list(args), "kwargs": kwargs, "id": job_id}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode()


def sign(secret: str, func_name: str, args: Sequence[Any], kwargs: dict[str, Any], job_id: str) -> str:
    digest = hmac.new(secret.encode(), canonical(func_name, args, kwargs, job_id), hashlib.sha256)
    return f"{SIGNATURE_VERSION}:{digest.hexdigest()}"


def signed_meta(
    secret: str | None, func_name: str, args: Sequence[Any], kwargs: dict[str, Any], job_id: str
) -> dict[str, str]:
    """The meta entry to enqueue a job with: its signature, or nothing when no secret is set."""
    return {SIGNATURE_META: sign(secret, func_name, args, kwargs, job_id)} if secret else {}


def refusal(job: Job, secret: str | None) -> str | None:
    """Why a worker must not run this job, or None. Reads the payload as JSON; imports nothing."""
    try:
        func_name, instance = job.func_name, job.instance  # JSON-decodes `data`; `job.func` would import
        args, kwargs = job.args, job.kwargs
    except DeserializationError:
        return "refused: the job's payload is not JSON (only RQ's JSON serializer is accepted)"
    if not isinstance(func_name, str) or func_name not in JOB_FUNCTIONS:
        allowed = ", ".join(sorted(JOB_FUNCTIONS))
        return f"refused: runner workers run only {allowed}, not {func_name!r}"
    if instance is not None or not isinstance(args, list) or not isinstance(kwargs, dict):
        return "refused: the job's payload is not a plain call of a runner job function"
    hooks = job.connection.hmget(job.key, [*_CALLBACK_FIELDS, "webhooks"])
    if any(hooks):
        return "refused: the job names RQ callbacks or webhooks, which runner jobs never have"
    if not secret:
        return None
    signature = job.meta.get(SIGNATURE_META) if isinstance(job.meta, dict) else None
    if not isinstance(signature, str) or not signature:
        return "refused: unsigned job (this worker has RUNNER_QUEUE_SECRET set)"
    try:
        expected = sign(secret, func_name, args, kwargs, job.id)
    except (TypeError, ValueError):
        return "refused: the job's arguments cannot be signed"
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return (
            "refused: bad signature (the job was changed after it was signed,"
            " or signed with another RUNNER_QUEUE_SECRET)"
        )
    return None


def accept(job: Job, queue: Queue, secret: str | None, worker_name: str) -> bool:
    """True if the worker may run this dequeued job; else it is refused (`refuse`) and never imported."""
    reason = refusal(job, secret)
    if reason is None:
        return True
    refuse(job, queue, reason, worker_name)
    return False


def refuse(job: Job, queue: Queue, reason: str, worker_name: str) -> None:
    """Move a job that was dequeued but not started to the failed registry with `reason`, count it."""
    connection = job.connection
    with connection.pipeline() as pipe:
        pipe.lrem(queue.intermediate_queue_key, 1, job.id)  # dequeued: RQ parked it there
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        queue.failed_job_registry.add(job, ttl=REFUSED_TTL_S, exc_string=reason, pipeline=pipe)
        Result.create_failure(job, REFUSED_TTL_S, reason, worker_name=worker_name, pipeline=pipe)
        pipe.incr(REFUSED_KEY)
        pipe.execute()
    log.warning("job %s refused and moved to the failed registry: %s", job.id, reason)


def refused_count(redis: redis_lib.Redis) -> int:
    return int(redis.get(REFUSED_KEY) or 0)


def is_local_redis(url: str) -> bool:
    """A unix socket or a loopback host: only this machine can write to it."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GuardedJob(Job):
    """The worker's RQ job class: never imports a function outside the allow-list, nor callbacks.

    `refusal` stops foreign jobs before they start; this covers RQ's own paths that act on job
    hashes without dequeuing them (its registry maintenance runs failure callbacks of abandoned jobs).
    """

    @property
    def func(self) -> Any:
        if self.func_name not in JOB_FUNCTIONS or self.instance is not None:
            raise QueueError(f"refused to import {self.func_name!r}: not a runner job function")
        return super().func

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        return None  # runner jobs have none; a foreign job's URLs are not called
