"""Assistants API v2 routes (wire-protocol §3): assistants, threads, messages, runs and run steps.

Handlers validate the request, read or change the objects in `Simulator`, and leave every
time-driven change to `runs.advance`. Runs requested with `stream: true` answer with the
events of `streaming.stream_run`.
"""

from __future__ import annotations

from typing import Any

from runner.simulator import validation as v
from runner.simulator.core import Simulator
from runner.simulator.http import Call, bad_request, not_found, quota_error, sse_response
from runner.simulator.models import check_model
from runner.simulator.pagination import page
from runner.simulator.replies import count_tokens, function_names, plan_after_tools, plan_turn
from runner.simulator.runs import (
    Run,
    advance,
    cancel,
    check_tool_outputs,
    completion_tokens,
    prompt_tokens,
    schedule,
    submit_tool_outputs,
)
from runner.simulator.streaming import stream_run
from runner.simulator.threads import Thread, message_text, new_message, text_part

_ASSISTANT_FIELDS = ("name", "description", "instructions")


# -- assistants ---------------------------------------------------------------------------------
def _assistant(call: Call, aid: str | None = None) -> dict[str, Any]:
    aid = aid or call.param("assistant_id")
    found = call.sim.assistants.get(aid)
    if found is None:
        raise not_found("assistant", aid)
    return found


def _assistant_fields(body: dict[str, Any], target: dict[str, Any], models: tuple[str, ...]) -> None:
    for name in _ASSISTANT_FIELDS:
        if name in body:
            target[name] = v.string(body, name)
    if "model" in body:
        target["model"] = check_model(models, body["model"])
    if "tools" in body:
        target["tools"] = v.assistant_tools(body["tools"])
    if "metadata" in body:
        target["metadata"] = v.metadata(body["metadata"])
    for name, hi in (("temperature", 2.0), ("top_p", 1.0)):
        if body.get(name) is not None:
            target[name] = v.number(body, name, 0.0, hi)
    for name in ("tool_resources", "response_format", "reasoning_effort"):
        if name in body:
            target[name] = body[name]


async def create_assistant(call: Call) -> dict[str, Any]:
    body = await call.body()
    sim = call.sim
    check_model(sim.config.models, v.required(body, "model"))
    a: dict[str, Any] = {
        "id": sim.new_id("asst_"),
        "object": "assistant",
        "created_at": int(call.now),
        "name": None,
        "description": None,
        "model": body["model"],
        "instructions": None,
        "tools": [],
        "tool_resources": {},
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "response_format": "auto",
    }
    _assistant_fields(body, a, sim.config.models)
    return sim.assistants.add(a["id"], a)


async def get_assistant(call: Call) -> dict[str, Any]:
    return _assistant(call)


async def update_assistant(call: Call) -> dict[str, Any]:
    a = _assistant(call)
    body = await call.body()
    staged = dict(a)
    _assistant_fields(body, staged, call.sim.config.models)  # validate everything before changing anything
    a.update(staged)
    return a


async def list_assistants(call: Call) -> dict[str, Any]:
    return page(call, call.sim.assistants.values(), lambda a: a["id"], lambda a: a)


async def delete_assistant(call: Call) -> dict[str, Any]:
    a = _assistant(call)
    call.sim.assistants.remove(a["id"])
    return {"id": a["id"], "object": "assistant.deleted", "deleted": True}


# -- threads ------------------------------------------------------------------------------------
def _thread(call: Call) -> Thread:
    tid = call.param("thread_id")
    found = call.sim.threads.get(tid)
    if found is None:
        raise not_found("thread", tid)
    return found


def _active_run(sim: Simulator, thread: Thread, now: float) -> Run | None:
    if thread.active_run is not None:
        advance(sim, thread.active_run, now)
    return thread.active_run


