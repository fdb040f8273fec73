"""Seeded fault injection: which requests fail (500, 503, dropped connection), when, and which runs fail.

A fault strikes either BEFORE the request is processed (nothing changes on the server) or AFTER
(`fault_after_share` of them): the run, response, message or completion is created, and then the
answer is lost — the connection dropped or a 500/503 sent — or, for a stream, the connection is
cut after a few events. After-faults are what makes a client's reconciliation of lost creates
necessary (the SDK sends no idempotency key, wire-protocol §7).

Reproducible means: for the same seed and fault rate, the n-th request reaching the fault check
gets the same decision, and the n-th run (or background response) created gets the same fate.
Requests, timing of faults and runs draw from separate streams, so adding polls does not change
which runs fail, and the kinds of faults drawn do not depend on `fault_after_share`.
Under concurrency the order in which requests arrive decides who gets which decision.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

RequestFault = Literal["500", "503", "drop"]
_KINDS: tuple[RequestFault, ...] = ("500", "503", "drop")

MAX_STREAM_EVENTS_BEFORE_CUT = 4
"""A cut stream delivers between 1 and this many events first."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind, whether it strikes after processing, and (streams) where to cut."""

    kind: RequestFault
    after: bool = False
    cut_after_events: int = 1


class Faults:
    def __init__(self, rate: float, seed: int, after_share: float = 0.0) -> None:
        self.rate = rate
        self.after_share = after_share
        self._requests = random.Random(f"{seed}:requests")
        self._after = random.Random(f"{seed}:after")
        self._runs = random.Random(f"{seed}:runs")

    def request_fault(self) -> Fault | None:
        """The fault this request suffers, if any (none when the rate is 0)."""
        if self.rate <= 0:
            return None
        if self._requests.random() >= self.rate:
            return None
        kind = self._requests.choice(_KINDS)
        after = self._after.random() < self.after_share
        return Fault(kind, after, self._after.randint(1, MAX_STREAM_EVENTS_BEFORE_CUT))

    def run_fails(self) -> bool:
        """Whether the run (or background response) being created will end `failed`."""
        return self.rate > 0 and self._runs.random() < self.rate
