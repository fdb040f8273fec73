"""Validate what goes over the wire against OpenAI's own schemas (shared/openai-openapi/openapi.subset.json).

- `validate_against(name, obj)`: check one object against `components/schemas/<name>`.
- `TrafficValidator`: an httpx2 response hook for the openai SDK's client that checks EVERY JSON
  body and EVERY server-sent event the simulator sends, picking the schema from the route (or the
  event name), and collects what does not match. `checked_client()` builds such an SDK client.

Two adjustments to the document, both stated in the shared docs: OpenAPI 3.0's `nullable: true` is
rewritten into JSON Schema (README of openai-openapi), and list envelopes accept `first_id`/`last_id`
null on empty pages (wire-protocol §4, what the real API sends).
"""

from __future__ import annotations

import functools
import json
import os
import re
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from runner.simulator.openapi.reduce import rewrite_nullable  # the one rewrite of `nullable`

_URN = "urn:openai-openapi-subset"


def shared_dir() -> Path:
    """`shared/` next to the repository (…/work/shared), or $RUNNER_SHARED_DIR."""
    here = Path(__file__).resolve().parents[2] / "shared"
    if (here / "openai-openapi").is_dir():
        return here
    env = os.environ.get("RUNNER_SHARED_DIR")
    if env:
        return Path(env)
    raise FileNotFoundError(f"no shared/ dir at {here}; set RUNNER_SHARED_DIR")


def _list_envelopes_allow_null_ids(schemas: dict[str, Any]) -> None:
    for schema in schemas.values():
        props = schema.get("properties") if isinstance(schema, dict) else None
        if props and {"first_id", "last_id", "has_more", "data"} <= set(props):
            for key in ("first_id", "last_id"):
                props[key] = {"anyOf": [props[key], {"type": "null"}]}


class OpenAPISchema:
    """The subset document, ready to validate against any of its component schemas."""

    def __init__(self, path: Path | None = None) -> None:
        path = path or shared_dir() / "openai-openapi" / "openapi.subset.json"
        doc = rewrite_nullable(json.loads(path.read_text(encoding="utf-8")))
        _list_envelopes_allow_null_ids(doc["components"]["schemas"])
        self.schemas: dict[str, Any] = doc["components"]["schemas"]
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_URN, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    def validator(self, name: str) -> Draft202012Validator:
        if name not in self.schemas:
            raise KeyError(f"no schema {name!r} in the OpenAPI subset")
        if name not in self._validators:
            ref = {"$ref": f"{_URN}#/components/schemas/{name}"}
            self._validators[name] = Draft202012Validator(ref, registry=self._registry)
        return self._validators[name]

    def errors(self, name: str, obj: Any) -> list[str]:
        found = sorted(self.validator(name).iter_errors(obj), key=lambda e: list(e.absolute_path))
        return [f"{name} at /{'/'.join(str(p) for p in e.absolute_path)}: {e.message[:300]}" for e in found]

    def validate(self, name: str, obj: Any) -> None:
        problems = self.errors(name, obj)
        if problems:
            raise AssertionError("\n".join(problems))


@functools.cache
def load_schema() -> OpenAPISchema:
    return OpenAPISchema()


def validate_against(schema_name: str, obj: Any) -> None:
    """Raise AssertionError listing every way `obj` differs from `components/schemas/<schema_name>`."""
    load_schema().validate(schema_name, obj)


