"""What `runner run` is asked to do (`RunOptions`) and what came of it (`RunOutcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from runner.records import Record


@dataclass(frozen=True)
class RunOptions:
    output: str | None = None
    workers: int | None = None  # None: sized from the limits and the observed run time
    simulate: bool = False
    redis_url: str | None = None
    inline: bool = False
    junit: str | None = None
    html: str | None = None
    fail_under: float | None = None
    progress: bool = True
    progress_to: TextIO | None = None  # where the live progress line goes (the CLI: stderr); None: nowhere


@dataclass
class RunOutcome:
    batch_id: str
    output: Path
    records: list[Record] = field(default_factory=list)
    wall_s: float = 0.0
