"""Seeded fault injection: which requests fail (500, 503, dropped connection) and which runs fail.

Reproducible means: for the same seed and fault rate, the n-th request reaching the fault check
gets the same decision, and the n-th run (or background response) created gets the same fate.
Requests and runs draw from separate streams, so adding polls does not change which runs fail.
Under concurrency the order in which requests arrive decides who gets which decision.
"""

from __future__ import annotations

import random
from typing import Literal

RequestFault = Literal["500", "503", "drop"]
_KINDS: tuple[RequestFault, ...] = ("500", "503", "drop")


class Faults:
    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self._requests = random.Random(f"{seed}:requests")
        self._runs = random.Random(f"{seed}:runs")

    def request_fault(self) -> RequestFault | None:
        """The fault this request suffers, if any (one draw per request; none when the rate is 0)."""
        if self.rate <= 0:
            return None
        if self._requests.random() >= self.rate:
            return None
        return self._requests.choice(_KINDS)

    def run_fails(self) -> bool:
        """Whether the run (or background response) being created will end `failed`."""
        return self.rate > 0 and self._runs.random() < self.rate