def _message_input(m: Any, where: str) -> tuple[str, list[dict[str, Any]], list[Any], dict[str, str]]:
    """Validate one M1 body (or an item of `messages[]`): role, content parts, attachments, metadata."""
    if not isinstance(m, dict):
        raise bad_request(f"Invalid type for '{where}': expected an object.", where)
    role = m.get("role")
    if role not in ("user", "assistant"):
        param = f"{where}.role" if where else "role"
        if role is None:
            raise bad_request(f"Missing required parameter: '{param}'.", param)
        raise bad_request(f"Invalid value: '{role}'. Supported values are: 'user' and 'assistant'.", param)
    content = m.get("content")
    cparam = f"{where}.content" if where else "content"
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        parts = [text_part(content)]
    elif isinstance(content, list) and content:
        for i, p in enumerate(content):
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text" and isinstance(p.get("text"), str):
                parts.append(text_part(p["text"]))
            elif kind in ("image_file", "image_url") and isinstance(p.get(kind), dict):
                parts.append({"type": kind, kind: p[kind]})
            else:
                raise bad_request(f"Invalid content part at '{cparam}[{i}]'.", f"{cparam}[{i}]")
    else:
        raise bad_request(f"Missing required parameter: '{cparam}'.", cparam)
    attachments = m.get("attachments") or []
    return (
        role,
        parts,
        attachments,
        v.metadata(m.get("metadata"), f"{where}.metadata" if where else "metadata"),
    )


def _new_thread(call: Call, body: dict[str, Any], register: bool = True) -> Thread:
    raw = body.get("messages") or []
    if not isinstance(raw, list):
        raise bad_request("Invalid type for 'messages': expected an array.", "messages")
    checked = [_message_input(m, f"messages[{i}]") for i, m in enumerate(raw)]
    sim = call.sim
    thread = Thread(
        sim.new_id("thread_"),
        int(call.now),
        v.metadata(body.get("metadata")),
        body.get("tool_resources") or {},
    )
    for role, parts, attachments, meta in checked:
        new_message(sim, thread, role, parts, call.now, attachments=attachments, metadata=meta)
    if register:
        sim.threads.add(thread.id, thread)
    return thread


async def create_thread(call: Call) -> dict[str, Any]:
    return _new_thread(call, await call.body()).to_dict()


async def get_thread(call: Call) -> dict[str, Any]:
    return _thread(call).to_dict()


async def update_thread(call: Call) -> dict[str, Any]:
    thread = _thread(call)
    body = await call.body()
    if "metadata" in body:
        thread.metadata = v.metadata(body["metadata"])
    if "tool_resources" in body:
        thread.tool_resources = body["tool_resources"] or {}
    return thread.to_dict()


async def delete_thread(call: Call) -> dict[str, Any]:
    thread = _thread(call)
    sim = call.sim
    sim.threads.remove(thread.id)
    for m in thread.messages:
        sim.messages.remove(m["id"])
    for r in thread.runs:
        sim.runs.remove(r.id)
    return {"id": thread.id, "object": "thread.deleted", "deleted": True}


# -- messages -----------------------------------------------------------------------------------
async def create_message(call: Call) -> dict[str, Any]:
    thread = _thread(call)
    role, parts, attachments, meta = _message_input(await call.body(), "")
    active = _active_run(call.sim, thread, call.now)
    if active is not None:
        raise bad_request(f"Can't add messages to {thread.id} while a run {active.id} is active.")
    return new_message(call.sim, thread, role, parts, call.now, attachments=attachments, metadata=meta)


async def list_messages(call: Call) -> dict[str, Any]:
    thread = _thread(call)
    _active_run(call.sim, thread, call.now)
    items = thread.messages
    run_id = call.query("run_id")
    if run_id:
        items = [m for m in items if m["run_id"] == run_id]
    return page(call, items, lambda m: m["id"], lambda m: m)


def _message(call: Call) -> dict[str, Any]:
    thread = _thread(call)
    _active_run(call.sim, thread, call.now)
    mid = call.param("message_id")
    msg = call.sim.messages.get(mid)
    if msg is None or msg["thread_id"] != thread.id:
        raise not_found("message", mid)
    return msg


async def get_message(call: Call) -> dict[str, Any]:
    return _message(call)


async def update_message(call: Call) -> dict[str, Any]:
    msg = _message(call)
    body = await call.body()
    if "metadata" in body:
        msg["metadata"] = v.metadata(body["metadata"])
    return msg


async def delete_message(call: Call) -> dict[str, Any]:
    msg = _message(call)
    thread = _thread(call)
    thread.messages.remove(msg)
    call.sim.messages.remove(msg["id"])
    return {"id": msg["id"], "object": "thread.message.deleted", "deleted": True}


