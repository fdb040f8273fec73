"""`{{name}}` templates in user turns and check values: find the names, render with vars.

Values render as text the way a reader expects: strings as they are, `true`/`false`, empty for
null, numbers as written, anything else as compact JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from runner.jobs.models import TEMPLATE


def names_in(value: Any) -> Iterable[str]:
    """Every `{{name}}` in a string, or in the strings nested in a mapping/list."""
    if isinstance(value, str):
        yield from TEMPLATE.findall(value)
    elif isinstance(value, dict | list | tuple):
        for v in value.values() if isinstance(value, dict) else value:
            yield from names_in(v)


def fmt(value: Any) -> str:
    """A value's text in a turn, a check value or an id."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: ""}[value]
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def render(value: Any, vars: dict[str, Any]) -> Any:
    """`{{name}}` replaced in a string, or in the strings nested in a mapping/list."""
    if isinstance(value, str):
        has = "{{" in value
        return TEMPLATE.sub(lambda m: fmt(vars[m[1]]) if m[1] in vars else m[0], value) if has else value
    if isinstance(value, dict):
        return {k: render(v, vars) for k, v in value.items()}
    return [render(v, vars) for v in value] if isinstance(value, list | tuple) else value


def fill(parts: list[str], vars: dict[str, Any]) -> str:
    """Render a template already split by TEMPLATE (names at odd indices); unknown names stay."""
    out = parts.copy()
    for n in range(1, len(parts), 2):
        out[n] = fmt(vars[parts[n]]) if parts[n] in vars else "{{" + parts[n] + "}}"
    return "".join(out)
