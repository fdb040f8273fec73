"""The collector: a batch's records out of Redis into one JSONL file, each conversation exactly once.

Workers on any machine store records in Redis (`runner.queue.batch`); only a collector writes the file:
`runner collect`, or `runner run` as results arrive. The hash of records holds one record per
conversation id, so the file holds each id once, sorted by id (a stable order for diffs), written
atomically (temp file + rename) so a reader never sees half a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import redis

from runner.queue.batch import Batch
from runner.records import Record, write_records


def collect(batch_id: str, redis: redis.Redis, output: str | Path | None = None) -> Path:
    """Write (or finish writing) the batch's JSONL; `output` defaults to the path the batch recorded.

    An unfinished batch gives the records stored so far (run it again once the batch is done).
    """
    batch = Batch(redis, batch_id)
    info = batch.require()
    path = Path(output) if output is not None else Path(info.output)
    write_records(path, sorted_records(batch.records().values()))
    return path


def sorted_records(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: r["conversation_id"])


class Collector:
    """Follows a batch's arrival log so `runner run` gathers records as they come, not at the end."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.records: dict[str, Record] = {}
        self._offset = 0

    def poll(self) -> list[Record]:
        """Fetch the records that arrived since the last poll (a retried one replaces its old record)."""
        self._offset, new = self.batch.records_since(self._offset)
        self.records.update(new)
        return list(new.values())

    def write(self, path: str | Path) -> int:
        """Write what has been gathered so far (sorted, atomically)."""
        return write_records(path, sorted_records(self.records.values()))