# -- runs ---------------------------------------------------------------------------------------
def _run_options(body: dict[str, Any], assistant: dict[str, Any]) -> dict[str, Any]:
    trunc = body.get("truncation_strategy") or {"type": "auto", "last_messages": None}
    if not isinstance(trunc, dict) or trunc.get("type") not in ("auto", "last_messages"):
        raise bad_request("Invalid value for 'truncation_strategy.type'.", "truncation_strategy.type")
    temperature = v.number(body, "temperature", 0.0, 2.0)
    top_p = v.number(body, "top_p", 0.0, 1.0)
    return {
        "temperature": temperature if temperature is not None else assistant.get("temperature"),
        "top_p": top_p if top_p is not None else assistant.get("top_p"),
        "max_prompt_tokens": v.token_cap(body, "max_prompt_tokens", 256),
        "max_completion_tokens": v.token_cap(body, "max_completion_tokens", 256),
        "truncation_strategy": {"type": trunc["type"], "last_messages": trunc.get("last_messages")},
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "response_format": body.get("response_format") or assistant.get("response_format") or "auto",
    }


async def _start_run(call: Call, thread: Thread, body: dict[str, Any], new_thread: bool) -> Any:
    """R1 and T5: create a run on `thread` (validated first, nothing changes on a 4xx/429)."""
    sim = call.sim
    aid = v.required(body, "assistant_id")
    assistant = _assistant(call, aid)
    active = _active_run(sim, thread, call.now)
    if active is not None:
        raise bad_request(f"Thread {thread.id} already has an active run {active.id}.")
    extra_raw = body.get("additional_messages") or []
    if not isinstance(extra_raw, list):
        raise bad_request("Invalid type for 'additional_messages': expected an array.", "additional_messages")
    extra = [_message_input(m, f"additional_messages[{i}]") for i, m in enumerate(extra_raw)]
    tools = v.assistant_tools(body["tools"]) if body.get("tools") is not None else assistant["tools"]
    instructions = v.string(body, "instructions") or assistant.get("instructions") or ""
    if body.get("additional_instructions"):
        instructions = f"{instructions}\n{v.string(body, 'additional_instructions')}".strip()
    model = check_model(sim.config.models, body["model"]) if body.get("model") else assistant["model"]
    options = _run_options(body, assistant)
    texts = [message_text(m) for m in thread.messages] + [
        "".join(p["text"]["value"] for p in parts if p["type"] == "text") for _, parts, _, _ in extra
    ]
    roles = [m["role"] for m in thread.messages] + [role for role, _, _, _ in extra]
    user_message = next((t for r, t in zip(reversed(roles), reversed(texts), strict=True) if r == "user"), "")
    plan = plan_turn(
        sim.config.rules,
        user_message,
        function_names(tools),
        options["tool_choice"],
        options["parallel_tool_calls"],
        options["response_format"],
    )
    if plan.kind == "quota":
        sim.stats.event("quota")
        raise quota_error()
    call.charge(count_tokens(instructions, *texts) + completion_tokens(plan), model)
    metadata = v.metadata(body.get("metadata"))
    if new_thread:
        sim.threads.add(thread.id, thread)
    ttl = sim.config.run_ttl_s
    run = Run(
        sim.new_id("run_"),
        thread,
        assistant["id"],
        call.now,
        call.now + ttl,
        model,
        instructions,
        tools,
        metadata,
        options,
        sim.config.effective_poll_after_ms,
        plan,
        user_message,
        sim.faults.run_fails(),
    )
    for role, parts, attachments, meta in extra:
        new_message(sim, thread, role, parts, call.now, attachments=attachments, metadata=meta)
    schedule(sim, run, call.now, plan)
    thread.runs.append(run)
    thread.active_run = run
    sim.runs.add(run.id, run)
    if body.get("stream"):
        start = run.watch()
        run.emit("thread.run.created", run.to_dict())
        run.emit("thread.run.queued", run.to_dict())
        prefix = [("thread.created", thread.to_dict())] if new_thread else []
        return sse_response(stream_run(sim, run, start, prefix))
    call.headers["openai-poll-after-ms"] = str(run.poll_after_ms)
    return run.to_dict()


async def create_run(call: Call) -> Any:
    body = await call.body()
    return await _start_run(call, _thread(call), body, new_thread=False)


