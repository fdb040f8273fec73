"""Request counters of one simulator, read by tests and benchmarks (`.stats()`, `/_simulator/stats`).

Every `/v1` request is counted exactly once, under its route template and method, and once under
its status code (dropped connections have no status and are counted apart). Counters are guarded
by a lock because the server's event loop writes them while another thread may read them.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._other: Counter[str] = Counter()

    def request(self, method: str, route: str) -> None:
        with self._lock:
            self._routes[f"{method} {route}"] += 1

    def status(self, status: int) -> None:
        with self._lock:
            self._statuses[str(status)] += 1

    def event(self, name: str) -> None:
        """Count a non-status event: dropped, rate_limited, quota, faults, runs_failed."""
        with self._lock:
            self._other[name] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            routes = dict(sorted(self._routes.items()))
            statuses = dict(sorted(self._statuses.items()))
            other = dict(self._other)
        return {
            "requests_total": sum(routes.values()),
            "by_route": routes,
            "by_status": statuses,
            "429": statuses.get("429", 0),
            "429_rate_limit": other.get("rate_limited", 0),
            "429_quota": other.get("quota", 0),
            "dropped": other.get("dropped", 0),
            "faults": other.get("faults", 0),
            "runs_failed": other.get("runs_failed", 0),
        }

    def reset(self) -> None:
        with self._lock:
            self._routes.clear()
            self._statuses.clear()
            self._other.clear()
