"""What `runner run` is asked to do (`RunOptions`) and what came of it (`RunOutcome`)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from runner.errors import FatalAPIError
from runner.records import Record, write_records


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
    batch_api: bool = False  # through the provider's Batch API (also the job key `batch_api: true`)
    progress: bool = True
    progress_to: TextIO | None = None  # where the live progress line goes (the CLI: stderr); None: nowhere
    # Called once the run's Redis is up, with a client and the URL (`runner run --view` starts the
    # web view on it); not called by --inline, which has no Redis.
    on_queue: Callable[[Any, str], None] | None = None


@dataclass
class RunOutcome:
    batch_id: str
    output: Path
    records: list[Record] = field(default_factory=list)
    wall_s: float = 0.0


def aborted(error: FatalAPIError, records: Collection[Record], total: int, output: Path) -> FatalAPIError:
    """A run stopped by 401/403/quota: write the records that exist (none: no file) and say what
    was kept and what was not run."""
    if records:
        write_records(output, sorted(records, key=lambda r: r["conversation_id"]))
        kept = f"; {len(records)} of {total} conversations recorded in {output}"
    else:
        kept = "; nothing recorded"
    return FatalAPIError(f"{error}{kept}, {total - len(records)} not run")
