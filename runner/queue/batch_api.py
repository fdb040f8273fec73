"""Conversations through the provider's Batch API, in rounds, each round sent exactly once.

Round k sends the next request of every conversation still going (turn k, or the tool outputs of
a turn that ended in tool calls, or a line that errored) as JSONL lines, in as few input files as
the provider allows (`MAX_LINES_PER_FILE`, `MAX_BYTES_PER_FILE`), one provider batch per file.
When every batch of the round has ended, the output and error files are read, each line matched to
its conversation by `custom_id`, and the conversations move on (`runner.engine.batch_lines`);
those that finished get their record in the runner batch, and round k+1 begins.

Everything lives in Redis under the runner batch, written before the step it enables:

    runner:batch:<id>:pb             hash   api, endpoint, round (current k), state (running | done
                                            | cancelled)
    runner:batch:<id>:pb:state:<k>   string {conversation id: LineState} of the live conversations
                                            at the start of round k (lines are built from it, so a
                                            round's files are the same bytes on every try)
    runner:batch:<id>:pb:round:<k>   hash   per part i: p<i>:sha (content hash) and p<i>:uploading
                                            (intent), p<i>:file, p<i>:creating (intent), p<i>:batch,
                                            p<i>:sent, p<i>:status

Exactly once: an upload (or batch create) whose intent is recorded but whose id is not may have
reached the provider; it is looked up (the file by its name, which holds the round, the part and
the hash; the batch by its input file) before anything is sent again. Applying a round is
deterministic (same state, same output files), so a crash while applying just applies it again;
records are stored once per conversation. One process steps a batch at a time (a Redis lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as redis_lib

from runner.engine import batch_lines as bl
from runner.engine.backends.provider_batches import ProviderBatches
from runner.errors import QueueError, UsageError
from runner.jobs import Job, render_output
from runner.queue.batch import BATCH_TTL_S, RESUME_PREFIX, Batch
from runner.records import new_batch_id
from runner.tasks import Api, ConversationTask

MAX_LINES_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200 * 1000 * 1000
"""OpenAI's limits for one batch input file: 50,000 requests and 200 MB."""

POLL_MIN_S = 0.25
POLL_MAX_S = 60.0
POLL_SHARE = 0.2
"""A batch is polled after this share of the time it has run (at least POLL_MIN_S, at most
POLL_MAX_S): a batch that takes 20 hours costs a few thousand cheap GETs, one of a minute a dozen."""

LOCK_S = 600
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass
class Part:
    index: int
    states: list[bl.LineState]
    content: bytes
    sha: str


@dataclass
class Step:
    """What one `step()` achieved: done, or the round in flight and when to look again."""

    done: bool
    round: int
    wait_s: float = 0.0
    provider_batches: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # request_counts summed over the round


def pb_key(batch_id: str) -> str:
    return f"runner:batch:{batch_id}:pb"


def endpoint_of(api: Api) -> str:
    if api not in bl.ENDPOINTS:
        raise UsageError(
            "the Assistants API has no batch endpoint: --batch-api needs `api: chat` or `api: responses`"
        )
    return bl.ENDPOINTS[api]