# -- which schema a response must match ---------------------------------------------------------
_ID = r"[^/]+"
RESPONSE_SCHEMAS: list[tuple[str, str, str]] = [
    ("POST", r"/assistants", "AssistantObject"),
    ("GET", r"/assistants", "ListAssistantsResponse"),
    ("GET|POST", rf"/assistants/{_ID}", "AssistantObject"),
    ("DELETE", rf"/assistants/{_ID}", "DeleteAssistantResponse"),
    ("POST", r"/threads/runs", "RunObject"),
    ("POST", r"/threads", "ThreadObject"),
    ("GET|POST", rf"/threads/{_ID}", "ThreadObject"),
    ("DELETE", rf"/threads/{_ID}", "DeleteThreadResponse"),
    ("GET", rf"/threads/{_ID}/messages", "ListMessagesResponse"),
    ("POST", rf"/threads/{_ID}/messages", "MessageObject"),
    ("GET|POST", rf"/threads/{_ID}/messages/{_ID}", "MessageObject"),
    ("DELETE", rf"/threads/{_ID}/messages/{_ID}", "DeleteMessageResponse"),
    ("GET", rf"/threads/{_ID}/runs", "ListRunsResponse"),
    ("POST", rf"/threads/{_ID}/runs", "RunObject"),
    ("GET|POST", rf"/threads/{_ID}/runs/{_ID}", "RunObject"),
    ("POST", rf"/threads/{_ID}/runs/{_ID}/(cancel|submit_tool_outputs)", "RunObject"),
    ("GET", rf"/threads/{_ID}/runs/{_ID}/steps", "ListRunStepsResponse"),
    ("GET", rf"/threads/{_ID}/runs/{_ID}/steps/{_ID}", "RunStepObject"),
    ("POST", r"/conversations", "ConversationResource"),
    ("GET|POST", rf"/conversations/{_ID}", "ConversationResource"),
    ("DELETE", rf"/conversations/{_ID}", "DeletedConversationResource"),
    ("GET|POST", rf"/conversations/{_ID}/items", "ConversationItemList"),
    ("GET", rf"/conversations/{_ID}/items/{_ID}", "ConversationItem"),
    ("DELETE", rf"/conversations/{_ID}/items/{_ID}", "ConversationResource"),
    ("POST", r"/responses", "Response"),
    ("GET", rf"/responses/{_ID}", "Response"),
    ("DELETE", rf"/responses/{_ID}", ""),  # the spec documents a bare 200 without a body schema
    ("POST", rf"/responses/{_ID}/cancel", "Response"),
    ("GET", rf"/responses/{_ID}/input_items", "ResponseItemList"),
    ("POST", r"/chat/completions", "CreateChatCompletionResponse"),
    ("GET", r"/models", "ListModelsResponse"),
    ("GET", rf"/models/{_ID}", "Model"),
    ("POST", r"/files", "OpenAIFile"),
    ("GET", r"/files", "ListFilesResponse"),
    ("GET", rf"/files/{_ID}", "OpenAIFile"),
    ("DELETE", rf"/files/{_ID}", "DeleteFileResponse"),
    ("GET", rf"/files/{_ID}/content", ""),  # the file's bytes (the spec says only "string")
    ("POST", r"/batches", "Batch"),
    ("GET", r"/batches", "ListBatchesResponse"),
    ("GET", rf"/batches/{_ID}", "Batch"),
    ("POST", rf"/batches/{_ID}/cancel", "Batch"),
    ("POST", r"/embeddings", "CreateEmbeddingResponse"),  # float vectors (base64 sends strings)
]
_COMPILED = [(set(m.split("|")), re.compile(rf"^{p}$"), s) for m, p, s in RESPONSE_SCHEMAS]

RESPONSE_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.queued": "ResponseQueuedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.failed": "ResponseFailedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "error": "ResponseErrorEvent",
}


def schema_for(method: str, path: str) -> str | None:
    """The schema of a successful answer to `method path` (path under /v1)."""
    for methods, pattern, schema in _COMPILED:
        if method in methods and pattern.match(path):
            return schema
    return None


def assistant_event_schema(event: str) -> str | None:
    """The schema of an Assistants stream event's data (None: a delta, checked by hand)."""
    if event.endswith(".delta"):
        return None
    if event == "thread.created":
        return "ThreadObject"
    if event.startswith("thread.run.step."):
        return "RunStepObject"
    if event.startswith("thread.run."):
        return "RunObject"
    if event.startswith("thread.message."):
        return "MessageObject"
    if event == "error":
        return "ErrorResponse"
    raise AssertionError(f"unknown assistants stream event {event!r}")


