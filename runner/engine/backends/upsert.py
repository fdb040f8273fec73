"""Assistants of a job on the server: found by name, created when missing, updated when they differ.

Once per run, before any conversation: every assistant is listed (all pages, newest first wins a
name), each job assistant is matched by its name, created when missing (marked `created_by:
assistant-runner`), updated when its instructions, model, tools, temperature or reasoning_effort differ. An
assistant the job names by `id` is used as is. A create whose answer was lost is looked for again
(the first page) before it is sent a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai

from runner.engine.backends.params import assistant_params
from runner.engine.retry import Caller
from runner.tasks import AssistantSpec

PAGE_SIZE = 100
"""Assistants listed per request while preparing (the API's maximum)."""


def _norm(value: Any) -> Any:
    """A tool definition without nulls and empty mappings, to compare ours with the server's."""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value


def _tool(tool: Any) -> Any:
    """A tool as compared: no nulls, and `strict: false` is the same as no `strict` (servers fill it in)."""
    data = _norm(tool.model_dump() if hasattr(tool, "model_dump") else dict(tool))
    fn = data.get("function")
    if isinstance(fn, dict) and fn.get("strict") is False:
        del fn["strict"]
    return data


def _tools_of(assistant: Any) -> list[Any]:
    return [_tool(t) for t in assistant.tools or []]


def differs(existing: Any, spec: AssistantSpec) -> bool:
    """Whether the server's assistant needs an update to match the job's."""
    if (existing.instructions or "") != (spec.instructions or ""):
        return True
    if existing.model != spec.model:
        return True
    effort = assistant_params(spec).get("reasoning_effort")
    if effort is not None and getattr(existing, "reasoning_effort", None) != effort:
        return True
    if spec.temperature is not None and (
        existing.temperature is None or abs(existing.temperature - spec.temperature) > 1e-9
    ):
        return True
    return _tools_of(existing) != [_tool(t) for t in spec.tools]


def upsert_assistants(
    client: openai.OpenAI, specs: Sequence[AssistantSpec], caller: Caller
) -> dict[str, str]:
    """The server id of every job assistant: found by name, created when missing, updated when it
    differs; those the job names by `id` as they are."""
    ids = {s.key: s.id for s in specs if s.id}
    todo = [s for s in specs if not s.id]
    if not todo:
        return ids
    existing = by_name(client, caller)
    assistants = client.beta.assistants
    for spec in todo:
        found = existing.get(spec.name)
        fields: dict[str, Any] = {
            "model": spec.model,
            "instructions": spec.instructions,
            "tools": [dict(t) for t in spec.tools],
        }
        if spec.temperature is not None:
            fields["temperature"] = spec.temperature
        fields.update(assistant_params(spec))
        if found is None:

            def create(spec: AssistantSpec = spec, fields: dict[str, Any] = fields) -> Any:
                meta = {"created_by": "assistant-runner"}
                return assistants.create(name=spec.name, metadata=meta, **fields)

            def look_again(name: str = spec.name) -> Any:
                return by_name(client, caller, pages=1).get(name)

            ids[spec.key] = caller.call(create, reconcile=look_again).id
        elif differs(found, spec):
            ids[spec.key] = caller.call(lambda i=found.id, f=fields: assistants.update(i, **f)).id
        else:
            ids[spec.key] = found.id
    return ids


def by_name(client: openai.OpenAI, caller: Caller, pages: int | None = None) -> dict[str, Any]:
    """Every assistant by name, newest first wins; pages fetched through the caller."""
    found: dict[str, Any] = {}
    after: str | None = None
    n = 0
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "order": "desc"}
        if after:
            kwargs["after"] = after
        page = caller.call(lambda kw=kwargs: client.beta.assistants.list(**kw))
        for a in page.data:
            if a.name is not None:
                found.setdefault(a.name, a)
        n += 1
        if not page.data or page.has_more is False or (pages is not None and n >= pages):
            return found
        after = page.data[-1].id
