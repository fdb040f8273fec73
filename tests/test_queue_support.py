"""Helpers for the queue and worker tests (no tests here): job files, a real Redis, worker pools.

Imported by tests/test_queue_*.py and tests/test_worker_*.py. Everything is real: a redis-server
process (`runner.queue.redis_server.RedisServer`), worker processes (`runner worker`, as users run it)
and the simulator over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import redis
import yaml

from runner.queue.batch import Batch
from runner.queue.redis_server import RedisServer, connect
from runner.queue.worker import LocalWorkers
from runner.records import Record, read_records

FAKE_KEY = "sk-test-7f3a9c1e55d04b2e8a6b0c4d2e1f9a8b"
"""A known fake API key: it must never show up in Redis."""


def write_job(
    path: Path,
    name: str,
    *,
    conversations: int = 1,
    repeat: int = 1,
    turns: int = 1,
    api: str = "chat",
    limits: dict[str, Any] | None = None,
    messages: list[str] | None = None,
    expect: list[dict[str, Any]] | None = None,
) -> Path:
    """A job file with `conversations` scripted conversations of `turns` turns, each repeated."""
    convs = []
    for i in range(conversations):
        text = messages[i % len(messages)] if messages else f"hello {i}"
        turn: dict[str, Any] = {"user": text}
        if expect is not None:
            turn["expect"] = expect
        convs.append({"id": f"c{i:03d}", "turns": [turn] * turns})
    doc: dict[str, Any] = {
        "name": name,
        "api": api,
        "model": "gpt-4o-mini",
        "assistants": {"bot": {"instructions": "Answer briefly."}},
        "conversations": convs,
        "repeat": repeat,
        "output": str(path.parent / "runs" / "{name}-{batch}.jsonl"),
    }
    if limits:
        doc["limits"] = limits
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def conversation_ids(records: list[Record]) -> list[str]:
    return [r["conversation_id"] for r in records]


def read_jsonl(path: Path) -> list[Record]:
    return list(read_records(path))


def wait_until(
    predicate: Callable[[], Any], timeout: float, poll: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_finished(client: redis.Redis, batch_id: str, timeout: float) -> None:
    wait_until(
        lambda: Batch(client, batch_id).require().finished, timeout, 0.2, f"batch {batch_id} to finish"
    )


@contextlib.contextmanager
def started_redis(directory: Path, **kwargs: Any) -> Iterator[tuple[RedisServer, redis.Redis]]:
    server = RedisServer(directory, **kwargs).start()
    client = connect(server.url)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


@contextlib.contextmanager
def worker_pool(
    redis_url: str,
    processes: int,
    log_path: Path,
    *,
    base_url: str,
    api_key: str = FAKE_KEY,
    burst: bool = False,
    env: dict[str, str] | None = None,
    concurrency: int = 64,
    pooled: bool = True,
    in_flight_key: str | None = None,
) -> Iterator[LocalWorkers]:
    """`runner worker -n N -c C` as a subprocess, pointed at a simulator; stopped (and killed) afterwards."""
    extra = {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": api_key, **(env or {})}
    workers = LocalWorkers(
        redis_url, processes, log_path, burst=burst, concurrency=concurrency, pooled=pooled,
        in_flight_key=in_flight_key,
    )  # fmt: skip
    with mock.patch.dict(os.environ, extra):  # the pool inherits it; this process gets it back
        workers.start()
    try:
        yield workers
    finally:
        workers.stop(grace_s=5)


def scan_for(client: redis.Redis, secrets: list[str]) -> list[str]:
    """Every key and value in Redis (zlib-compressed RQ job data included) that holds a secret."""
    found = []

    def texts(value: Any) -> Iterator[bytes]:
        if isinstance(value, bytes):
            yield value
            with contextlib.suppress(zlib.error):
                yield zlib.decompress(value)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                yield from texts(v)
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from texts(k)
                yield from texts(v)
        elif value is not None:
            yield str(value).encode()

    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value = _read(client, key, kind)
        for blob in [key, *texts(value)]:
            for secret in secrets:
                if secret.encode() in blob:
                    found.append(f"{key.decode()} ({kind}) holds {secret[:6]}…")
    return found


def _read(client: redis.Redis, key: bytes, kind: str) -> Any:
    if kind == "string":
        return client.get(key)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return client.smembers(key)
    if kind == "zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == "stream":
        return client.xrange(key)
    return None


def job_runs(stats: dict[str, Any]) -> int:
    """Chat completions the simulator answered (one per turn of a chat job)."""
    return int(stats["by_route"].get("POST /v1/chat/completions", 0))


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
