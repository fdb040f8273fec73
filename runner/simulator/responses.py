"""Responses routes: the successor of runs (wire-protocol §10).

A response is scheduled like a run (queued → in_progress → completed/failed/incomplete, computed
lazily from timestamps); a foreground request waits for it, `background: true` returns at once
and is polled (or cancelled), `stream: true` sends the real Responses events while it runs (see
`response_events`; a background stream can be resumed with `GET ?stream=true&starting_after=N`).
Function calls come out as `function_call` items (several in one turn when a rule names several)
and are answered by `function_call_output` input items, with the history taken from the
conversation or `previous_response_id`. `text.format` json_schema replies are valid JSON for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.simulator import validation as v
from runner.simulator.conversations import (
    Conversation,
    conversation,
    input_items,
    item_text,
    last_user_text,
    register,
)
from runner.simulator.core import Simulator, sleep_or_close
from runner.simulator.http import (
    SERVER_ERROR_MESSAGE,
    Call,
    bad_request,
    not_found,
    quota_error,
    server_error,
    shutdown_error,
    sse_response,
)
from runner.simulator.logprobs import token_logprobs
from runner.simulator.models import check_context, check_model
from runner.simulator.pagination import page
from runner.simulator.replies import Plan, count_tokens, function_names, plan_after_tools, plan_turn
from runner.simulator.response_events import stream_events
from runner.simulator.structured import shape_reply

LOGPROBS_INCLUDE = "message.output_text.logprobs"

_TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})


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
            "text": r["text"],
            "tool_choice": r["tool_choice"],
            "tools": r["tools"],
            "top_logprobs": r["top_logprobs"],
            "top_p": r["top_p"],
            "truncation": "disabled",
            "metadata": r["metadata"],
        }
        if status in ("completed", "incomplete", "failed"):  # absent (not null) before: the schema says so
            out["usage"] = self.usage
        return out


def _plan(
    sim: Simulator, history: list[dict[str, Any]], inputs: list[dict[str, Any]], req: dict[str, Any]
) -> Plan:
    outputs = [it for it in inputs if it["type"] == "function_call_output"]
    if not outputs:
        return plan_turn(
            sim.config.rules,
            last_user_text(history),
            function_names(req["tools"]),
            req["tool_choice"],
            req["parallel_tool_calls"],
            (req.get("text") or {}).get("format"),
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
    message = last_user_text(history[:first_call])
    return plan_after_tools(sim.config.rules, message, names, [o["output"] for o in outputs])


# -- responses ----------------------------------------------------------------------------------
def _request(body: dict[str, Any], models: tuple[str, ...]) -> dict[str, Any]:
    model = check_model(models, v.required(body, "model"))
    text = body.get("text") or {}
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
        "text": {
            "format": text.get("format") or {"type": "text"},
            "verbosity": text.get("verbosity") or "medium",
        },
        "top_logprobs": int(body.get("top_logprobs") or 0),
        "logprobs": LOGPROBS_INCLUDE in (body.get("include") or ()),
    }


def _output(sim: Simulator, plan: Plan, text: str, req: dict[str, Any]) -> list[dict[str, Any]]:
    if plan.kind == "call":
        return [
            {
                "id": sim.new_id("fc_"),
                "type": "function_call",
                "status": "completed",
                "call_id": sim.new_id("call_"),
                "name": name,
                "arguments": arguments,
            }
            for name, arguments in plan.calls
        ]
    if plan.kind == "fail":
        return []
    logprobs = token_logprobs(text, req["top_logprobs"]) if req["logprobs"] else []
    return [
        {
            "id": sim.new_id("msg_"),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}],
        }
    ]


async def create_response(call: Call) -> Any:
    sim = call.sim
    body = await call.body()
    req = _request(body, sim.config.models)
    conv = None
    if body.get("conversation") is not None:
        ref = body["conversation"]
        conv = conversation(call, ref.get("id") if isinstance(ref, dict) else str(ref))
    history: list[dict[str, Any]] = []
    if req["previous_response_id"]:
        prev = sim.responses.get(req["previous_response_id"])
        if prev is None:
            raise bad_request(
                f"Previous response with id '{req['previous_response_id']}' not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        if conv is not None:
            raise bad_request(
                "Cannot use 'previous_response_id' together with 'conversation'.", "conversation"
            )
        prev.advance(call.now)
        history = [*prev.history, *prev.output]
    elif conv is not None:
        history = list(conv.items)
    inputs = input_items(sim, v.required(body, "input"), "input")
    history = [*history, *inputs]
    plan = _plan(sim, history, inputs, req)
    if plan.kind == "quota":
        sim.stats.event("quota")
        raise quota_error()
    if plan.kind == "fail" and not req["background"] and not body.get("stream"):
        raise server_error()
    full = plan.text if plan.raw else shape_reply(plan.text, req["text"]["format"])
    text = full
    cap = req["max_output_tokens"]
    if cap and count_tokens(text) > cap:
        text = text[: cap * 4]
    prompt = count_tokens(req["instructions"] or "", *(item_text(it) for it in history))
    check_context(req["model"], prompt, "input", chat=False)
    completion = plan.call_tokens() if plan.kind == "call" else count_tokens(text)
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
        _output(sim, plan, text, req),
        plan,
        usage,
        conv,
        req["background"] and sim.faults.run_fails(),
        text != full,
    )
    if conv is not None:
        conv.items.extend(inputs)
        conv.pending.append(resp)
    register(sim, inputs)
    register(sim, resp.output)
    sim.responses.add(resp.id, resp)
    if body.get("stream"):
        return sse_response(stream_events(sim, resp))
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


async def get_response(call: Call) -> Any:
    """The response; with `?stream=true` its events (after `starting_after`), for background ones."""
    resp = _response(call)
    if (call.query("stream") or "").lower() != "true":
        return resp.to_dict()
    if not resp.request["background"]:
        raise bad_request("Only responses created with background=true can be streamed.", "stream")
    raw = call.query("starting_after")
    try:
        after = -1 if raw is None else int(raw)
    except ValueError:
        raise bad_request(
            f"Invalid type for 'starting_after': expected an integer, but got '{raw}' instead.",
            "starting_after",
            "invalid_type",
        ) from None
    return sse_response(stream_events(call.sim, resp, after))


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


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/responses", {"POST": create_response}),
        ("/responses/{response_id}", {"GET": get_response, "DELETE": delete_response}),
        ("/responses/{response_id}/cancel", {"POST": cancel_response}),
        ("/responses/{response_id}/input_items", {"GET": list_input_items}),
    ]
