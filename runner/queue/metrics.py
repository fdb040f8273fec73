"""Prometheus metrics of a worker pool (`runner worker --metrics-port P`), with `prometheus-client`.

A pool is one parent process and N forked workers, so the figures use prometheus-client's
multiprocess mode: `start_metrics_server` (called by the pool's parent before it forks) points
`PROMETHEUS_MULTIPROC_DIR` at a fresh private directory and serves `/metrics` from the parent,
summing what every worker process wrote there. Workers record with the functions below; with no
metrics server started (the default), each of them is a no-op that costs one dict lookup and
never imports prometheus-client.

    runner_conversations_total{status, outcome}   conversations finished (record status / outcome)
    runner_turns_total{status}                    turns finished, by run status
    runner_requests_total                         API requests sent
    runner_rate_limited_total                     429 answers met
    runner_tokens_total{kind}                     prompt / completion tokens reported by the server
    runner_conversations_in_flight                conversations being carried out right now
    runner_limiter_wait_seconds_total             time spent waiting for the shared limiter
    runner_turn_latency_seconds                   histogram of turn (run) latencies
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from runner.errors import UsageError

ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own switch to multiprocess mode; set by `start_metrics_server` only."""

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Turn latency buckets: a run takes from a fraction of a second to minutes."""

_metrics: dict[str, Any] | None = None
_made = threading.Lock()  # a worker's conversation threads record at once: make the metrics once


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def start_metrics_server(port: int, host: str = "127.0.0.1") -> str:
    """Serve `/metrics` of this process and of every worker it forks from now on; returns the
    directory the workers write to. Call it in the pool's parent, before forking."""
    directory = tempfile.mkdtemp(prefix="runner-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ[ENV] = directory
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values

    # prometheus-client picks its value class when first imported; if something imported it before
    # the variable was set, pick again so workers write to the shared directory.
    values.ValueClass = values.get_value_class()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        shutil.rmtree(directory, ignore_errors=True)
        raise UsageError(
            f"--metrics-port {port}: cannot listen on {host}:{port}: {e.strerror or e}"
        ) from None
    return directory


def process_dead(pid: int) -> None:
    """Call in the pool's parent when a worker process exits: its in-flight gauge stops counting."""
    if enabled() and "prometheus_client" in sys.modules:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def _get() -> dict[str, Any]:
    global _metrics
    if _metrics is not None:
        return _metrics
    with _made:
        if _metrics is not None:  # another thread made them while this one waited
            return _metrics
        from prometheus_client import Counter, Gauge, Histogram

        _metrics = dict(
            conversations=Counter("runner_conversations", "Conversations finished.", ["status", "outcome"]),
            turns=Counter("runner_turns", "Turns finished, by run status.", ["status"]),
            requests=Counter("runner_requests", "API requests sent."),
            rate_limited=Counter("runner_rate_limited", "429 (rate limited) answers met."),
            tokens=Counter("runner_tokens", "Tokens reported by the server.", ["kind"]),
            in_flight=Gauge(
                "runner_conversations_in_flight",
                "Conversations being carried out now.",
                multiprocess_mode="livesum",
            ),
            limiter_wait=Counter(
                "runner_limiter_wait_seconds", "Time spent waiting for the shared rate limiter."
            ),
            latency=Histogram(
                "runner_turn_latency_seconds", "Turn (run) latency.", buckets=LATENCY_BUCKETS_S
            ),
        )
    return _metrics


def conversation_finished(status: str, outcome: str) -> None:
    """A conversation's record was stored: its `status` and its outcome (passed, failed, ...)."""
    if enabled():
        _get()["conversations"].labels(status=status, outcome=outcome).inc()


def turn_finished(
    status: str | None, latency_s: float | None, prompt_tokens: int | None, completion_tokens: int | None
) -> None:
    """A turn ended: its run status, latency and usage (None: unknown, not counted as 0)."""
    if not enabled():
        return
    m = _get()
    m["turns"].labels(status=status or "unknown").inc()
    if latency_s is not None:
        m["latency"].observe(latency_s)
    for kind, n in (("prompt", prompt_tokens), ("completion", completion_tokens)):
        if n:
            m["tokens"].labels(kind=kind).inc(n)


def request_sent(n: int = 1) -> None:
    if enabled():
        _get()["requests"].inc(n)


def rate_limited() -> None:
    """The server answered 429."""
    if enabled():
        _get()["rate_limited"].inc()


def limiter_waited(seconds: float) -> None:
    if enabled() and seconds > 0:
        _get()["limiter_wait"].inc(seconds)


@contextlib.contextmanager
def in_flight() -> Iterator[None]:
    """Around carrying out one conversation."""
    if not enabled():
        yield
        return
    gauge = _get()["in_flight"]
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()