def _check_delta(event: str, data: Any) -> list[str]:
    """Deltas have no schema in the subset: check the shape the SDK relies on (§9)."""
    ok = isinstance(data, dict) and data.get("object") == event and isinstance(data.get("id"), str)
    ok = ok and isinstance(data.get("delta"), dict)
    return [] if ok else [f"{event}: malformed delta {data!r:.200}"]


class _SSEParser:
    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, str]]:
        self.buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            event, data = None, []
            for line in block.decode().split("\n"):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
            if data:
                yield event, "\n".join(data)


class _TeeStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any, on_bytes: Any) -> None:
        self.inner = inner
        self.on_bytes = on_bytes

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.on_bytes(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class TrafficValidator:
    """An httpx2 response hook validating every body and stream event against the OpenAPI subset."""

    def __init__(self, schema: OpenAPISchema | None = None) -> None:
        self.schema = schema or load_schema()
        self.checked: Counter[str] = Counter()
        self.errors: list[str] = []
        self.unknown: list[str] = []

    def check(self, name: str, obj: Any, where: str) -> None:
        self.checked[name] += 1
        self.errors.extend(f"{where}: {e}" for e in self.schema.errors(name, obj))

    def __call__(self, response: httpx2.Response) -> None:
        request = response.request
        path = request.url.path.split("/v1", 1)[-1]
        where = f"{request.method} {path} {response.status_code}"
        ctype = response.headers.get("content-type", "")
        if ctype.startswith("text/event-stream"):
            parser = _SSEParser()
            chat = path.startswith("/chat/")
            response.stream = _TeeStream(
                response.stream,
                lambda b: [self._event(e, d, chat, where) for e, d in parser.feed(b)],
            )
            return
        response.read()
        if response.status_code == 200 and schema_for(request.method, path) == "" and "/files/" in path:
            self.checked["(file content)"] += 1
            return
        if not ctype.startswith("application/json"):
            self.errors.append(f"{where}: content-type {ctype!r} is not JSON")
            return
        body = json.loads(response.content)
        if response.status_code >= 400:
            self.check("ErrorResponse", body, where)
            return
        name = schema_for(request.method, path)
        if name is None:
            self.unknown.append(where)
        elif name == "":
            self.checked["(no schema in the spec)"] += 1
        else:
            self.check(name, body, where)

    def _event(self, event: str | None, data: str, chat: bool, where: str) -> None:
        where = f"{where} event {event or 'data'}"
        if data == "[DONE]":
            self.checked["[DONE]"] += 1
            return
        obj = json.loads(data)
        if isinstance(obj, dict) and "error" in obj and (chat or event == "error"):
            self.check("ErrorResponse", obj, where)
        elif chat:
            self.check("CreateChatCompletionStreamResponse", obj, where)
        elif event is not None and event.startswith("thread."):
            name = assistant_event_schema(event)
            if name is None:
                self.checked["delta"] += 1
                self.errors.extend(_check_delta(event, obj))
            else:
                self.check(name, obj, where)
        else:
            kind = obj.get("type") if isinstance(obj, dict) else None
            if kind != event:
                self.errors.append(f"{where}: event name {event!r} but data type {kind!r}")
            name = RESPONSE_EVENT_SCHEMAS.get(str(kind))
            if name is None:
                self.unknown.append(where)
            else:
                self.check(name, obj, where)

    def assert_clean(self) -> None:
        problems = self.errors + [f"no schema known for {u}" for u in self.unknown]
        assert not problems, "responses that do not match the OpenAPI schemas:\n" + "\n".join(problems[:30])


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for all test clients: building one per client costs ~0.2 s (unused on http://)."""
    return ssl.create_default_context()


def checked_client(
    base_url: str, api_key: str = "sk-test", validator: TrafficValidator | None = None, **kwargs: Any
) -> tuple[openai.OpenAI, TrafficValidator]:
    """A real SDK client (max_retries=0 unless given) whose every response is schema-checked."""
    validator = validator or TrafficValidator()
    http = httpx2.Client(event_hooks={"response": [validator]}, timeout=30, verify=_tls_context())
    kwargs.setdefault("max_retries", 0)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, http_client=http, **kwargs)
    return client, validator
