"""Server-sent events of a streamed Assistants run (wire-protocol §9), paced by the run's schedule.

The stream stays open while the run is in progress: lifecycle events go out when `advance()`
applies their transition, and the reply's `thread.message.delta`s are spread over the in-progress
time, so a streamed turn costs one request. The stream ends with `done` after a terminal run
event or `thread.run.requires_action` (the client then submits tool outputs on a new stream).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from runner.simulator.core import Simulator, sleep_or_close
from runner.simulator.http import shutdown_error, sse
from runner.simulator.runs import TERMINAL, Run, advance, delta_schedule, next_transition

_END_EVENTS = {f"thread.run.{s}" for s in TERMINAL} | {"thread.run.requires_action"}
IDLE_WAKE_S = 1.0


def _deltas(run: Run, message_id: str) -> deque[tuple[float, str, bytes]]:
    """The message's deltas, each due at its share of the in-progress time."""
    out: deque[tuple[float, str, bytes]] = deque()
    for due, chunk in delta_schedule(run):
        delta = {"index": 0, "type": "text", "text": {"value": chunk}}
        data = {"id": message_id, "object": "thread.message.delta", "delta": {"content": [delta]}}
        out.append((due, chunk, sse("thread.message.delta", data)))
    return out


async def stream_run(
    sim: Simulator, run: Run, start: int, prefix: Iterable[tuple[str, Any]] = ()
) -> AsyncIterator[bytes]:
    """Events of `run` from index `start` of its event log, as they happen, then `done`."""
    for name, data in prefix:
        yield sse(name, data)
    index = start
    pending: deque[tuple[float, str, bytes]] = deque()
    sent = 0  # characters of the current message sent as deltas
    while True:
        advance(sim, run, sim.now())
        events = run.events or []
        while index < len(events):
            name, data = events[index]
            index += 1
            if name in ("thread.message.completed", "thread.message.incomplete"):
                final = sum(len(p["text"]["value"]) for p in data["content"] if p["type"] == "text")
                while pending and sent < final:  # deltas up to what the message holds in the end
                    sent += len(pending[0][1])
                    yield pending.popleft()[2]
                pending.clear()
            yield sse(name, data)
            if name == "thread.message.in_progress":
                pending, sent = _deltas(run, data["id"]), 0
            if name in _END_EVENTS:
                yield sse("done", "[DONE]")
                return
        now = sim.now()
        while pending and pending[0][0] <= now:
            sent += len(pending[0][1])
            yield pending.popleft()[2]
        due = [t for t in (next_transition(run), pending[0][0] if pending else None) if t is not None]
        wait = (min(due) - now) if due else IDLE_WAKE_S
        if not await sleep_or_close(sim, max(0.0, wait), run.wake_event()):
            yield sse("error", shutdown_error().body())  # wrapped {"error": {...}}: the SDK raises it
            return
