"""Request bodies checked against OpenAI's request schemas, refused with OpenAI-shaped 400s.

The real API refuses what its schemas do not allow, so the simulator does too: a backend that
sends `temprature` or `temperature: "0.5"` fails against the simulator as it would in production.
A refusal names the offending parameter path the way OpenAI does (`messages[0].role`) and uses
its error codes:

| problem | code |
|---|---|
| unknown top-level argument | `unknown_parameter` ("Unrecognized request argument supplied: x") |
| unknown nested key | `unknown_parameter` ("Unknown parameter: 'a.b'.") |
| wrong JSON type | `invalid_type` |
| missing required key | `missing_required_parameter` |
| not one of the allowed values, pattern | `invalid_value` |
| number out of range | `integer_below_min_value`, `decimal_above_max_value`, … |
| string/array/object size | `string_above_max_length`, `empty_array`, `array_above_max_length`, … |

Only the first problem is reported, like OpenAI. Inside `anyOf` unions (message roles, item and
tool types, nullable fields) the branch the client evidently meant is followed, so the error is
about that branch rather than "matches none of 7 schemas".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from jsonschema.exceptions import ValidationError

from runner.simulator.http import APIError, bad_request
from runner.simulator.schemas import spec

_DISCRIMINATORS = ("type", "role", "object")
_TYPE_NAMES = {
    "number": "a decimal",
    "integer": "an integer",
    "string": "a string",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


def param_path(path: Iterable[Any]) -> str:
    """`messages[0].role` from the JSON path ('messages', 0, 'role')."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def check_body(method: str, route: str, body: dict[str, Any]) -> None:
    """Raise the 400 OpenAI would answer to `body` on `method route` (route without `/v1`)."""
    s = spec()
    name = s.request_schema(method, route)
    if name is None:
        return
    known = s.properties(name)
    if known is not None:
        for key in body:
            if key not in known:
                raise bad_request(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")
    error = next(s.iter_errors(name, body), None)
    if error is not None:
        raise to_api_error(error)


# -- which error in a union -----------------------------------------------------------------------
def _root_type_miss(errors: Sequence[ValidationError]) -> bool:
    """Whether a union branch failed because the value is not even of the branch's type."""
    for e in errors:
        if e.relative_path:
            continue
        if e.validator == "type":
            return True
        if e.validator in ("anyOf", "oneOf") and e.context:
            branches = _branches(e)
            if all(_root_type_miss(b) for b in branches.values()):
                return True
    return False


def _branches(error: ValidationError) -> dict[int, list[ValidationError]]:
    out: dict[int, list[ValidationError]] = defaultdict(list)
    for sub in error.context or ():
        out[int(sub.relative_schema_path[0])].append(sub)
    return out


def _discriminator_miss(errors: Sequence[ValidationError]) -> ValidationError | None:
    for e in errors:
        path = list(e.relative_path)
        if e.validator in ("enum", "const") and len(path) == 1 and path[0] in _DISCRIMINATORS:
            return e
    return None


class _Synthetic(Exception):
    """A union error summarised: a type mismatch over all branches, or a bad discriminator."""

    def __init__(self, error: APIError) -> None:
        self.error = error


def _pick(error: ValidationError) -> ValidationError:
    """Follow unions down to the error about the branch the client meant."""
    while error.validator in ("anyOf", "oneOf") and error.context:
        branches = _branches(error)
        here = param_path(error.absolute_path)
        candidates = {i: b for i, b in branches.items() if not _root_type_miss(b)}
        if not candidates:
            expected: list[str] = []
            for errs in branches.values():
                for e in errs:
                    if not e.relative_path and e.validator == "type":
                        kinds = (
                            e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
                        )
                        expected += [k for k in kinds if k not in expected]
            raise _Synthetic(_type_error(here, expected, error.instance))
        missed = {i: _discriminator_miss(b) for i, b in candidates.items()}
        if all(m is not None for m in missed.values()):
            first = next(m for m in missed.values() if m is not None)
            allowed: list[Any] = []
            for m in missed.values():
                assert m is not None
                values = m.validator_value if m.validator == "enum" else [m.validator_value]
                allowed += [v for v in values if v not in allowed and v is not None]
            raise _Synthetic(_value_error(param_path(first.absolute_path), first.instance, allowed))
        meant = [b for i, b in candidates.items() if missed[i] is None]
        branch = min(meant, key=len)
        error = sorted(branch, key=lambda e: (e.validator in ("anyOf", "oneOf"), len(e.relative_path)))[0]
    return error


# -- OpenAI's wording -----------------------------------------------------------------------------
def _quote_list(values: Sequence[Any]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _type_error(param: str, expected: Sequence[str], value: Any) -> APIError:
    names = [_TYPE_NAMES.get(k, k) for k in expected if k != "null"] or ["null"]
    want = names[0] if len(names) == 1 else "one of " + ", ".join(names[:-1]) + " or " + names[-1]
    got = json_type(value)
    article = "" if got == "null" else ("an " if got[0] in "aeiou" else "a ")
    return bad_request(
        f"Invalid type for '{param}': expected {want}, but got {article}{got} instead.",
        param,
        "invalid_type",
    )


def _value_error(param: str, value: Any, allowed: Sequence[Any]) -> APIError:
    return bad_request(
        f"Invalid value: '{value}'. Supported values are: {_quote_list(allowed)}.", param, "invalid_value"
    )


def to_api_error(error: ValidationError) -> APIError:
    """The 400 for the first schema violation, with OpenAI's message, `param` and `code`."""
    try:
        e = _pick(error)
    except _Synthetic as s:
        return s.error
    param = param_path(e.absolute_path)
    value, limit, kind = e.instance, e.validator_value, str(e.validator)
    if kind == "type":
        return _type_error(param, limit if isinstance(limit, list) else [limit], value)
    if kind == "required":
        missing = next((k for k in limit if k not in value), limit[0])
        where = f"{param}.{missing}" if param else missing
        return bad_request(f"Missing required parameter: '{where}'.", where, "missing_required_parameter")
    if kind in ("additionalProperties", "unevaluatedProperties"):
        allowed = set((e.schema or {}).get("properties") or ()) if isinstance(e.schema, dict) else set()
        extra = next((k for k in value if k not in allowed), next(iter(value), ""))
        if not param:
            return bad_request(f"Unrecognized request argument supplied: {extra}", extra, "unknown_parameter")
        where = f"{param}.{extra}"
        return bad_request(f"Unknown parameter: '{where}'.", where, "unknown_parameter")
    if kind == "enum":
        return _value_error(param, value, [v for v in limit if v is not None])
    if kind == "const":
        return _value_error(param, value, [limit])
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        declared = e.schema.get("type") if isinstance(e.schema, dict) else None
        declared = declared if isinstance(declared, list) else [declared]
        number = "integer" if "integer" in declared and "number" not in declared else "decimal"
        low = kind in ("minimum", "exclusiveMinimum")
        op = (">" if low else "<") + ("" if kind.startswith("exclusive") else "=")
        side = "below minimum" if low else "above maximum"
        return bad_request(
            f"Invalid '{param}': {number} {side} value. Expected a value {op} {limit}, "
            f"but got {value} instead.",
            param,
            f"{number}_{'below_min' if low else 'above_max'}_value",
        )
    if kind in ("minLength", "maxLength"):
        low = kind == "minLength"
        return bad_request(
            f"Invalid '{param}': string too {'short' if low else 'long'}. Expected a string with "
            f"{'minimum' if low else 'maximum'} length {limit}, but got a string with length {len(value)} "
            "instead.",
            param,
            f"string_{'below_min' if low else 'above_max'}_length",
        )
    if kind == "minItems" and not value:
        return bad_request(
            f"Invalid '{param}': empty array. Expected an array with minimum length {limit}, but got an "
            "empty array instead.",
            param,
            "empty_array",
        )
    if kind in ("minItems", "maxItems"):
        low = kind == "minItems"
        return bad_request(
            f"Invalid '{param}': array too {'short' if low else 'long'}. Expected an array with "
            f"{'minimum' if low else 'maximum'} length {limit}, but got an array with length {len(value)} "
            "instead.",
            param,
            f"array_{'below_min' if low else 'above_max'}_length",
        )
    if kind in ("minProperties", "maxProperties"):
        low = kind == "minProperties"
        return bad_request(
            f"Invalid '{param}': too {'few' if low else 'many'} properties. Expected an object with at "
            f"{'least' if low else 'most'} {limit} properties, but got an object with {len(value)} "
            "properties instead.",
            param,
            f"object_{'below_min' if low else 'above_max'}_properties",
        )
    if kind == "pattern":
        return bad_request(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches the "
            f"pattern '{limit}'.",
            param,
            "invalid_value",
        )
    where = param or "body"
    return bad_request(f"Invalid value for '{where}': {e.message[:200]}", param or None, "invalid_value")
