"""The Files routes (`/v1/files`): upload (multipart, as the SDK sends it), retrieve, list, content,
delete. Enough of OpenAI's Files API for the Batch API: input files (`purpose: batch`, `.jsonl`,
at most 200 MB) and the output and error files a batch writes (`purpose: batch_output`).

The files of a simulator live beside its other objects (`files_of(sim)`), in creation order.
"""

from __future__ import annotations

import email.parser
import email.policy
import weakref
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from runner.simulator.core import Simulator, Table
from runner.simulator.http import APIError, Call, bad_request, not_found

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024
BATCH_FILE_TTL_S = 30 * 24 * 3600
"""Files with purpose `batch` (and batch outputs) expire after 30 days, like OpenAI's."""
MAX_LIST_LIMIT = 10_000

_tables: weakref.WeakKeyDictionary[Simulator, Table[StoredFile]] = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class StoredFile:
    id: str
    created_at: int
    filename: str
    purpose: str
    content: bytes

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }
        if self.purpose in ("batch", "batch_output"):
            out["expires_at"] = self.created_at + BATCH_FILE_TTL_S
        return out


def files_of(sim: Simulator) -> Table[StoredFile]:
    table = _tables.get(sim)
    if table is None:
        table = _tables[sim] = Table()
    return table


def add_file(sim: Simulator, filename: str, purpose: str, content: bytes, now: float) -> StoredFile:
    """Store a file (an upload, or a batch's output) and return it."""
    f = StoredFile(sim.new_id("file-"), int(now), filename, purpose, content)
    return files_of(sim).add(f.id, f)


def get_file(sim: Simulator, file_id: str) -> StoredFile:
    f = files_of(sim).get(file_id)
    if f is None:
        raise not_found("file", file_id)
    return f


async def _form(call: Call) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """The fields and the file of a multipart/form-data body (stdlib email parser: no extra dependency)."""
    ctype = call.request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise bad_request("Invalid request: expected a multipart/form-data body with 'file' and 'purpose'.")
    raw = await call.request.body()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
    )
    fields: dict[str, str] = {}
    upload: tuple[str, bytes] | None = None
    for part in message.iter_parts() if message.is_multipart() else []:
        name = part.get_param("name", header="content-disposition")
        raw_payload = part.get_payload(decode=True)
        payload = raw_payload if isinstance(raw_payload, bytes) else b""
        if not isinstance(name, str):
            continue
        filename = part.get_filename()
        if name == "file":
            upload = (filename or "upload", payload)
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields, upload


async def create_file(call: Call) -> dict[str, Any]:
    fields, upload = await _form(call)
    purpose = fields.get("purpose")
    if purpose is None:
        raise bad_request("Missing required parameter: 'purpose'.", "purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(
            f"Invalid value for 'purpose': '{purpose}'. Supported values are: "
            + ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
            + ".",
            "purpose",
        )
    if upload is None:
        raise bad_request("Missing required parameter: 'file'.", "file")
    filename, content = upload
    if purpose == "batch":
        if not filename.endswith(".jsonl"):
            raise bad_request("Invalid file format for Batch API. Must be .jsonl", "file")
        if len(content) > MAX_BATCH_FILE_BYTES:
            raise bad_request(
                f"File is too large for Batch API: {len(content)} bytes, at most {MAX_BATCH_FILE_BYTES}.",
                "file",
            )
    return add_file(call.sim, filename, purpose, content, call.now).to_dict()


async def list_files(call: Call) -> dict[str, Any]:
    purpose = call.query("purpose")
    order = call.query("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request(f"Invalid value for 'order': expected one of 'asc' or 'desc', got '{order}'.")
    raw_limit = call.query("limit")
    try:
        limit = MAX_LIST_LIMIT if raw_limit is None else int(raw_limit)
    except ValueError:
        raise bad_request(f"Invalid 'limit': expected an integer, but got '{raw_limit}' instead.") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise bad_request(f"Invalid 'limit': expected a value between 1 and {MAX_LIST_LIMIT}.", "limit")
    items = [f for f in files_of(call.sim).values() if purpose is None or f.purpose == purpose]
    if order == "desc":
        items.reverse()
    after = call.query("after")
    if after:
        ids = [f.id for f in items]
        if after not in ids:
            raise bad_request(f"Invalid 'after': no object with id '{after}' in this list.", "after")
        items = items[ids.index(after) + 1 :]
    chosen = items[:limit]
    return {
        "object": "list",
        "data": [f.to_dict() for f in chosen],
        "first_id": chosen[0].id if chosen else None,
        "last_id": chosen[-1].id if chosen else None,
        "has_more": len(items) > limit,
    }


async def retrieve_file(call: Call) -> dict[str, Any]:
    return get_file(call.sim, call.param("file_id")).to_dict()


async def delete_file(call: Call) -> dict[str, Any]:
    f = get_file(call.sim, call.param("file_id"))
    files_of(call.sim).remove(f.id)
    return {"id": f.id, "object": "file", "deleted": True}


async def file_content(call: Call) -> Response:
    f = get_file(call.sim, call.param("file_id"))
    if f.purpose in ("assistants",):
        raise APIError(400, "Not allowed to download files of purpose: assistants.")
    return Response(f.content, media_type="application/octet-stream")


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/files", {"POST": create_file, "GET": list_files}),
        ("/files/{file_id}", {"GET": retrieve_file, "DELETE": delete_file}),
        ("/files/{file_id}/content", {"GET": file_content}),
    ]
