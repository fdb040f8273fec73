"""Checks on request bodies shared by the routes, answering 400s worded like OpenAI's."""

from __future__ import annotations

import re
from typing import Any

from runner.simulator.http import bad_request

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_METADATA = 16


def metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """Up to 16 string pairs, keys ≤ 64 and values ≤ 512 characters (null means empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(
            f"Invalid type for '{param}': expected an object, but got {type(value).__name__}.",
            param,
            "invalid_type",
        )
    if len(value) > MAX_METADATA:
        raise bad_request(
            f"Invalid '{param}': too many properties. Expected an object with at most {MAX_METADATA} "
            f"properties, but got an object with {len(value)} properties instead.",
            param,
            "object_above_max_properties",
        )
    for k, v in value.items():
        if len(k) > 64:
            raise bad_request(
                f"Invalid '{param}': key '{k[:64]}…' is longer than 64 characters.",
                param,
                "string_above_max_length",
            )
        if not isinstance(v, str):
            raise bad_request(
                f"Invalid type for '{param}.{k}': expected a string.", f"{param}.{k}", "invalid_type"
            )
        if len(v) > 512:
            raise bad_request(
                f"Invalid '{param}.{k}': string too long. Expected at most 512 characters.",
                f"{param}.{k}",
                "string_above_max_length",
            )
    return dict(value)


def required(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is None:
        raise bad_request(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    return value


def string(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise bad_request(
            f"Invalid type for '{name}': expected a string, but got {type(value).__name__}.",
            name,
            "invalid_type",
        )
    return value


def number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"Invalid type for '{name}': expected a number.", name, "invalid_type")
    if not lo <= value <= hi:
        code = "decimal_below_min_value" if value < lo else "decimal_above_max_value"
        raise bad_request(
            f"Invalid '{name}': expected a value between {lo} and {hi}, got {value}.", name, code
        )
    return float(value)


def token_cap(body: dict[str, Any], name: str, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        code = (
            "integer_below_min_value"
            if isinstance(value, int) and not isinstance(value, bool)
            else "invalid_type"
        )
        raise bad_request(f"Invalid '{name}': expected an integer >= {minimum}.", name, code)
    return value


def assistant_tools(value: Any, param: str = "tools") -> list[dict[str, Any]]:
    """Assistants tools: functions (`{"type", "function": {"name"…}}`), code_interpreter, file_search."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"Invalid type for '{param}': expected an array.", param, "invalid_type")
    out = []
    for i, tool in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict) or tool.get("type") not in (
            "function",
            "code_interpreter",
            "file_search",
        ):
            raise bad_request(
                f"Invalid value for '{where}.type': supported values are 'code_interpreter', 'file_search' "
                "and 'function'.",
                f"{where}.type",
                "invalid_value",
            )
        if tool["type"] != "function":
            out.append({"type": tool["type"]})
            continue
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(
                f"Missing required parameter: '{where}.function.name'.",
                f"{where}.function.name",
                "missing_required_parameter",
            )
        _function_name(fn["name"], f"{where}.function.name")
        clean = {
            "name": fn["name"],
            "description": fn.get("description", ""),
            "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
            "strict": bool(fn.get("strict", False)),
        }
        out.append({"type": "function", "function": clean})
    return out


def _function_name(name: str, param: str) -> None:
    if not _FUNCTION_NAME.match(name):
        raise bad_request(
            f"Invalid '{param}': string does not match pattern. Expected ^[a-zA-Z0-9_-]{{1,64}}$.",
            param,
            "invalid_value",
        )


def flat_tools(value: Any, param: str = "tools") -> list[dict[str, Any]]:
    """Responses-style function tools: `{"type": "function", "name", "parameters", "strict"}`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"Invalid type for '{param}': expected an array.", param, "invalid_type")
    out = []
    for i, tool in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request(
                f"Missing required parameter: '{where}.type'.", f"{where}.type", "missing_required_parameter"
            )
        if tool["type"] != "function":
            out.append(dict(tool))
            continue
        if not isinstance(tool.get("name"), str):
            raise bad_request(
                f"Missing required parameter: '{where}.name'.", f"{where}.name", "missing_required_parameter"
            )
        _function_name(tool["name"], f"{where}.name")
        out.append(
            {
                "type": "function",
                "name": tool["name"],
                "description": tool.get("description"),
                "parameters": tool.get("parameters"),
                "strict": tool.get("strict", True),
            }
        )
    return out


def chat_tools(value: Any, param: str = "tools") -> list[dict[str, Any]]:
    """Chat-style tools share the Assistants shape."""
    return [t for t in assistant_tools(value, param) if t["type"] == "function"]