async def create_thread_and_run(call: Call) -> Any:
    body = await call.body()
    raw = body.get("thread") or {}
    if not isinstance(raw, dict):
        raise bad_request("Invalid type for 'thread': expected an object.", "thread")
    _assistant(call, v.required(body, "assistant_id"))
    thread = _new_thread(call, raw, register=False)  # registered once the run is accepted
    try:
        return await _start_run(call, thread, body, new_thread=True)
    except Exception:
        for m in thread.messages:
            call.sim.messages.remove(m["id"])
        raise


def _run(call: Call) -> Run:
    thread = _thread(call)
    rid = call.param("run_id")
    run = call.sim.runs.get(rid)
    if run is None or run.thread is not thread:
        raise not_found("run", rid)
    advance(call.sim, run, call.now)
    call.headers["openai-poll-after-ms"] = str(run.poll_after_ms)
    return run


async def get_run(call: Call) -> Any:
    return _run(call).json()


async def list_runs(call: Call) -> dict[str, Any]:
    thread = _thread(call)
    for r in thread.runs:
        advance(call.sim, r, call.now)
    return page(call, thread.runs, lambda r: r.id, lambda r: r.to_dict())


async def update_run(call: Call) -> dict[str, Any]:
    run = _run(call)
    body = await call.body()
    if "metadata" in body:
        run.metadata = v.metadata(body["metadata"])
        run.cached_json = None
    return run.to_dict()


async def cancel_run(call: Call) -> dict[str, Any]:
    run = _run(call)
    cancel(run, call.now)
    return run.to_dict()


async def submit_outputs(call: Call) -> Any:
    body = await call.body()  # read first: the run's state is taken after the last await
    run = _run(call)
    sim = call.sim
    outputs = body.get("tool_outputs")
    names = []
    if run.required_action is not None:
        names = [c["function"]["name"] for c in run.required_action["submit_tool_outputs"]["tool_calls"]]
    given = [
        o.get("output", "") for o in outputs or [] if isinstance(o, dict) and isinstance(o.get("output"), str)
    ]
    then = plan_after_tools(sim.config.rules, run.user_message, names, given)
    got = check_tool_outputs(run, outputs)
    call.charge(prompt_tokens(run, " ".join(given)) + completion_tokens(then), run.model)
    start = run.watch() if body.get("stream") else 0
    submit_tool_outputs(sim, run, got, call.now, then)
    if body.get("stream"):
        return sse_response(stream_run(sim, run, start))
    return run.to_dict()


# -- run steps ----------------------------------------------------------------------------------
async def list_steps(call: Call) -> dict[str, Any]:
    run = _run(call)
    return page(call, run.steps, lambda s: s["id"], lambda s: s)


async def get_step(call: Call) -> dict[str, Any]:
    run = _run(call)
    sid = call.param("step_id")
    for s in run.steps:
        if s["id"] == sid:
            return s
    raise not_found("run step", sid)


def routes() -> list[tuple[str, dict[str, Any]]]:
    """(path under /v1, {method: handler}) for every Assistants endpoint; the hottest (polling) first."""
    return [
        ("/threads/{thread_id}/runs/{run_id}", {"GET": get_run, "POST": update_run}),
        ("/assistants", {"POST": create_assistant, "GET": list_assistants}),
        (
            "/assistants/{assistant_id}",
            {"GET": get_assistant, "POST": update_assistant, "DELETE": delete_assistant},
        ),
        ("/threads", {"POST": create_thread}),
        ("/threads/runs", {"POST": create_thread_and_run}),
        ("/threads/{thread_id}", {"GET": get_thread, "POST": update_thread, "DELETE": delete_thread}),
        ("/threads/{thread_id}/messages", {"POST": create_message, "GET": list_messages}),
        (
            "/threads/{thread_id}/messages/{message_id}",
            {"GET": get_message, "POST": update_message, "DELETE": delete_message},
        ),
        ("/threads/{thread_id}/runs", {"POST": create_run, "GET": list_runs}),
        ("/threads/{thread_id}/runs/{run_id}/cancel", {"POST": cancel_run}),
        ("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", {"POST": submit_outputs}),
        ("/threads/{thread_id}/runs/{run_id}/steps", {"GET": list_steps}),
        ("/threads/{thread_id}/runs/{run_id}/steps/{step_id}", {"GET": get_step}),
    ]
