"""The figures the view shows about batches on Redis: counts, pass rate, rate, ETA, workers, and the
shared limiter's scopes (budget, what is used in the current window, in flight, cooldown).

Plain dicts of numbers and names, so the same figures feed the HTML pages and the JSON the page's
script polls. Nothing here carries a secret: the limiter's scopes are named by job and a hash of the
API base URL, never the URL or a key.
"""

from __future__ import annotations

import json
from typing import Any

import redis as redis_lib

from runner.queue.batch import PREFIX, BatchInfo, recent_batches, workers_alive
from runner.queue.limits import KEY_PREFIX

BATCHES_SHOWN = 50
WINDOW_MS = 60_000


def pass_rate(counts: dict[str, int]) -> float | None:
    """passed / (passed + failed + errors); None while nothing judged (unknown, not 0)."""
    judged = counts["passed"] + counts["failed"] + counts["errors"]
    return counts["passed"] / judged if judged else None


def batch_figures(info: BatchInfo) -> dict[str, Any]:
    c = info.counts
    return {
        "id": info.id,
        "job": info.job,
        "state": info.state,
        "total": info.total,
        "done": info.done,
        **{k: c[k] for k in ("queued", "running", "dropped", "passed", "failed", "errors", "nochecks")},
        "tokens": c["tokens"],
        "requests": c["requests"],
        "pass_rate": pass_rate(c),
        "rate": round(info.rate, 3),
        "eta_s": None if info.state != "running" or info.eta_s is None else round(info.eta_s, 1),
        "created_at": info.created_at,
        "started_at": info.started_at,
        "ended_at": info.ended_at,
        "aborted": info.aborted,
        "output": info.output,
    }


def batches_overview(redis: redis_lib.Redis) -> dict[str, Any]:
    batches = recent_batches(redis, BATCHES_SHOWN)
    return {
        "batches": [batch_figures(i) for i in batches],
        "workers_alive": workers_alive(redis),
        "scopes": limiter_scopes(redis, batches),
    }


def job_limits(redis: redis_lib.Redis, info: BatchInfo) -> dict[str, Any] | None:
    """The `limits:` of a batch's job (every task of a batch carries the same)."""
    raw = redis.hrandfield(f"{PREFIX}{info.id}:tasks", 1, withvalues=True)
    if not raw:
        return None
    limits: dict[str, Any] = json.loads(raw[1]).get("limits") or {}  # type: ignore[arg-type]
    return limits


def limiter_scopes(redis: redis_lib.Redis, batches: list[BatchInfo]) -> list[dict[str, Any]]:
    """Every limiter scope with requests in its window, slots held or a cooldown running."""
    names: set[str] = set()
    for key in redis.scan_iter(match=f"{KEY_PREFIX}*", count=1000):
        scope = key.decode()[len(KEY_PREFIX) :].rsplit(":", 1)[0]
        names.add(scope)
    if not names:
        return []
    sec, usec = redis.time()
    now_ms = sec * 1000 + usec // 1000
    budgets: dict[str, dict[str, Any]] = {}
    for info in batches:
        if info.job not in budgets:
            budgets[info.job] = job_limits(redis, info) or {}
    scopes = []
    for scope in sorted(names):
        base = f"{KEY_PREFIX}{scope}:"
        pipe = redis.pipeline(transaction=False)
        pipe.zcount(base + "req", now_ms - WINDOW_MS, "+inf")
        pipe.get(base + "toksum")
        pipe.zcount(base + "slots", now_ms, "+inf")
        pipe.get(base + "cool")
        requests, toksum, slots, cool = pipe.execute()
        cooldown_ms = max(0, int(cool) - now_ms) if cool else 0
        limits = budgets.get(scope.rsplit("@", 1)[0], {})
        scopes.append(
            {
                "scope": scope,
                "requests_per_minute": limits.get("requests_per_minute"),
                "tokens_per_minute": limits.get("tokens_per_minute"),
                "concurrency": limits.get("concurrency"),
                "requests_in_window": int(requests),
                "tokens_in_window": int(toksum) if toksum is not None else None,
                "in_flight": int(slots),
                "cooldown_s": round(cooldown_ms / 1000, 1),
            }
        )
    return scopes
