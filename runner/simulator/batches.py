"""The Batch API (`/v1/batches`): create, retrieve, list, cancel, on a compressed clock.

A batch reads its input file (uploaded with purpose `batch`) and checks every line when created:
a JSON object with a unique `custom_id`, `method: POST`, the batch's `url` and a `body` naming the
same model as every other line. A file with bad lines fails the batch at `validating`, listing
them in `errors` (as OpenAI does). Otherwise each line is answered by the simulator's own route
(`chat.create_chat_completion` or `responses.create_response`: the same replies, rules and
validation as a direct request), outside the per-minute limits, like OpenAI's separate batch pool.

Statuses follow the real lifecycle, computed lazily from timestamps like runs are, with
L = `batch_latency_s`:

    validating   [0, 0.1 L)        failed here when lines are bad
    in_progress  [0.1 L, 0.8 L)    and until every line has been answered
    finalizing   0.2 L             then completed: output file (200s) and error file (the rest)
    expired      at expires_at (created + BATCH_WINDOW_FACTOR × L) for a share of batches
                 (`batch_expire_rate`): half the lines answered, the others `batch_expired`
    cancelling → cancelled         what was answered is in the output file

`batch_fault_rate` turns a share of lines into 500 `server_error` lines of the error file.
"""

from __future__ import annotations

import asyncio
import json
import random
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runner.simulator import validation as v
from runner.simulator.chat import create_chat_completion
from runner.simulator.config import BATCH_WINDOW_FACTOR
from runner.simulator.core import CANCEL_DELAY_S, Simulator, Table
from runner.simulator.files import add_file, get_file
from runner.simulator.http import SERVER_ERROR_MESSAGE, APIError, Call, bad_request, dumps, not_found
from runner.simulator.pagination import page
from runner.simulator.responses import create_response

ENDPOINTS: dict[str, Callable[[Call], Awaitable[Any]]] = {
    "/v1/chat/completions": create_chat_completion,
    "/v1/responses": create_response,
}
MAX_LINES = 50_000
LINE_CONCURRENCY = 256
"""Lines of one batch answered at once (each takes the configured latency)."""
VALIDATING, RUNNING, FINALIZING = 0.1, 0.8, 0.2
"""Shares of `batch_latency_s` spent validating, in progress (at least) and finalizing."""
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_LINE_KEYS = {"custom_id", "method", "url", "body"}
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


class _LineCall(Call):
    """A batch line seen by a route: its body given, outside the per-minute limits."""

    def charge(self, tokens: int, model: str) -> None:
        return None


