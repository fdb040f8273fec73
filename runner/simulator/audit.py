"""Checking the simulator's own answers against OpenAI's response schemas (`validate_responses`).

With the switch on (or `RUNNER_SIMULATOR_VALIDATE=1`), every JSON body and every server-sent event
the simulator sends is validated against the schema the real API documents for it; violations
are counted, with the first few described, in `stats()["schema_violations"]` /
`["schema_violation_samples"]` (also `GET /_simulator/stats`). Any test — also ones whose traffic
never passes through a test hook, like worker processes — can then assert that nothing the
simulator said was off-spec. The check runs after the answer is built and never changes it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from runner.simulator.schemas import assistant_event_schema, spec
from runner.simulator.stats import Stats


class Audit:
    """Validates answers of one simulator and reports violations to its stats."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def report(self, where: str, problems: list[str]) -> None:
        """One violation per answer or event that does not match, described by its first problem."""
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            self.stats.violation(f"{where}: {problems[0]}{more}")

    def check(self, name: str, obj: Any, where: str) -> None:
        """Validate `obj` against component schema `name`; violations go to the stats."""
        self.report(where, spec().errors(name, obj))

    def check_answer(self, method: str, route: str, status: int, body: bytes) -> None:
        """A JSON answer to `method route` (route without `/v1`): ErrorResponse or the route's schema."""
        where = f"{method} {route} {status}"
        try:
            obj = json.loads(body)
        except ValueError:
            self.report(where, ["the body is not JSON"])
            return
        name = "ErrorResponse" if status >= 400 else spec().answer_schema(method, route)
        if name is None:
            if route != "/responses/{response_id}" or method != "DELETE":  # the spec has no schema
                self.report(where, ["no schema known for this answer"])
            return
        self.check(name, obj, where)

    async def checked_stream(self, method: str, route: str, events: AsyncIterable[Any]) -> AsyncIterator[Any]:
        """Pass a stream through unchanged, validating each event on the way."""
        where = f"{method} {route} stream"
        buffer = b""
        async for chunk in events:
            buffer += chunk if isinstance(chunk, bytes) else str(chunk).encode()
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                self._event(block.decode(), route, where)
            yield chunk

    def _event(self, block: str, route: str, where: str) -> None:
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        text = "\n".join(data)
        if not data or text == "[DONE]":
            return
        where = f"{where} event {event or 'data'}"
        try:
            obj = json.loads(text)
        except ValueError:
            self.report(where, ["the event data is not JSON"])
            return
        if route.startswith("/chat/"):
            error = isinstance(obj, dict) and "error" in obj
            self.check("ErrorResponse" if error else "CreateChatCompletionStreamResponse", obj, where)
        elif event is not None and event.startswith("thread."):
            self._assistant_event(event, obj, where)
        elif event == "error" and isinstance(obj, dict) and "error" in obj:  # Assistants' wrapped error
            self.check("ErrorResponse", obj, where)
        else:
            kind = obj.get("type") if isinstance(obj, dict) else None
            if event is not None and kind != event:
                self.report(where, [f"event name {event!r} but data type {kind!r}"])
            schema = spec().response_event_schema(str(kind))
            if schema is None:
                self.report(where, [f"no schema for Responses event {kind!r}"])
            else:
                self.check(schema, obj, where)

    def _assistant_event(self, event: str, obj: Any, where: str) -> None:
        name = assistant_event_schema(event)
        if name is not None:
            self.check(name, obj, where)
            return
        ok = isinstance(obj, dict) and obj.get("object") == event and isinstance(obj.get("id"), str)
        if not (ok and isinstance(obj.get("delta"), dict)):  # deltas: the shape the SDK relies on (§9)
            self.report(where, [f"malformed delta {obj!r:.200}"])
