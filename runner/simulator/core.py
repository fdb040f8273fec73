"""The state one simulator instance shares between its routes: config, objects, limits, faults, stats.

Everything here is touched only from the server's event loop (one thread), so nothing needs a lock
except the stats, which other threads read.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from runner.simulator.audit import Audit
from runner.simulator.config import SimulatorConfig
from runner.simulator.faults import Faults
from runner.simulator.ratelimits import RateLimiter
from runner.simulator.stats import Stats

T = TypeVar("T")

QUEUE_SHARE = 0.1
"""Share of a run's latency spent `queued` before `in_progress` (capped by MAX_QUEUE_S)."""

MAX_QUEUE_S = 0.05

CANCEL_DELAY_S = 0.02
"""How long a run stays `cancelling` before it is `cancelled`."""


class Table(Generic[T]):
    """Objects of one kind by id, kept in creation order (the stable tie order of §4 pagination)."""

    def __init__(self) -> None:
        self.by_id: dict[str, T] = {}

    def add(self, oid: str, obj: T) -> T:
        self.by_id[oid] = obj
        return obj

    def get(self, oid: str) -> T | None:
        return self.by_id.get(oid)

    def remove(self, oid: str) -> T | None:
        return self.by_id.pop(oid, None)

    def values(self) -> list[T]:
        return list(self.by_id.values())


class Simulator:
    """One simulated OpenAI organisation: all objects plus the machinery around requests."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.limiter = RateLimiter(config.rpm, config.tpm)
        self.faults = Faults(config.fault_rate, config.seed, config.fault_after_share)
        self.audit = Audit(self.stats)
        self._ids = random.Random(f"{config.seed}:ids")
        self._jitter = random.Random(f"{config.seed}:latency")
        self.closing: asyncio.Event | None = None  # set when the server stops: open streams end
        self.assistants: Table[dict[str, Any]] = Table()
        self.threads: Table[Any] = Table()
        self.messages: Table[dict[str, Any]] = Table()
        self.runs: Table[Any] = Table()
        self.conversations: Table[Any] = Table()
        self.items: Table[dict[str, Any]] = Table()
        self.responses: Table[Any] = Table()
        self._request_seq = 0

    # -- ids and time -------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        """An opaque id like OpenAI's (`run_` + 24 characters); the sequence is fixed by the seed."""
        return f"{prefix}{self._ids.getrandbits(96):024x}"

    def request_id(self) -> str:
        self._request_seq += 1
        return f"req_{self._request_seq:024x}"

    @staticmethod
    def now() -> float:
        return time.time()

    def latency(self, override: float | None = None) -> float:
        """How long one model turn takes: the configured (or rule's) latency with seeded jitter."""
        base = self.config.latency_s if override is None else override
        j = self.config.jitter
        return base * (1 + j * (2 * self._jitter.random() - 1)) if j else base

    @staticmethod
    def queue_time(latency: float) -> float:
        return min(MAX_QUEUE_S, latency * QUEUE_SHARE)

    def closing_event(self) -> asyncio.Event:
        if self.closing is None:
            self.closing = asyncio.Event()
        return self.closing


async def sleep_or_close(sim: Simulator, seconds: float, wake: asyncio.Event | None = None) -> bool:
    """Sleep up to `seconds`, waking early when `wake` is set; False once the server is stopping."""
    closing = sim.closing_event()
    if closing.is_set():
        return False
    if seconds > 0:
        waiters = [asyncio.ensure_future(closing.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
    return not closing.is_set()


def first(items: list[T], pred: Callable[[T], bool]) -> T | None:
    for x in items:
        if pred(x):
            return x
    return None
