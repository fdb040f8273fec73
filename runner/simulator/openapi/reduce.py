"""Cut OpenAI's OpenAPI description down to the schemas the simulator needs; write `openapi.json`.

    python -m runner.simulator.openapi.reduce /path/to/openapi.subset.json

Source: github.com/openai/openai-openapi `openapi.json` at f85dbe223d40e1a31cba812ab2d755c7e98a92a3
(2026-08-21), MIT licence. What changes on the way, all of it so that validation at request time is
cheap and matches what the real API sends:

- only the operations the simulator serves are kept, with the component schemas they reach;
  each keeps its request body schema and its 200 JSON answer schema (in `x-simulator`);
- prose (`description`, `example`s, `x-oaiMeta`, …) is dropped;
- OpenAPI 3.0's `nullable: true` becomes JSON Schema that accepts null (the README's trap);
- list envelopes accept `first_id`/`last_id` null on empty pages (what the API sends, wire §4);
- `oneOf` becomes `anyOf`: OpenAI's unions overlap (an input message is both an `EasyInputMessage`
  and an `Item`), and the API accepts a value matching several branches;
- an `Embedding`'s `embedding` may also be a string: with `encoding_format: base64` the API sends
  the floats as base64 (the schema only documents the float array);
- inline request schemas become named components (`SimulatorBody_…`), so every `$ref` resolves
  against the document.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("openapi.json")
SERVED_PREFIXES = (
    "/assistants", "/threads", "/responses", "/conversations", "/chat/completions", "/models",
    "/files", "/batches", "/embeddings",
)  # fmt: skip
NOT_SERVED = {"/responses/compact", "/responses/input_tokens", "/chat/completions/{completion_id}"}
EXTRA = ("ErrorResponse", "CreateChatCompletionStreamResponse", "ResponseStreamEvent", "ResponseErrorEvent")
_PROSE = {
    "description",
    "example",
    "examples",
    "x-oaiMeta",
    "x-oaiTypeLabel",
    "x-stainless-const",
    "title",
    "deprecated",
    "x-oaiExpandable",
    "default",
    "format",
}
_NAMED_SCHEMAS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}


def rewrite_nullable(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` → JSON Schema that also accepts null."""
    if isinstance(node, list):
        return [rewrite_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: rewrite_nullable(v) for k, v in node.items()}
    all_of = node.get("allOf")
    if isinstance(all_of, list) and any(isinstance(s, dict) and s.get("nullable") is True for s in all_of):
        rest = [s for s in all_of if not (isinstance(s, dict) and set(s) <= {"nullable", "description"})]
        node = {k: v for k, v in node.items() if k != "allOf"}
        return {"anyOf": [{**node, "allOf": rest}, {"type": "null"}]}
    if node.pop("nullable", False) is not True:
        return node
    kind = node.get("type")
    if isinstance(kind, str) and "$ref" not in node:
        node["type"] = [kind, "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
        return node
    return {"anyOf": [node, {"type": "null"}]}


def any_of(node: Any) -> Any:
    """`oneOf` → `anyOf` everywhere (see the module docstring)."""
    if isinstance(node, list):
        return [any_of(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in _NAMED_SCHEMAS and isinstance(v, dict):
            out[k] = {name: any_of(sub) for name, sub in v.items()}
        else:
            out[k] = any_of(v)
    if "oneOf" in out:
        one = out.pop("oneOf")
        if "anyOf" in out:
            out["allOf"] = [*out.get("allOf", []), {"anyOf": one}]
        else:
            out["anyOf"] = one
    return out


def strip_prose(node: Any) -> Any:
    """Drop documentation keywords from a schema (never a property that happens to share a name)."""
    if isinstance(node, list):
        return [strip_prose(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in _PROSE:
            continue
        if k in _NAMED_SCHEMAS and isinstance(v, dict):
            out[k] = {name: strip_prose(s) for name, s in v.items()}
        else:
            out[k] = strip_prose(v)
    return out


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def _schema_name(schema: dict[str, Any], fallback: str, schemas: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str) and set(schema) == {"$ref"}:
        return ref.rsplit("/", 1)[1]
    schemas[fallback] = schema  # an inline schema: lift it into the components
    return fallback


def reduce(doc: dict[str, Any]) -> dict[str, Any]:
    source = doc["components"]["schemas"]
    lifted: dict[str, Any] = {}
    requests: dict[str, str] = {}
    responses: dict[str, str] = {}
    for path, ops in doc["paths"].items():
        if not path.startswith(SERVED_PREFIXES) or "?" in path or path in NOT_SERVED:
            continue
        for method, op in ops.items():
            if method not in ("get", "post", "delete"):
                continue
            key = f"{method.upper()} {path}"
            slug = re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                requests[key] = _schema_name(body, f"SimulatorBody_{slug}", lifted)
            answer = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
            if answer.get("schema"):
                responses[key] = _schema_name(answer["schema"], f"SimulatorAnswer_{slug}", lifted)
    all_schemas = {**source, **lifted}
    wanted: set[str] = set(requests.values()) | set(responses.values()) | set(EXTRA)
    todo = list(wanted)
    while todo:
        found: set[str] = set()
        _refs(all_schemas[todo.pop()], found)
        todo.extend(found - wanted)
        wanted |= found
    schemas = {name: any_of(strip_prose(rewrite_nullable(all_schemas[name]))) for name in sorted(wanted)}
    for schema in schemas.values():  # empty pages: first_id/last_id null (wire-protocol §4)
        props = schema.get("properties") if isinstance(schema, dict) else None
        if props and {"first_id", "last_id", "has_more", "data"} <= set(props):
            for key in ("first_id", "last_id"):
                props[key] = {"anyOf": [props[key], {"type": "null"}]}
    embedding = schemas.get("Embedding", {}).get("properties", {})
    if "embedding" in embedding:  # `encoding_format: base64` sends a string (see the docstring)
        embedding["embedding"] = {"anyOf": [embedding["embedding"], {"type": "string"}]}
    return {
        "openapi": doc["openapi"],
        "info": {
            "title": doc["info"]["title"],
            "version": doc["info"]["version"],
            "x-source": "github.com/openai/openai-openapi@f85dbe223d40e1a31cba812ab2d755c7e98a92a3 (MIT)",
        },
        "x-simulator": {"requests": requests, "responses": responses},
        "components": {"schemas": schemas},
    }


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m runner.simulator.openapi.reduce OPENAPI_JSON")
    doc = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    OUT.write_text(json.dumps(reduce(doc), separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
