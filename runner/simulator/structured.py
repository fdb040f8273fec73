"""Structured outputs: replies that are JSON valid against the schema the client asked for.

Chat's `response_format: {type: json_schema, json_schema: {schema}}`, the Responses API's
`text.format: {type: json_schema, schema}`, and the Assistants `response_format` all promise
JSON matching the schema (json_object: any JSON object). A rule's reply is used when it already
is such JSON; otherwise a value is synthesised from the schema by a small deterministic generator
(objects, arrays, strings, numbers, integers, booleans, null, enum, const, required, anyOf/oneOf,
allOf, local `$ref`s — what pydantic's `model_json_schema()` emits), with the reply text in its
strings, so `client.chat.completions.parse(..., response_format=Model)` gets a valid `Model`.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

MAX_DEPTH = 8
"""Deeper (recursive) schemas end in the smallest value their type allows."""


def requested(response_format: Any) -> tuple[str, dict[str, Any] | None] | None:
    """("json_schema", schema) or ("json_object", None) from any API's format field; None: text."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return ("json_object", None)
    if kind != "json_schema":
        return None
    inner = response_format.get("json_schema")  # chat and assistants nest it; responses do not
    holder = inner if isinstance(inner, dict) else response_format
    schema = holder.get("schema")
    return ("json_schema", schema if isinstance(schema, dict) else {"type": "object"})


def shape_reply(text: str, response_format: Any) -> str:
    """`text` if it satisfies the requested format, else JSON synthesised from the schema."""
    want = requested(response_format)
    if want is None:
        return text
    kind, schema = want
    try:
        parsed = json.loads(text)
        is_json = True
    except ValueError:
        parsed, is_json = None, False
    if kind == "json_object":
        return text if is_json and isinstance(parsed, dict) else json.dumps({"reply": text})
    assert schema is not None
    if is_json and _valid(schema, parsed):
        return text
    return json.dumps(synthesize(schema, text), separators=(",", ":"), ensure_ascii=False)


def fits(text: str, schema: dict[str, Any]) -> bool:
    """`text` is JSON valid against `schema`."""
    try:
        return _valid(schema, json.loads(text))
    except ValueError:
        return False


def _valid(schema: dict[str, Any], value: Any) -> bool:
    try:
        return bool(Draft202012Validator(schema).is_valid(value))
    except Exception:  # a schema the validator cannot use: synthesise instead
        return False


def synthesize(schema: dict[str, Any], text: str = "") -> Any:
    """A value valid against `schema`, deterministic for the same schema and text."""
    return _Generator(schema, text).value(schema, 0)


class _Generator:
    def __init__(self, root: dict[str, Any], text: str) -> None:
        self.root = root
        self.text = text

    def _resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.root
        if ref.startswith("#"):
            for part in ref.lstrip("#").strip("/").split("/"):
                if part:
                    node = (
                        node.get(part.replace("~1", "/").replace("~0", "~"), {})
                        if isinstance(node, dict)
                        else {}
                    )
        return node if isinstance(node, dict) else {}

    def value(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict):
            return None
        if "$ref" in schema:
            merged = {**self._resolve(schema["$ref"]), **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.value(merged, depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if branches:
                chosen = next((b for b in branches if not _is_null(b)), branches[0])
                return self.value({**_without(schema, key), **chosen}, depth + 1)
        if schema.get("allOf"):
            out: Any = None
            for part in schema["allOf"]:
                v = self.value({**_without(schema, "allOf"), **part}, depth + 1)
                out = {**out, **v} if isinstance(out, dict) and isinstance(v, dict) else v
            return out
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        return getattr(self, f"_{kind}", self._null)(schema, depth)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        names = list(props) if depth < MAX_DEPTH else [n for n in props if n in required]
        return {name: self.value(props[name], depth + 1) for name in names}

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        count = max(int(schema.get("minItems", 0)), 0 if depth >= MAX_DEPTH else 1)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        return [self.value(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)]

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        fmt = schema.get("format")
        samples = {
            "date-time": "2026-01-01T00:00:00Z",
            "date": "2026-01-01",
            "time": "00:00:00",
            "email": "user@example.com",
            "uri": "https://example.com/",
            "uuid": "00000000-0000-4000-8000-000000000000",
        }
        text = samples.get(str(fmt), self.text or "text")
        lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
        if hi is not None:
            text = text[: int(hi)]
        return text + "x" * max(0, lo - len(text))

    def _number(self, schema: dict[str, Any], depth: int) -> float | int:
        return self._bounded(schema, 0, integer=False)

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        return int(self._bounded(schema, 0, integer=True))

    @staticmethod
    def _bounded(schema: dict[str, Any], value: float, integer: bool) -> float | int:
        step = 1 if integer else 0.5
        if "minimum" in schema:
            value = max(value, schema["minimum"])
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value = schema["exclusiveMinimum"] + step
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            value = schema["exclusiveMaximum"] - step
        return int(value) if integer else value

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return True

    def _null(self, schema: dict[str, Any], depth: int) -> None:
        return None


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _without(schema: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != key}