def init_rounds(redis: redis_lib.Redis, batch_id: str, tasks: Sequence[ConversationTask]) -> None:
    """Start the rounds of a runner batch (no-op when they started already: resume)."""
    key = pb_key(batch_id)
    if redis.exists(key):
        return
    apis = {t.api for t in tasks}
    if len(apis) != 1:
        raise UsageError("--batch-api runs one API per job (a matrix over `api` cannot share batches)")
    api = apis.pop()
    endpoint = endpoint_of(api)
    batch = Batch(redis, batch_id)
    done = set(batch.records())
    states = {t.conversation_id: bl.start(t).to_json() for t in tasks if t.conversation_id not in done}
    pipe = redis.pipeline()
    pipe.set(f"{key}:state:0", json.dumps(states), ex=BATCH_TTL_S)
    pipe.hset(key, mapping={"api": api.value, "endpoint": endpoint, "round": 0, "state": "running"})
    pipe.expire(key, BATCH_TTL_S)
    pipe.execute()
    pipe = redis.pipeline()
    for cid in states:
        batch.transition(cid, "running", client=pipe)
    pipe.execute()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BatchApiRun:
    """Steps the rounds of one runner batch against the provider (see the module docstring)."""

    def __init__(
        self,
        redis: redis_lib.Redis,
        batch_id: str,
        provider: ProviderBatches,
        *,
        max_lines: int = MAX_LINES_PER_FILE,
        max_bytes: int = MAX_BYTES_PER_FILE,
    ) -> None:
        self.redis = redis
        self.batch = Batch(redis, batch_id)
        self.id = batch_id
        self.key = pb_key(batch_id)
        self.provider = provider
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._tasks: dict[str, ConversationTask] | None = None

    @property
    def tasks(self) -> dict[str, ConversationTask]:
        if self._tasks is None:
            self._tasks = {k: ConversationTask.model_validate(v) for k, v in self.batch.tasks().items()}
        return self._tasks

    def meta(self) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in self.redis.hgetall(self.key).items()}

    # -- one step -----------------------------------------------------------------------------
    def step(self) -> Step:
        """Do everything that needs no waiting: submit the round, poll it, and when it ended apply
        it and go on with the next. Returns when the rounds are done or a batch is still running."""
        lock = self.redis.lock(f"{self.key}:lock", timeout=LOCK_S, blocking=False)
        if not lock.acquire():
            return Step(False, int(self.meta().get("round", 0)), POLL_MIN_S)  # another process steps it
        try:
            while True:
                meta = self.meta()
                if not meta:
                    raise QueueError(f"batch {self.id} has no Batch API rounds")
                k = int(meta["round"])
                if meta["state"] != "running":
                    return Step(True, k)
                states = self._states(k)
                if not states:
                    self.redis.hset(self.key, "state", "done")
                    return Step(True, k)
                parts = self.parts(k, states)
                batches = [self._submit(k, part, meta["endpoint"]) for part in parts]
                seen = [self.provider.retrieve(b) for b in batches]
                counts = {"total": 0, "completed": 0, "failed": 0}
                for b in seen:
                    rc = b.request_counts
                    if rc is not None:
                        for name in counts:
                            counts[name] += int(getattr(rc, name) or 0)
                if any(b.status in ACTIVE for b in seen):
                    return Step(False, k, self._wait_s(k, len(parts)), batches, counts)
                self._apply(k, states, parts, seen)
        finally:
            with contextlib.suppress(redis_lib.exceptions.LockError):  # expired while we worked
                lock.release()

    def upload_round(self) -> list[str]:
        """Upload the current round's files (write-ahead, exactly once) without creating batches;
        `step()` does this too. Returns the file ids."""
        meta = self.meta()
        k = int(meta["round"])
        return [self._upload(k, part) for part in self.parts(k, self._states(k))]

    # -- rounds -------------------------------------------------------------------------------
    def _states(self, k: int) -> dict[str, bl.LineState]:
        raw = self.redis.get(f"{self.key}:state:{k}")
        if raw is None:
            raise QueueError(f"batch {self.id}: the state of round {k} is missing from Redis")
        return {cid: bl.LineState.from_json(s) for cid, s in json.loads(raw).items()}

    def parts(self, k: int, states: dict[str, bl.LineState]) -> list[Part]:
        """The round's input files: lines in conversation-id order, split at the provider's limits."""
        parts: list[Part] = []
        lines: list[bytes] = []
        members: list[bl.LineState] = []
        size = 0

        def close() -> None:
            content = b"".join(lines)
            parts.append(Part(len(parts), list(members), content, hashlib.sha256(content).hexdigest()))
            lines.clear()
            members.clear()

        for cid in sorted(states):
            state = states[cid]
            data = (json.dumps(bl.line(self.tasks[cid], state), ensure_ascii=False) + "\n").encode()
            if members and (len(members) >= self.max_lines or size + len(data) > self.max_bytes):
                close()
                size = 0
            lines.append(data)
            members.append(state)
            size += len(data)
        if members:
            close()
        return parts

    def _filename(self, k: int, part: Part) -> str:
        return f"runner-{self.id}-r{k}-p{part.index}-{part.sha[:16]}.jsonl"

    def _upload(self, k: int, part: Part) -> str:
        rkey, p = f"{self.key}:round:{k}", f"p{part.index}:"
        known = {_s(a): _s(b) for a, b in self.redis.hgetall(rkey).items()}
        if known.get(p + "file"):
            return known[p + "file"]
        if known.get(p + "sha") not in (None, part.sha):
            raise QueueError(f"batch {self.id}: round {k} part {part.index} changed since it was uploaded")
        filename = self._filename(k, part)
        file_id = None
        if known.get(p + "uploading"):  # a process died after asking: did the file arrive?
            found = self.provider.find_file(filename)
            file_id = str(found.id) if found is not None else None
        if file_id is None:
            self.redis.hset(rkey, mapping={p + "sha": part.sha, p + "uploading": str(time.time())})
            self.redis.expire(rkey, BATCH_TTL_S)
            file_id = self.provider.upload(filename, part.content)
        self.redis.hset(rkey, p + "file", file_id)
        return file_id

    def _submit(self, k: int, part: Part, endpoint: str) -> str:
        file_id = self._upload(k, part)
        rkey, p = f"{self.key}:round:{k}", f"p{part.index}:"
        known = {_s(a): _s(b) for a, b in self.redis.hgetall(rkey).items()}
        if known.get(p + "batch"):
            return known[p + "batch"]
        created = None
        if known.get(p + "creating"):
            created = self.provider.find_batch(file_id)
        if created is None:
            self.redis.hset(rkey, p + "creating", str(time.time()))
            metadata = {"runner_batch": self.id[:512], "runner_round": str(k), "runner_part": str(part.index)}
            created = self.provider.create(file_id, endpoint, metadata)
        self.redis.hset(rkey, mapping={p + "batch": str(created.id), p + "sent": str(time.time())})
        return str(created.id)

    def _wait_s(self, k: int, n: int) -> float:
        raw = self.redis.hmget(f"{self.key}:round:{k}", [f"p{i}:sent" for i in range(n)])
        sent = min((float(x) for x in raw if x is not None), default=time.time())
        return min(POLL_MAX_S, max(POLL_MIN_S, POLL_SHARE * (time.time() - sent)))

    def _lines(self, file_id: str | None) -> dict[str, dict[str, Any]]:
        if not file_id:
            return {}
        out = {}
        for text in self.provider.content(file_id).splitlines():
            if text.strip():
                line = json.loads(text)
                out[str(line.get("custom_id"))] = line
        return out

    def _apply(self, k: int, states: dict[str, bl.LineState], parts: list[Part], seen: list[Any]) -> None:
        """Round k ended: move every conversation on, store the finished ones, start round k+1."""
        rkey = f"{self.key}:round:{k}"
        sent = self.redis.hmget(rkey, [f"p{p.index}:sent" for p in parts])
        now = time.time()
        for part, batch, at in zip(parts, seen, sent, strict=True):
            latency = int((now - float(at)) * 1000) if at is not None else 0
            answered = self._lines(batch.output_file_id)
            errored = self._lines(batch.error_file_id)
            for state in part.states:
                self._apply_line(state, batch, answered, errored, latency)
            self.redis.hset(rkey, f"p{part.index}:status", str(batch.status))
        finished = [s for s in states.values() if not s.live]
        for state in finished:
            record = bl.to_record(self.tasks[state.conversation_id], state, self.id)
            self.batch.store_record(record)
        live = {cid: s.to_json() for cid, s in states.items() if s.live}
        pipe = self.redis.pipeline()
        pipe.set(f"{self.key}:state:{k + 1}", json.dumps(live), ex=BATCH_TTL_S)
        pipe.hset(self.key, "round", k + 1)
        pipe.expire(rkey, BATCH_TTL_S)
        pipe.execute()

    def _apply_line(
        self,
        state: bl.LineState,
        batch: Any,
        answered: dict[str, dict[str, Any]],
        errored: dict[str, dict[str, Any]],
        latency_ms: int,
    ) -> None:
        task = self.tasks[state.conversation_id]
        cid = state.custom_id()
        if cid in answered:
            bl.accept(
                task,
                state,
                answered[cid]["response"]["body"],
                provider_batch_id=batch.id,
                latency_ms=latency_ms,
            )
        elif cid in errored:
            line = errored[cid]
            response, error = line.get("response"), line.get("error") or {}
            if response:
                status = int(response.get("status_code") or 0)
                err = (response.get("body") or {}).get("error") or {}
                what = (
                    f"HTTP {status} {err.get('code') or err.get('type') or ''}".rstrip()
                    + f": {err.get('message') or 'no message'}"
                )
                retryable = status in RETRY_STATUSES or status >= 500
                bl.fail(task, state, what, retryable=retryable)
            else:  # not run (expired): another round, but the attempt counts, so this ends
                bl.fail(
                    task, state, f"{error.get('code')}: {error.get('message')}", retryable=True, counted=False
                )
        elif batch.status == "cancelled":
            bl.cancel(task, state, f"provider batch {batch.id} was cancelled")
        elif batch.status == "failed":
            errors = getattr(batch, "errors", None)
            detail = "; ".join(f"{e.code}: {e.message}" for e in (errors.data if errors else None) or [])
            bl.fail(
                task, state, f"provider batch {batch.id} failed: {detail or 'no detail'}", retryable=False
            )
        else:
            bl.fail(
                task,
                state,
                f"no answer in provider batch {batch.id} ({batch.status})",
                retryable=True,
                counted=False,
            )

    # -- cancel -------------------------------------------------------------------------------
    def provider_batch_ids(self) -> list[str]:
        """The provider batches of the current round (those submitted so far)."""
        meta = self.meta()
        if not meta:
            return []
        raw = self.redis.hgetall(f"{self.key}:round:{meta['round']}")
        return [_s(v) for k, v in raw.items() if _s(k).endswith(":batch")]

    def cancel(self) -> list[str]:
        """Cancel the provider batches in flight and record every unfinished conversation as
        cancelled; returns the provider batch ids asked to cancel."""
        lock = self.redis.lock(f"{self.key}:lock", timeout=LOCK_S, blocking_timeout=30)
        if not lock.acquire():
            raise QueueError(f"batch {self.id} is busy applying a round; try again")
        try:
            meta = self.meta()
            if not meta or meta["state"] != "running":
                return []
            self.redis.hset(self.key, "state", "cancelled")
            ids = self.provider_batch_ids()
            for bid in ids:
                self.provider.cancel(bid)
            for state in self._states(int(meta["round"])).values():
                bl.cancel(self.tasks[state.conversation_id], state, "cancelled (runner cancel)")
                self.batch.store_record(bl.to_record(self.tasks[state.conversation_id], state, self.id))
            return ids
        finally:
            with contextlib.suppress(redis_lib.exceptions.LockError):
                lock.release()


