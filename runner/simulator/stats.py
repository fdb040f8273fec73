"""Request counters of one simulator, read by tests and benchmarks (`.stats()`, `/_simulator/stats`).

Every `/v1` request is counted exactly once, under its route template and method, and once under
its status code (dropped connections have no status and are counted apart). Counters are guarded
by a lock because the server's event loop writes them while another thread may read them.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

MAX_SAMPLES = 10
"""How many schema violations (and refused requests) are described in the stats; all are counted."""


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._other: Counter[str] = Counter()
        self._violations: list[str] = []
        self._invalid: list[str] = []

    def request(self, method: str, route: str) -> None:
        with self._lock:
            self._routes[f"{method} {route}"] += 1

    def status(self, status: int) -> None:
        with self._lock:
            self._statuses[str(status)] += 1

    def event(self, name: str) -> None:
        """Count a non-status event: dropped, rate_limited, quota, faults, faults_after, runs_failed…"""
        with self._lock:
            self._other[name] += 1

    def violation(self, message: str) -> None:
        """An answer of the simulator that does not match OpenAI's response schemas (a simulator bug)."""
        with self._lock:
            self._other["schema_violations"] += 1
            if len(self._violations) < MAX_SAMPLES:
                self._violations.append(message)

    def invalid_request(self, message: str) -> None:
        """A request body OpenAI's request schemas refuse (answered 400: a client bug)."""
        with self._lock:
            self._other["invalid_requests"] += 1
            if len(self._invalid) < MAX_SAMPLES:
                self._invalid.append(message)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            routes = dict(sorted(self._routes.items()))
            statuses = dict(sorted(self._statuses.items()))
            other = dict(self._other)
            violations = list(self._violations)
            invalid = list(self._invalid)
        return {
            "requests_total": sum(routes.values()),
            "by_route": routes,
            "by_status": statuses,
            "429": statuses.get("429", 0),
            "429_rate_limit": other.get("rate_limited", 0),
            "429_quota": other.get("quota", 0),
            "dropped": other.get("dropped", 0),
            "faults": other.get("faults", 0),
            "faults_after_processing": other.get("faults_after", 0),
            "streams_cut": other.get("streams_cut", 0),
            "runs_failed": other.get("runs_failed", 0),
            "schema_violations": other.get("schema_violations", 0),
            "schema_violation_samples": violations,
            "invalid_requests": other.get("invalid_requests", 0),
            "invalid_request_samples": invalid,
        }

    def reset(self) -> None:
        with self._lock:
            self._routes.clear()
            self._statuses.clear()
            self._other.clear()
            self._violations.clear()
            self._invalid.clear()