@dataclass(eq=False)
class SimBatch:
    id: str
    created: float
    endpoint: str
    input_file_id: str
    metadata: dict[str, str]
    latency: float
    window: float
    lines: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    model: str | None
    expiring: bool
    status: str = "validating"
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # line index -> output line
    ok: set[int] = field(default_factory=set)
    answered_at: float | None = None  # when every line to be answered was
    task: asyncio.Task[None] | None = None
    stamps: dict[str, int] = field(default_factory=dict)  # in_progress_at, finalizing_at, ...
    cancel_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def expires_at(self) -> float:
        return self.created + self.window

    def advance(self, sim: Simulator, now: float) -> SimBatch:
        c, L = self.created, self.latency
        if self.status == "validating" and now >= c + VALIDATING * L:
            if self.errors:
                self._end("failed", c + VALIDATING * L)
                return self
            self.status = "in_progress"
            self.stamps["in_progress_at"] = int(c + VALIDATING * L)
        if (
            self.status == "cancelling"
            and self.cancel_at is not None
            and now >= self.cancel_at + CANCEL_DELAY_S
        ):
            self._stop_task()
            self._write_files(sim, self.cancel_at + CANCEL_DELAY_S)
            self._end("cancelled", self.cancel_at + CANCEL_DELAY_S)
        if self.status == "in_progress":
            if self.expiring and now >= self.expires_at:
                self._stop_task()
                for i, line in enumerate(self.lines):
                    if i not in self.results:
                        self.results[i] = _error_line(sim, line, None, "batch_expired", EXPIRED_MESSAGE)
                self._write_files(sim, self.expires_at)
                self._end("expired", self.expires_at)
            elif self.answered_at is not None and not self.expiring:
                at = max(c + RUNNING * L, self.answered_at)
                if now >= at:
                    self.status = "finalizing"
                    self.stamps["finalizing_at"] = int(at)
        if self.status == "finalizing":
            at = max(c + RUNNING * L, self.answered_at or c) + FINALIZING * L
            if now >= at:
                self._write_files(sim, at)
                self._end("completed", at)
        return self

    def _end(self, status: str, at: float) -> None:
        self.status = status
        self.stamps[f"{status}_at"] = int(at)

    def _stop_task(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _write_files(self, sim: Simulator, at: float) -> None:
        done = sorted(self.results)
        good = [self.results[i] for i in done if i in self.ok]
        bad = [self.results[i] for i in done if i not in self.ok]
        if good:
            self.output_file_id = add_file(
                sim, f"{self.id}_output.jsonl", "batch_output", _jsonl(good), at
            ).id
        if bad:
            self.error_file_id = add_file(sim, f"{self.id}_error.jsonl", "batch_output", _jsonl(bad), at).id

    def counts(self) -> dict[str, int]:
        if self.status in ("validating", "failed"):
            return {"total": 0, "completed": 0, "failed": 0}
        completed = len(self.ok)
        return {"total": len(self.lines), "completed": completed, "failed": len(self.results) - completed}

    def usage(self) -> dict[str, Any]:
        inp = out = 0
        for i in self.ok:
            u = self.results[i]["response"]["body"].get("usage") or {}
            inp += int(u.get("prompt_tokens", u.get("input_tokens", 0)) or 0)
            out += int(u.get("completion_tokens", u.get("output_tokens", 0)) or 0)
        return {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out,
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "created_at": int(self.created),
            "expires_at": int(self.expires_at),
            "request_counts": self.counts(),
            "metadata": self.metadata,
        }
        if self.model is not None:
            out["model"] = self.model
        if self.errors:
            out["errors"] = {"object": "list", "data": self.errors}
        if self.cancel_at is not None:
            out["cancelling_at"] = int(self.cancel_at)
        out.update(self.stamps)
        if self.output_file_id:
            out["output_file_id"] = self.output_file_id
        if self.error_file_id:
            out["error_file_id"] = self.error_file_id
        if self.status in _TERMINAL and self.status != "failed":
            out["usage"] = self.usage()
        return out


_tables: weakref.WeakKeyDictionary[Simulator, Table[SimBatch]] = weakref.WeakKeyDictionary()
_rngs: weakref.WeakKeyDictionary[Simulator, random.Random] = weakref.WeakKeyDictionary()


def batches_of(sim: Simulator) -> Table[SimBatch]:
    table = _tables.get(sim)
    if table is None:
        table = _tables[sim] = Table()
    return table


def _rng(sim: Simulator) -> random.Random:
    """Seeded draws of batch faults, apart from request and run faults (adding batches changes neither)."""
    rng = _rngs.get(sim)
    if rng is None:
        rng = _rngs[sim] = random.Random(f"{sim.config.seed}:batches")
    return rng


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(dumps(line) + b"\n" for line in lines)


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def validate_lines(
    content: bytes, endpoint: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """The input file's lines, the errors that fail the batch (line numbers from 1), the model."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return [], [_error("invalid_file_format", "The input file is not UTF-8 text.", None)], None
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append(_error("invalid_json_line", "This line is not parseable as valid JSON.", n))
            continue
        if not isinstance(line, dict):
            errors.append(_error("invalid_json_line", "Each line must be a JSON object.", n))
            continue
        missing = [k for k in ("custom_id", "method", "url", "body") if k not in line]
        extra = sorted(set(line) - _LINE_KEYS)
        body = line.get("body")
        if missing:
            errors.append(
                _error(
                    "missing_required_parameter",
                    f"Missing required parameter: '{missing[0]}'.",
                    n,
                    missing[0],
                )
            )
        elif extra:
            errors.append(
                _error("invalid_request", f"Unrecognized request argument supplied: {extra[0]}", n, extra[0])
            )
        elif not isinstance(line["custom_id"], str) or not line["custom_id"]:
            errors.append(
                _error("invalid_custom_id", "'custom_id' must be a non-empty string.", n, "custom_id")
            )
        elif line["custom_id"] in seen:
            errors.append(
                _error(
                    "duplicate_custom_id",
                    f"The custom_id '{line['custom_id']}' is used more than once.",
                    n,
                    "custom_id",
                )
            )
        elif line["method"] != "POST":
            errors.append(_error("invalid_method", "The method must be 'POST'.", n, "method"))
        elif line["url"] != endpoint:
            errors.append(
                _error("invalid_url", f"The url must be the batch's endpoint '{endpoint}'.", n, "url")
            )
        elif not isinstance(body, dict):
            errors.append(_error("invalid_request", "'body' must be a JSON object.", n, "body"))
        elif not isinstance(body.get("model"), str):
            errors.append(
                _error(
                    "missing_required_parameter", "Missing required parameter: 'body.model'.", n, "body.model"
                )
            )
        elif body.get("stream") or body.get("background"):
            key = "stream" if body.get("stream") else "background"
            errors.append(
                _error("invalid_request", f"'{key}' is not supported in a batch.", n, f"body.{key}")
            )
        elif model is not None and body["model"] != model:
            errors.append(
                _error(
                    "mismatched_model", "Every request in a batch must use the same model.", n, "body.model"
                )
            )
        else:
            seen.add(line["custom_id"])
            model = model or body["model"]
            lines.append(line)
    if not lines and not errors:
        errors.append(_error("empty_file", "The input file is empty.", None))
    if len(lines) > MAX_LINES:
        errors.append(_error("too_many_requests", f"A batch holds at most {MAX_LINES} requests.", None))
    return lines, errors, model


def _error_line(
    sim: Simulator,
    line: dict[str, Any],
    response: dict[str, Any] | None,
    code: str | None = None,
    message: str = "",
) -> dict[str, Any]:
    return {
        "id": sim.new_id("batch_req_"),
        "custom_id": line["custom_id"],
        "response": response,
        "error": None if code is None else {"code": code, "message": message},
    }


async def _answer(sim: Simulator, batch: SimBatch, key: str, call: Call) -> None:
    """Answer every line through the route it names (the task of one batch)."""
    handler = ENDPOINTS[batch.endpoint]
    rng = _rng(sim)
    limit = asyncio.Semaphore(LINE_CONCURRENCY)

    async def one(i: int, line: dict[str, Any]) -> None:
        async with limit:
            if rng.random() < sim.config.batch_fault_rate:
                err = APIError(500, SERVER_ERROR_MESSAGE, "server_error")
                response = {"status_code": 500, "request_id": sim.request_id(), "body": err.body()}
                batch.results[i] = _error_line(sim, line, response)
                return
            line_call = _LineCall(sim, call.request, key, sim.now(), {}, dict(line["body"]))
            try:
                body = await handler(line_call)
                status = 200
            except APIError as e:
                body, status = e.body(), e.status
            response = {"status_code": status, "request_id": sim.request_id(), "body": body}
            batch.results[i] = {
                "id": sim.new_id("batch_req_"),
                "custom_id": line["custom_id"],
                "response": response,
                "error": None,
            }
            if status == 200:
                batch.ok.add(i)

    todo = list(enumerate(batch.lines))
    if batch.expiring:  # an expiring batch gets through half its lines before its window closes
        todo = todo[: len(todo) // 2]
    await asyncio.sleep(max(0.0, batch.created + VALIDATING * batch.latency - sim.now()))
    await asyncio.gather(*(one(i, line) for i, line in todo))
    batch.answered_at = sim.now()


async def create_batch(call: Call) -> dict[str, Any]:
    sim = call.sim
    body = await call.body()
    file_id = v.required(body, "input_file_id")
    endpoint = v.required(body, "endpoint")
    window = v.required(body, "completion_window")
    if window != "24h":
        raise bad_request(
            f"Invalid value for 'completion_window': '{window}'. Supported values are: '24h'.",
            "completion_window",
        )
    if endpoint not in ENDPOINTS:
        raise bad_request(
            f"Invalid value for 'endpoint': '{endpoint}'. This server supports: "
            + ", ".join(f"'{e}'" for e in ENDPOINTS)
            + ".",
            "endpoint",
        )
    metadata = v.metadata(body.get("metadata"))
    source = get_file(sim, str(file_id))
    if source.purpose != "batch":
        raise bad_request(
            f"File {file_id} has purpose '{source.purpose}'; a batch needs purpose 'batch'.", "input_file_id"
        )
    lines, errors, model = validate_lines(source.content, endpoint)
    latency = sim.config.batch_latency_s
    expiring = not errors and _rng(sim).random() < sim.config.batch_expire_rate
    batch = SimBatch(
        sim.new_id("batch_"),
        call.now,
        endpoint,
        source.id,
        metadata,
        latency,
        max(BATCH_WINDOW_FACTOR * latency, 1.0),
        lines,
        errors,
        model,
        expiring,
    )
    batches_of(sim).add(batch.id, batch)
    if not errors:
        batch.task = asyncio.get_running_loop().create_task(_answer(sim, batch, call.key, call))
    return batch.to_dict()


def _batch(call: Call) -> SimBatch:
    bid = call.param("batch_id")
    batch = batches_of(call.sim).get(bid)
    if batch is None:
        raise not_found("batch", bid)
    return batch.advance(call.sim, call.now)


async def retrieve_batch(call: Call) -> dict[str, Any]:
    return _batch(call).to_dict()


async def list_batches(call: Call) -> dict[str, Any]:
    items = [b.advance(call.sim, call.now) for b in batches_of(call.sim).values()]
    return page(call, items, lambda b: b.id, lambda b: b.to_dict())


async def cancel_batch(call: Call) -> dict[str, Any]:
    batch = _batch(call)
    if batch.status not in ("validating", "in_progress", "finalizing"):
        raise bad_request(f"Cannot cancel a batch with status '{batch.status}'.")
    batch.status = "cancelling"
    batch.cancel_at = call.now
    return batch.to_dict()


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/batches", {"POST": create_batch, "GET": list_batches}),
        ("/batches/{batch_id}", {"GET": retrieve_batch}),
        ("/batches/{batch_id}/cancel", {"POST": cancel_batch}),
    ]