# -- starting ---------------------------------------------------------------------------------
def _resume_key(job_digest: str, where: str) -> str:
    return RESUME_PREFIX + "batch-api:" + hashlib.sha256(f"{job_digest}\0{where}".encode()).hexdigest()[:32]


def start_batch_api(
    job: Job,
    tasks: Sequence[ConversationTask],
    *,
    redis: redis_lib.Redis,
    output: str | None = None,
    now: datetime | None = None,
) -> str:
    """Create (or find again, unfinished) the runner batch of a `--batch-api` run and its rounds;
    returns its id. Same job file and output: the same batch (resume)."""
    for t in tasks[:1]:
        endpoint_of(t.api)  # assistants: exit 2 before anything is stored
    now = now or datetime.now(UTC)
    where = str(Path(output).resolve()) if output else f"template:{Path.cwd()}:{job.output}"
    key = _resume_key(job.digest, where)
    found = redis.get(key)
    batch_id = _s(found) if found is not None else None
    if batch_id is not None:
        info = Batch(redis, batch_id).info()
        if info is None or info.finished:
            batch_id = None
    batch_id = batch_id or new_batch_id(job.name, now)
    batch = Batch(redis, batch_id)
    info = batch.info()
    if info is not None:
        out = info.output
    elif output:
        out = str(Path(output).resolve())
    else:
        out = str(render_output(job.output, name=job.name, batch=batch_id, now=now).resolve())
    batch.create(job=job.name, digest=job.digest, source=str(job.source), output=out, tasks=tasks)
    redis.set(key, batch_id, ex=BATCH_TTL_S)
    init_rounds(redis, batch_id, tasks)
    return batch_id
