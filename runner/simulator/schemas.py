"""OpenAI's own request and answer schemas, loaded once and compiled lazily.

The schemas ship inside the package (`openapi/openapi.json`, cut from OpenAI's MIT-licensed
OpenAPI description by `openapi/reduce.py`), so the simulator needs nothing outside the repo. The
file is read on the first request that needs it and each validator is compiled the first time its
schema is used; both are then kept for the life of the process.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_FILE = Path(__file__).with_name("openapi") / "openapi.json"
_URN = "urn:openai-openapi"
_COMPONENTS = "#/components/schemas/"

ASSISTANT_EVENT_DELTAS = frozenset({"thread.message.delta", "thread.run.step.delta"})
"""Assistants stream deltas have no schema in OpenAI's document; their shape is checked by hand."""


class Spec:
    """The cut OpenAPI document: which schema each route takes and answers, and their validators."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.schemas: dict[str, Any] = doc["components"]["schemas"]
        self.requests: dict[str, str] = doc["x-simulator"]["requests"]
        self.answers: dict[str, str] = doc["x-simulator"]["responses"]
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_URN, resource)
        self._validators: dict[str, Draft202012Validator] = {}
        self._properties: dict[str, frozenset[str] | None] = {}
        self._events: dict[str, str] | None = None

    def validator(self, name: str) -> Draft202012Validator:
        found = self._validators.get(name)
        if found is None:
            if name not in self.schemas:
                raise KeyError(f"no schema {name!r} in the simulator's OpenAPI document")
            # `$ref`s are inlined first: resolving one per descent is a third of validation time.
            inlined = _Inliner(self.schemas).inline({"$ref": f"{_COMPONENTS}{name}"}, ())
            found = Draft202012Validator(inlined, registry=self._registry)
            self._validators[name] = found
        return found

    def iter_errors(self, name: str, obj: Any) -> Iterator[ValidationError]:
        return self.validator(name).iter_errors(obj)

    def errors(self, name: str, obj: Any) -> list[str]:
        """Every way `obj` differs from schema `name`, one line each (for reports, not for clients)."""
        found = sorted(self.iter_errors(name, obj), key=lambda e: [str(p) for p in e.absolute_path])
        return [f"{name} at /{'/'.join(str(p) for p in e.absolute_path)}: {e.message[:300]}" for e in found]

    def request_schema(self, method: str, route: str) -> str | None:
        """The body schema of `method route` (route as the spec writes it, without `/v1`)."""
        return self.requests.get(f"{method} {route}")

    def answer_schema(self, method: str, route: str) -> str | None:
        return self.answers.get(f"{method} {route}")

    def properties(self, name: str) -> frozenset[str] | None:
        """Top-level property names schema `name` allows (through $ref, allOf, anyOf); None: any."""
        if name not in self._properties:
            self._properties[name] = self._collect(self.schemas[name], set())
        return self._properties[name]

    def _collect(self, schema: Any, seen: set[str]) -> frozenset[str] | None:
        if not isinstance(schema, dict):
            return frozenset()
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[1]
            if name in seen:
                return frozenset()
            return self._collect(self.schemas[name], seen | {name})
        names: set[str] = set(schema.get("properties") or ())
        if schema.get("additionalProperties") not in (None, False) or "patternProperties" in schema:
            return None
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(key) or ():
                more = self._collect(sub, seen)
                if more is None:
                    return None
                names |= more
        return frozenset(names)

    def response_event_schema(self, kind: str) -> str | None:
        """The schema of a Responses stream event by its `type` (from `ResponseStreamEvent`)."""
        if self._events is None:
            events: dict[str, str] = {}
            for branch in self.schemas["ResponseStreamEvent"].get("anyOf", []):
                name = branch["$ref"].rsplit("/", 1)[1]
                enum = self.schemas[name].get("properties", {}).get("type", {}).get("enum") or []
                for value in enum:
                    events[value] = name
            events.setdefault("error", "ResponseErrorEvent")
            self._events = events
        return self._events.get(kind)


class _Inliner:
    """Replace `#/components/schemas/X` references by the schemas themselves (shared, not copied).

    A reference back into a schema being inlined (recursion) stays a reference, made absolute so
    the registry resolves it.
    """

    def __init__(self, schemas: dict[str, Any]) -> None:
        self.schemas = schemas
        self.done: dict[str, Any] = {}  # names inlined without cutting a recursion

    def inline(self, node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [self.inline(x, stack) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_COMPONENTS):
            name = ref[len(_COMPONENTS) :]
            rest = {k: self.inline(v, stack) for k, v in node.items() if k != "$ref"}
            if name in stack:
                return {**rest, "$ref": f"{_URN}{ref}"}
            target = self.done.get(name)
            if target is None:
                target = self.inline(self.schemas[name], (*stack, name))
                if not _has_ref(target):
                    self.done[name] = target
            return {**rest, "allOf": [target]} if rest else target
        return {k: self.inline(v, stack) for k, v in node.items()}


def _has_ref(node: Any) -> bool:
    if isinstance(node, dict):
        return "$ref" in node or any(_has_ref(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_ref(v) for v in node)
    return False


def assistant_event_schema(event: str) -> str | None:
    """The schema of an Assistants stream event's data (None: a delta or `done`)."""
    if event in ASSISTANT_EVENT_DELTAS or event == "done":
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
    return None


@functools.cache
def spec() -> Spec:
    """The document, read on first use (about 160 kB; a few milliseconds)."""
    return Spec(json.loads(SPEC_FILE.read_text(encoding="utf-8")))
