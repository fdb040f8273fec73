"""Conversations and Responses routes: the successor of threads and runs (wire-protocol §10).

A response is scheduled like a run (queued → in_progress → completed/failed/incomplete, computed
lazily from timestamps); a foreground request waits for it, `background: true` returns at once
and is polled (or cancelled), `stream: true` sends the real Responses events while it runs.
Function calls come out as `function_call` items and are answered by `function_call_output`
input items, with the history taken from the conversation or `previous_response_id`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from runner.simulator import validation as v
from runner.simulator.core import Simulator, sleep_or_close
from runner.simulator.http import (
    SERVER_ERROR_MESSAGE,
    Call,
    bad_request,
    not_found,
    quota_error,
    server_error,
    shutdown_error,
    sse,
    sse_response,
)
from runner.simulator.pagination import page
from runner.simulator.replies import (
    Plan,
    chunk_text,
    count_tokens,
    function_names,
    plan_after_tools,
    plan_turn,
)

_TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})


@dataclass(eq=False)
class Conversation:
    id: str
    created_at: int
    metadata: dict[str, str]
    items: list[dict[str, Any]] = field(default_factory=list)
    pending: list[ResponseRun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": self.metadata,
        }


@dataclass(eq=False)
class ResponseRun:
    """One response: its request, its schedule and the output it will have once done."""

    id: str
    created: float
    start_at: float
    done_at: float
    request: dict[str, Any]
    inputs: list[dict[str, Any]]
    history: list[dict[str, Any]]
    output: list[dict[str, Any]]
    plan: Plan
    usage: dict[str, Any]
    conversation: Conversation | None
    fails: bool
    incomplete: bool = False
    status: str = "queued"
    completed_at: int | None = None
    error: dict[str, str] | None = None

    def advance(self, now: float) -> ResponseRun:
        if self.status in _TERMINAL:
            return self
        if self.status == "queued" and self.start_at <= now:
            self.status = "in_progress"
        if self.status == "in_progress" and self.done_at <= now:
            if self.fails or self.plan.kind == "fail":
                self.status = "failed"
                self.error = {"code": "server_error", "message": SERVER_ERROR_MESSAGE}
            else:
                self.status = "incomplete" if self.incomplete else "completed"
                self.completed_at = int(self.done_at) if self.status == "completed" else None
                if self.conversation is not None:
                    self.conversation.items.extend(self.output)
            if self.conversation is not None and self in self.conversation.pending:
                self.conversation.pending.remove(self)
        return self

    def to_dict(self, status: str | None = None) -> dict[str, Any]:
        status = status or self.status
        r = self.request
        done = status in ("completed", "incomplete")
        out = {
            "id": self.id,
            "object": "response",
            "created_at": int(self.created),
            "status": status,
            "background": r["background"],
            "completed_at": self.completed_at if done else None,
            "conversation": {"id": self.conversation.id} if self.conversation else None,
            "error": self.error if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": r["instructions"],
            "max_output_tokens": r["max_output_tokens"],
            "max_tool_calls": None,
            "model": r["model"],
            "output": self.output if done else [],
            "parallel_tool_calls": r["parallel_tool_calls"],
            "previous_response_id": r["previous_response_id"],
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": r["store"],
            "temperature": r["temperature"],
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": r["tool_choice"],
            "tools": r["tools"],
            "top_logprobs": 0,
            "top_p": r["top_p"],
            "truncation": "disabled",
            "metadata": r["metadata"],
        }
        if status in ("completed", "incomplete", "failed"):  # absent (not null) before: the schema says so
            out["usage"] = self.usage
        return out


# -- items --------------------------------------------------------------------------------------
def _text_parts(content: Any, role: str, where: str) -> list[dict[str, Any]]:
    kind = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        part: dict[str, Any] = {"type": kind, "text": content}
        if kind == "output_text":
            part.update(annotations=[], logprobs=[])
        return [part]
    if isinstance(content, list):
        parts = []
        for i, p in enumerate(content):
            if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                raise bad_request(f"Invalid content part at '{where}.content[{i}]'.", f"{where}.content[{i}]")
            parts.append(dict(p))
        return parts
    raise bad_request(f"Missing required parameter: '{where}.content'.", f"{where}.content")


def _items(sim: Simulator, raw: Any, param: str) -> list[dict[str, Any]]:
    """Input items as stored (with ids): messages, function calls and their outputs, references."""
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise bad_request(f"Invalid type for '{param}': expected a string or an array.", param)
    out = []
    for i, it in enumerate(raw):
        where = f"{param}[{i}]"
        if not isinstance(it, dict):
            raise bad_request(f"Invalid type for '{where}': expected an object.", where)
        kind = it.get("type", "message")
        if kind == "message":
            role = it.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(f"Invalid value for '{where}.role': '{role}'.", f"{where}.role")
            out.append(
                {
                    "id": it.get("id") or sim.new_id("msg_"),
                    "type": "message",
                    "status": "completed",
                    "role": role,
                    "content": _text_parts(it.get("content"), role, where),
                }
            )
        elif kind == "function_call_output":
            if not isinstance(it.get("call_id"), str) or not isinstance(it.get("output"), str):
                raise bad_request(
                    f"Missing required parameter: '{where}.call_id' or '{where}.output'.", where
                )
            out.append(
                {
                    "id": sim.new_id("fco_"),
                    "type": kind,
                    "call_id": it["call_id"],
                    "output": it["output"],
                    "status": "completed",
                }
            )
        elif kind == "function_call":
            out.append(
                {
                    "id": it.get("id") or sim.new_id("fc_"),
                    "type": kind,
                    "status": "completed",
                    "call_id": it.get("call_id"),
                    "name": it.get("name"),
                    "arguments": it.get("arguments", ""),
                }
            )
        elif kind == "item_reference":
            ref = sim.items.get(str(it.get("id")))
            if ref is None:
                raise not_found("item", str(it.get("id")))
            out.append(ref)
        else:
            raise bad_request(
                f"Invalid value for '{where}.type': '{kind}' is not supported here.", f"{where}.type"
            )
    return out


def _text_of(item: dict[str, Any]) -> str:
    if item["type"] == "message":
        return "".join(p.get("text", "") for p in item["content"] if isinstance(p.get("text"), str))
    if item["type"] == "function_call":
        return f"{item.get('name') or ''} {item.get('arguments') or ''}"
    if item["type"] == "function_call_output":
        return item["output"]
    return ""


def _last_user(items: list[dict[str, Any]]) -> str:
    for it in reversed(items):
        if it["type"] == "message" and it["role"] == "user":
            return _text_of(it)
    return ""


def _plan(
    sim: Simulator, history: list[dict[str, Any]], inputs: list[dict[str, Any]], req: dict[str, Any]
) -> Plan:
    outputs = [it for it in inputs if it["type"] == "function_call_output"]
    if not outputs:
        return plan_turn(
            sim.config.rules, _last_user(history), function_names(req["tools"]), req["tool_choice"]
        )
    calls = {it["call_id"]: i for i, it in enumerate(history) if it["type"] == "function_call"}
    names = []
    first_call = len(history)
    for o in outputs:
        if o["call_id"] not in calls:
            raise bad_request(
                f"No tool call found for function call output with call_id {o['call_id']}.", "input"
            )
        first_call = min(first_call, calls[o["call_id"]])
        names.append(history[calls[o["call_id"]]]["name"])
    message = _last_user(history[:first_call])
    return plan_after_tools(sim.config.rules, message, names, [o["output"] for o in outputs])


# -- conversations ------------------------------------------------------------------------------
def _conversation(call: Call, cid: str | None = None) -> Conversation:
    cid = cid or call.param("conversation_id")
    conv = call.sim.conversations.get(cid)
    if conv is None:
        raise not_found("conversation", cid)
    for r in list(conv.pending):
        r.advance(call.now)
    return conv


def _register(sim: Simulator, items: list[dict[str, Any]]) -> None:
    for it in items:
        sim.items.add(it["id"], it)


async def create_conversation(call: Call) -> dict[str, Any]:
    body = await call.body()
    items = _items(call.sim, body.get("items") or [], "items")
    conv = Conversation(call.sim.new_id("conv_"), int(call.now), v.metadata(body.get("metadata")), items)
    _register(call.sim, items)
    return call.sim.conversations.add(conv.id, conv).to_dict()


async def get_conversation(call: Call) -> dict[str, Any]:
    return _conversation(call).to_dict()


async def update_conversation(call: Call) -> dict[str, Any]:
    conv = _conversation(call)
    conv.metadata = v.metadata((await call.body()).get("metadata"))
    return conv.to_dict()


async def delete_conversation(call: Call) -> dict[str, Any]:
    conv = _conversation(call)
    call.sim.conversations.remove(conv.id)
    return {"id": conv.id, "object": "conversation.deleted", "deleted": True}


async def list_items(call: Call) -> dict[str, Any]:
    return page(call, _conversation(call).items, lambda i: i["id"], lambda i: i)


async def add_items(call: Call) -> dict[str, Any]:
    conv = _conversation(call)
    items = _items(call.sim, v.required(await call.body(), "items"), "items")
    conv.items.extend(items)
    _register(call.sim, items)
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


def _item(call: Call) -> tuple[Conversation, dict[str, Any]]:
    conv = _conversation(call)
    iid = call.param("item_id")
    for it in conv.items:
        if it["id"] == iid:
            return conv, it
    raise not_found("item", iid)


async def get_item(call: Call) -> dict[str, Any]:
    return _item(call)[1]


async def delete_item(call: Call) -> dict[str, Any]:
    conv, it = _item(call)
    conv.items.remove(it)
    return conv.to_dict()


# -- responses ----------------------------------------------------------------------------------
def _request(body: dict[str, Any]) -> dict[str, Any]:
    model = v.required(body, "model")
    if not isinstance(model, str):
        raise bad_request("Invalid type for 'model': expected a string.", "model")
    temperature = v.number(body, "temperature", 0.0, 2.0)
    top_p = v.number(body, "top_p", 0.0, 1.0)
    return {
        "model": model,
        "instructions": v.string(body, "instructions"),
        "tools": v.flat_tools(body.get("tools")),
        "tool_choice": body.get("tool_choice") or "auto",
        "metadata": v.metadata(body.get("metadata")),
        "background": bool(body.get("background")),
        "store": body.get("store", True) is not False,
        "temperature": 1.0 if temperature is None else temperature,
        "top_p": 1.0 if top_p is None else top_p,
        "max_output_tokens": v.token_cap(body, "max_output_tokens", 16),
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "previous_response_id": v.string(body, "previous_response_id"),
    }


def _output(sim: Simulator, plan: Plan, text: str) -> list[dict[str, Any]]:
    if plan.kind == "call":
        return [
            {
                "id": sim.new_id("fc_"),
                "type": "function_call",
                "status": "completed",
                "call_id": sim.new_id("call_"),
                "name": plan.call,
                "arguments": plan.arguments,
            }
        ]
    if plan.kind == "fail":
        return []
    return [
        {
            "id": sim.new_id("msg_"),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
    ]


async def create_response(call: Call) -> Any:
    sim = call.sim
    body = await call.body()
    req = _request(body)
    conv = None
    if body.get("conversation") is not None:
        ref = body["conversation"]
        conv = _conversation(call, ref.get("id") if isinstance(ref, dict) else str(ref))
    history: list[dict[str, Any]] = []
    if req["previous_response_id"]:
        prev = sim.responses.get(req["previous_response_id"])
        if prev is None:
            raise not_found("response", req["previous_response_id"])
        if conv is not None:
            raise bad_request(
                "Cannot use 'previous_response_id' together with 'conversation'.", "conversation"
            )
        prev.advance(call.now)
        history = [*prev.history, *prev.output]
    elif conv is not None:
        history = list(conv.items)
    inputs = _items(sim, v.required(body, "input"), "input")
    history = [*history, *inputs]
    plan = _plan(sim, history, inputs, req)
    if plan.kind == "quota":
        sim.stats.event("quota")
        raise quota_error()
    if plan.kind == "fail" and not req["background"] and not body.get("stream"):
        raise server_error()
    text = plan.text
    cap = req["max_output_tokens"]
    if cap and count_tokens(text) > cap:
        text = text[: cap * 4]
    prompt = count_tokens(req["instructions"] or "", *(_text_of(it) for it in history))
    completion = count_tokens(plan.call or "", plan.arguments) if plan.kind == "call" else count_tokens(text)
    call.charge(prompt + completion, req["model"])
    latency = sim.latency(plan.latency_s)
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    resp = ResponseRun(
        sim.new_id("resp_"),
        call.now,
        call.now + sim.queue_time(latency),
        call.now + latency,
        req,
        inputs,
        history[: len(history) - len(inputs)] + inputs,
        _output(sim, plan, text),
        plan,
        usage,
        conv,
        req["background"] and sim.faults.run_fails(),
        text != plan.text,
    )
    if conv is not None:
        conv.items.extend(inputs)
        conv.pending.append(resp)
    _register(sim, inputs)
    _register(sim, resp.output)
    sim.responses.add(resp.id, resp)
    if body.get("stream"):
        return sse_response(_stream(sim, resp))
    if req["background"]:
        return resp.to_dict()
    if not await sleep_or_close(sim, resp.done_at - sim.now()):
        raise shutdown_error()
    resp.advance(max(sim.now(), resp.done_at))
    if not req["store"]:
        sim.responses.remove(resp.id)
    return resp.to_dict()


def _response(call: Call) -> ResponseRun:
    rid = call.param("response_id")
    resp = call.sim.responses.get(rid)
    if resp is None:
        raise not_found("response", rid)
    return resp.advance(call.now)


async def get_response(call: Call) -> dict[str, Any]:
    return _response(call).to_dict()


async def delete_response(call: Call) -> dict[str, Any]:
    resp = _response(call)
    call.sim.responses.remove(resp.id)
    return {"id": resp.id, "object": "response.deleted", "deleted": True}


async def cancel_response(call: Call) -> dict[str, Any]:
    resp = _response(call)
    if not resp.request["background"]:
        raise bad_request("Only responses created with background=true can be cancelled.")
    if resp.status in _TERMINAL:
        raise bad_request(f"Cannot cancel a response with status '{resp.status}'.")
    resp.status = "cancelled"
    if resp.conversation is not None and resp in resp.conversation.pending:
        resp.conversation.pending.remove(resp)
    return resp.to_dict()


async def list_input_items(call: Call) -> dict[str, Any]:
    return page(call, _response(call).inputs, lambda i: i["id"], lambda i: i)


async def _stream(sim: Simulator, resp: ResponseRun) -> AsyncIterator[bytes]:
    """The Responses event stream, paced over the response's latency."""
    seq = 0

    def event(kind: str, **data: Any) -> bytes:
        nonlocal seq
        payload = {"type": kind, **data, "sequence_number": seq}
        seq += 1
        return sse(kind, payload)

    def shutting_down() -> bytes:  # the Responses stream's own error event (ResponseErrorEvent)
        err = shutdown_error()
        return event("error", code=err.type, message=err.message, param=None)

    yield event(
        "response.created", response=resp.to_dict("in_progress" if not resp.request["background"] else None)
    )
    if resp.request["background"]:
        yield event("response.queued", response=resp.to_dict("queued"))
    yield event("response.in_progress", response=resp.to_dict("in_progress"))
    span = resp.done_at - sim.now()
    if resp.fails or resp.plan.kind == "fail":
        if not await sleep_or_close(sim, span):
            yield shutting_down()
            return
        resp.advance(max(sim.now(), resp.done_at))
        yield event("response.failed", response=resp.to_dict())
        return
    for index, item in enumerate(resp.output):
        if item["type"] == "function_call":
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            if not await sleep_or_close(sim, span):
                yield shutting_down()
                return
            common = {"item_id": item["id"], "output_index": index}
            yield event("response.function_call_arguments.delta", **common, delta=item["arguments"])
            yield event(
                "response.function_call_arguments.done",
                **common,
                name=item["name"],
                arguments=item["arguments"],
            )
        else:
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            part = item["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield event("response.content_part.added", **common, part={**part, "text": ""})
            chunks = chunk_text(part["text"])
            for chunk in chunks:
                if not await sleep_or_close(sim, span / (len(chunks) + 1)):
                    yield shutting_down()
                    return
                yield event("response.output_text.delta", **common, delta=chunk, logprobs=[])
            yield event("response.output_text.done", **common, text=part["text"], logprobs=[])
            yield event("response.content_part.done", **common, part=part)
        yield event("response.output_item.done", output_index=index, item=item)
    if not await sleep_or_close(sim, resp.done_at - sim.now()):
        yield shutting_down()
        return
    resp.advance(max(sim.now(), resp.done_at))
    if resp.status in ("completed", "incomplete"):  # a cancelled background stream just ends
        yield event(f"response.{resp.status}", response=resp.to_dict())


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/conversations", {"POST": create_conversation}),
        (
            "/conversations/{conversation_id}",
            {"GET": get_conversation, "POST": update_conversation, "DELETE": delete_conversation},
        ),
        ("/conversations/{conversation_id}/items", {"GET": list_items, "POST": add_items}),
        ("/conversations/{conversation_id}/items/{item_id}", {"GET": get_item, "DELETE": delete_item}),
        ("/responses", {"POST": create_response}),
        ("/responses/{response_id}", {"GET": get_response, "DELETE": delete_response}),
        ("/responses/{response_id}/cancel", {"POST": cancel_response}),
        ("/responses/{response_id}/input_items", {"GET": list_input_items}),
    ]
