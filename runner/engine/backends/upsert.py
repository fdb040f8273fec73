"""Assistants of a job on the server: found by name and mark, created when missing, updated when
they differ.

Once per run, before any conversation: every assistant is listed (all pages, newest first). What
the runner creates carries a mark in its `metadata` (`created_by: assistant-runner`, `runner_job`:
the job's name, `runner_hash`: a digest of what was sent). A job assistant is matched by its name
among the assistants marked with the same job: created when there is none, updated when its
instructions, model, tools, temperature, generation parameters or digest differ. A same-named
assistant the runner did not create for this job is never changed: one the runner created for
another job is left alone (this job gets its own); one an older version made (marked without a
job) becomes this job's; one made by hand stops the run (`AssistantConflictError`, exit 2) unless
the job says `adopt: true` on that assistant. An assistant the job names by `id` is used as is. A
create whose answer was lost is looked for again (the first page) before it is sent a second time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import openai

from runner.engine.backends.params import assistant_params
from runner.engine.retry import Caller
from runner.errors import AssistantConflictError
from runner.tasks import AssistantSpec

PAGE_SIZE = 100
"""Assistants listed per request while preparing (the API's maximum)."""

CREATED_BY = "assistant-runner"
"""`metadata.created_by` on every assistant the runner creates."""


def mark(job: str, fields: dict[str, Any]) -> dict[str, str]:
    """The metadata that says "created by the runner for this job, from these fields" (values within
    the API's 512 characters)."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"created_by": CREATED_BY, "runner_job": job[:512], "runner_hash": digest}


def _meta(assistant: Any) -> dict[str, Any]:
    return dict(getattr(assistant, "metadata", None) or {})


def owned_by(assistant: Any, job: str) -> bool:
    """Whether the runner created this assistant for `job` (an unmarked one is someone else's)."""
    meta = _meta(assistant)
    return meta.get("created_by") == CREATED_BY and meta.get("runner_job") == job[:512]


def _conflict(spec: AssistantSpec, found: Any, job: str) -> AssistantConflictError:
    return AssistantConflictError(
        f"assistant {spec.name!r} ({found.id}) already exists and was not created by assistant-runner"
        f" for job {job!r}: the runner will not change it. Either use it as it is (set"
        f" `id: {found.id}` under assistants.{spec.key}), give the job's assistant another `name:`,"
        f" or let this job take it over and update it (set `adopt: true` under assistants.{spec.key})"
    )


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
    client: openai.OpenAI, specs: Sequence[AssistantSpec], caller: Caller, job: str = ""
) -> dict[str, str]:
    """The server id of every job assistant: found by name among those marked for `job`, created
    when missing, updated when it differs; those the job names by `id` as they are. Raises
    AssistantConflictError (before changing anything) for a same-named assistant made by hand."""
    ids = {s.key: s.id for s in specs if s.id}
    todo = [s for s in specs if not s.id]
    if not todo:
        return ids
    existing = all_by_name(client, caller)
    plan = []
    for spec in todo:
        named = existing.get(spec.name, [])
        ours = next((a for a in named if owned_by(a, job)), None)
        if ours is None:  # one an older runner made (marked without a job) becomes this job's
            ours = next((a for a in named if _meta(a) == {"created_by": CREATED_BY}), None)
        if ours is None and named:
            stranger = next((a for a in named if _meta(a).get("created_by") != CREATED_BY), None)
            if spec.adopt:
                ours = stranger  # only a hand-made one: another job's stays that job's
            elif stranger is not None:
                raise _conflict(spec, stranger, job)
        plan.append((spec, ours))
    assistants = client.beta.assistants
    for spec, found in plan:
        fields: dict[str, Any] = {
            "model": spec.model,
            "instructions": spec.instructions,
            "tools": [dict(t) for t in spec.tools],
        }
        if spec.temperature is not None:
            fields["temperature"] = spec.temperature
        fields.update(assistant_params(spec))
        meta = mark(job, fields)  # after every field: the digest covers the generation parameters
        if found is None:

            def create(
                spec: AssistantSpec = spec, fields: dict[str, Any] = fields, meta: dict[str, str] = meta
            ) -> Any:
                return assistants.create(name=spec.name, metadata=meta, **fields)

            def look_again(name: str = spec.name) -> Any:
                return next(
                    (a for a in all_by_name(client, caller, pages=1).get(name, []) if owned_by(a, job)), None
                )

            ids[spec.key] = caller.call(create, reconcile=look_again).id
        elif differs(found, spec) or any(_meta(found).get(k) != v for k, v in meta.items()):
            update = {**fields, "metadata": {**_meta(found), **meta}}  # keys of others kept
            ids[spec.key] = caller.call(lambda i=found.id, f=update: assistants.update(i, **f)).id
        else:
            ids[spec.key] = found.id
    return ids


def all_by_name(client: openai.OpenAI, caller: Caller, pages: int | None = None) -> dict[str, list[Any]]:
    """Every assistant by name, newest first; pages fetched through the caller."""
    found: dict[str, list[Any]] = {}
    after: str | None = None
    n = 0
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "order": "desc"}
        if after:
            kwargs["after"] = after
        page = caller.call(lambda kw=kwargs: client.beta.assistants.list(**kw))
        for a in page.data:
            if a.name is not None:
                found.setdefault(a.name, []).append(a)
        n += 1
        if not page.data or page.has_more is False or (pages is not None and n >= pages):
            return found
        after = page.data[-1].id
