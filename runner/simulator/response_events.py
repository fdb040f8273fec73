"""The Responses API event stream of one response, as a fixed timeline of numbered events.

Every event has its sequence number and the moment it is due (spread over the response's
latency), decided when the response is created. A live stream sends them as they fall due; a
background response can be streamed again from any point (`GET /v1/responses/{id}?stream=true
&starting_after=N` sends the events after N: the past ones at once, the rest when due), which is
how clients resume a stream whose connection broke. The lifecycle events carry the response as it
is when they are sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.simulator.core import Simulator, sleep_or_close
from runner.simulator.http import shutdown_error, sse
from runner.simulator.replies import chunk_text

if TYPE_CHECKING:
    from runner.simulator.responses import ResponseRun

Built = tuple[str, dict[str, Any]] | None


@dataclass(frozen=True)
class Event:
    due: float
    build: Callable[[], Built]  # (type, fields) when sent; None ends the stream


def _static(kind: str, **data: Any) -> Callable[[], Built]:
    return lambda: (kind, data)


def _short_logprobs(logprobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`ResponseLogProb` of a delta: token, logprob and the alternatives' tokens and logprobs."""
    return [
        {
            "token": lp["token"],
            "logprob": lp["logprob"],
            "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in lp["top_logprobs"]],
        }
        for lp in logprobs
    ]


def timeline(resp: ResponseRun) -> list[Event]:
    """Every event of `resp`'s stream, in order (the index is the sequence number)."""
    start, done = resp.start_at, resp.done_at
    background = resp.request["background"]
    events = [
        Event(
            resp.created,
            lambda: (
                "response.created",
                {"response": resp.to_dict("queued" if background else "in_progress")},
            ),
        ),
    ]
    if background:
        events.append(Event(resp.created, lambda: ("response.queued", {"response": resp.to_dict("queued")})))
    events.append(Event(start, lambda: ("response.in_progress", {"response": resp.to_dict("in_progress")})))
    if not (resp.fails or resp.plan.kind == "fail"):
        for index, item in enumerate(resp.output):
            events += _item_events(resp, index, item, start, done)
    events.append(Event(done, lambda: _terminal(resp, done)))
    return events


def _item_events(
    resp: ResponseRun, index: int, item: dict[str, Any], start: float, done: float
) -> list[Event]:
    if item["type"] == "function_call":
        common = {"item_id": item["id"], "output_index": index}
        return [
            Event(
                start,
                _static(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "status": "in_progress", "arguments": ""},
                ),
            ),
            Event(done, _static("response.function_call_arguments.delta", **common, delta=item["arguments"])),
            Event(
                done,
                _static(
                    "response.function_call_arguments.done",
                    **common,
                    name=item["name"],
                    arguments=item["arguments"],
                ),
            ),
            Event(done, _static("response.output_item.done", output_index=index, item=item)),
        ]
    part = item["content"][0]
    common = {"item_id": item["id"], "output_index": index, "content_index": 0}
    out = [
        Event(
            start,
            _static(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            ),
        ),
        Event(
            start, _static("response.content_part.added", **common, part={**part, "text": "", "logprobs": []})
        ),
    ]
    chunks = chunk_text(part["text"])
    logprobs = _short_logprobs(part["logprobs"])
    used = 0
    last = start
    for i, chunk in enumerate(chunks):
        last = start + (done - start) * (i + 1) / (len(chunks) + 1)
        mine, length = [], 0
        while used < len(logprobs) and length < len(chunk):  # the tokens of this chunk
            length += len(logprobs[used]["token"])
            mine.append(logprobs[used])
            used += 1
        out.append(Event(last, _static("response.output_text.delta", **common, delta=chunk, logprobs=mine)))
    out += [
        Event(last, _static("response.output_text.done", **common, text=part["text"], logprobs=logprobs)),
        Event(last, _static("response.content_part.done", **common, part=part)),
        Event(last, _static("response.output_item.done", output_index=index, item=item)),
    ]
    return out


def _terminal(resp: ResponseRun, done: float) -> Built:
    resp.advance(done)
    if resp.status in ("completed", "incomplete", "failed"):
        return (f"response.{resp.status}", {"response": resp.to_dict()})
    return None  # a cancelled background response: its stream just ends


async def stream_events(sim: Simulator, resp: ResponseRun, after: int = -1) -> AsyncIterator[bytes]:
    """The events of `resp` with a sequence number above `after`, each when it is due."""
    for seq, event in enumerate(timeline(resp)):
        if seq <= after:
            continue
        if not await sleep_or_close(sim, event.due - sim.now()):
            err = shutdown_error()  # the Responses stream's own error event (ResponseErrorEvent)
            payload = {"type": "error", "code": err.type, "message": err.message, "param": None}
            yield sse("error", {**payload, "sequence_number": seq})
            return
        if resp.status == "cancelled":
            return
        built = event.build()
        if built is None:
            return
        kind, data = built
        yield sse(kind, {"type": kind, **data, "sequence_number": seq})
