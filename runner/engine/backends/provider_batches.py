"""The provider's Files and Batches endpoints (`/v1/files`, `/v1/batches`) as the Batch API runner
needs them, every request through the one retry layer (`Caller`).

Neither an upload nor a batch create carries an idempotency key, so a POST whose answer was lost
is looked up before it is sent again: a file by its name (unique per round and part, with the
content's hash in it) among the files of purpose `batch`, a batch by its input file.
"""

from __future__ import annotations

from typing import Any

import openai

from runner.engine.retry import Caller

MAX_LIST_PAGES = 20
"""Pages read when looking for a file or batch whose create lost its answer (newest first)."""


class ProviderBatches:
    def __init__(self, client: openai.OpenAI, caller: Caller) -> None:
        self.client = client
        self.caller = caller

    def upload(self, filename: str, content: bytes) -> str:
        """Upload an input file (purpose `batch`); returns its id."""
        created = self.caller.call(
            lambda: self.client.files.create(file=(filename, content, "application/jsonl"), purpose="batch"),
            reconcile=lambda: self.find_file(filename),
        )
        return str(created.id)

    def find_file(self, filename: str) -> Any | None:
        """The newest file of purpose `batch` named `filename`, or None."""
        files: Any = self.client.files
        page = self.caller.call(lambda: files.list(purpose="batch", order="desc"))
        for _ in range(MAX_LIST_PAGES):
            for f in page.data:
                if f.filename == filename:
                    return f
            if not page.has_next_page():
                return None
            page = self.caller.call(page.get_next_page)
        return None

    def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> Any:
        """Create the batch of an input file; a lost answer is found by the input file's id."""
        batches: Any = self.client.batches
        return self.caller.call(
            lambda: batches.create(
                input_file_id=file_id, endpoint=endpoint, completion_window="24h", metadata=metadata
            ),
            reconcile=lambda: self.find_batch(file_id),
        )

    def find_batch(self, file_id: str) -> Any | None:
        """The batch made of input file `file_id`, or None."""
        batches: Any = self.client.batches
        page = self.caller.call(lambda: batches.list(limit=100))
        for _ in range(MAX_LIST_PAGES):
            for b in page.data:
                if b.input_file_id == file_id:
                    return b
            if not page.has_next_page():
                return None
            page = self.caller.call(page.get_next_page)
        return None

    def retrieve(self, batch_id: str) -> Any:
        return self.caller.call(lambda: self.client.batches.retrieve(batch_id))

    def content(self, file_id: str) -> str:
        return str(self.caller.call(lambda: self.client.files.content(file_id)).text)

    def cancel(self, batch_id: str) -> Any:
        """Ask the provider to cancel a batch; one that already ended is returned as it is."""
        try:
            return self.caller.call(lambda: self.client.batches.cancel(batch_id))
        except openai.BadRequestError:
            return self.retrieve(batch_id)
