"""The Chat Completions route: stateless, the client sends the whole history every time.

A reply takes the configured latency (streamed as `data:` chunks over that time, ending with
`[DONE]`). Tool calls come back with `finish_reason: tool_calls` and are answered by `role: tool`
messages, which must answer every call of the preceding assistant message, as OpenAI requires.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from runner.simulator import validation as v
from runner.simulator.core import Simulator, sleep_or_close
from runner.simulator.http import (
    Call,
    bad_request,
    dumps,
    quota_error,
    server_error,
    shutdown_error,
    sse_response,
)
from runner.simulator.logprobs import token_logprobs
from runner.simulator.models import check_context, check_model
from runner.simulator.replies import (
    Plan,
    chunk_text,
    count_tokens,
    function_names,
    plan_after_tools,
    plan_turn,
)
from runner.simulator.structured import shape_reply

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
FINGERPRINT = "fp_simulator"
_UNANSWERED = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
    "'tool_call_id'. The following tool_call_ids did not have response messages: "
)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    pending: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise bad_request(
                f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role", "invalid_value"
            )
        role = m["role"]
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                raise bad_request(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(m["tool_call_id"])
            continue
        if pending:
            raise bad_request(
                f"{_UNANSWERED}{', '.join(pending)}",
                f"messages.[{i}].role",
            )
        if role == "assistant" and m.get("tool_calls"):
            pending = [str(c.get("id")) for c in m["tool_calls"] if isinstance(c, dict)]
    if pending:
        raise bad_request(
            f"{_UNANSWERED}{', '.join(pending)}",
            "messages",
        )
    return messages


def _plan(
    sim: Simulator,
    messages: list[dict[str, Any]],
    tools: list[str],
    tool_choice: Any,
    parallel: Any = True,
    response_format: Any = None,
) -> Plan:
    tail = len(messages)
    while tail > 0 and messages[tail - 1]["role"] == "tool":
        tail -= 1
    outputs = [_text(m.get("content")) for m in messages[tail:]]
    user = next(
        (
            _text(m.get("content"))
            for m in reversed(messages[: max(tail - 1, 0)] if outputs else messages)
            if m["role"] == "user"
        ),
        "",
    )
    if outputs:
        names = [
            c["function"]["name"]
            for c in messages[tail - 1].get("tool_calls") or []
            if isinstance(c, dict) and isinstance(c.get("function"), dict)
        ]
        return plan_after_tools(sim.config.rules, user, names, outputs)
    return plan_turn(sim.config.rules, user, tools, tool_choice, parallel is not False, response_format)


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_calls(sim: Simulator, plan: Plan) -> list[dict[str, Any]] | None:
    if plan.kind != "call":
        return None
    return [
        {"id": sim.new_id("call_"), "type": "function", "function": {"name": name, "arguments": args}}
        for name, args in plan.calls
    ]


def _logprobs(text: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Chat's `choices[].logprobs` when `logprobs: true` (None otherwise, like OpenAI)."""
    if not body.get("logprobs"):
        return None
    return {"content": token_logprobs(text, int(body.get("top_logprobs") or 0)), "refusal": None}


async def create_chat_completion(call: Call) -> Any:
    sim = call.sim
    body = await call.body()
    model = check_model(sim.config.models, v.required(body, "model"))
    messages = _check_messages(body.get("messages"))
    tools = v.chat_tools(body.get("tools"))
    plan = _plan(
        sim,
        messages,
        function_names(tools),
        body.get("tool_choice") or "auto",
        body.get("parallel_tool_calls"),
        body.get("response_format"),
    )
    stream = bool(body.get("stream"))
    prompt = count_tokens(
        *(_text(m.get("content")) for m in messages),
        *(
            c["function"].get("arguments", "")
            for m in messages
            for c in m.get("tool_calls") or []
            if isinstance(c, dict) and isinstance(c.get("function"), dict)
        ),
    )
    check_context(model, prompt, "messages", chat=True)
    if plan.kind == "quota":
        sim.stats.event("quota")
        raise quota_error()
    if plan.kind == "fail" and not stream:
        raise server_error()
    cap = v.token_cap(body, "max_completion_tokens") or v.token_cap(body, "max_tokens")
    text = plan.text if plan.raw else shape_reply(plan.text, body.get("response_format"))
    finish = "stop"
    if plan.kind == "call":
        finish = "tool_calls"
    elif cap and count_tokens(text) > cap:
        text, finish = text[: cap * 4], "length"
    n = int(body.get("n") or 1)
    completion = plan.call_tokens() if plan.kind == "call" else count_tokens(text)
    call.charge(prompt + completion * n, model)
    tool_calls = [_tool_calls(sim, plan) for _ in range(n)]
    head = {
        "id": sim.new_id("chatcmpl-"),
        "created": int(call.now),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    latency = sim.latency(plan.latency_s)
    usage = _usage(prompt, completion * n)
    logprobs = None if tool_calls[0] else _logprobs(text, body)
    if stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        reply = Reply(plan, text, tool_calls, finish, logprobs)
        return sse_response(_chunks(sim, head, reply, usage, include_usage, latency))
    if not await sleep_or_close(sim, latency):
        raise shutdown_error()
    choices = []
    for index, calls in enumerate(tool_calls):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls else text,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
    return {**head, "object": "chat.completion", "choices": choices, "usage": usage}


@dataclass(frozen=True)
class Reply:
    """What every choice of one completion says (n choices say the same, with their own call ids)."""

    plan: Plan
    text: str
    tool_calls: list[list[dict[str, Any]] | None]
    finish: str
    logprobs: dict[str, Any] | None


async def _chunks(
    sim: Simulator,
    head: dict[str, Any],
    reply: Reply,
    usage: dict[str, Any],
    include_usage: bool,
    latency: float,
) -> AsyncIterator[bytes]:
    def chunk(index: int, delta: dict[str, Any], reason: str | None = None, lp: Any = None) -> bytes:
        c: dict[str, Any] = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}],
        }
        if include_usage:
            c["usage"] = None
        return b"data: " + dumps(c) + b"\n\n"

    choices = range(len(reply.tool_calls))
    for i in choices:
        yield chunk(
            i, {"role": "assistant", "content": "" if reply.tool_calls[i] is None else None, "refusal": None}
        )
    if reply.plan.kind == "fail":  # OpenAI reports a failure mid-stream as a `data:` error object
        closing = not await sleep_or_close(sim, latency)
        yield b"data: " + dumps((shutdown_error() if closing else server_error()).body()) + b"\n\n"
        return
    if reply.tool_calls[0]:
        if not await sleep_or_close(sim, latency):
            yield b"data: " + dumps(shutdown_error().body()) + b"\n\n"
            return
        for i in choices:
            for k, tc in enumerate(reply.tool_calls[i] or []):
                first = {
                    "index": k,
                    "id": tc["id"],
                    "type": "function",
                    "function": {"name": tc["function"]["name"], "arguments": ""},
                }
                yield chunk(i, {"tool_calls": [first]})
                args = {"index": k, "function": {"arguments": tc["function"]["arguments"]}}
                yield chunk(i, {"tool_calls": [args]})
    else:
        pieces = chunk_text(reply.text)
        lps = (reply.logprobs or {}).get("content") or []
        used = 0
        for piece in pieces:
            if not await sleep_or_close(sim, latency / (len(pieces) + 1)):
                yield b"data: " + dumps(shutdown_error().body()) + b"\n\n"
                return
            lp = None
            if reply.logprobs is not None:  # the tokens of this piece
                mine, length = [], 0
                while used < len(lps) and length < len(piece):
                    length += len(lps[used]["token"])
                    mine.append(lps[used])
                    used += 1
                lp = {"content": mine, "refusal": None}
            for i in choices:
                yield chunk(i, {"content": piece}, lp=lp)
    for i in choices:
        yield chunk(i, {}, reply.finish)
    if include_usage:
        yield (
            b"data: "
            + dumps({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            + b"\n\n"
        )
    yield b"data: [DONE]\n\n"


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [("/chat/completions", {"POST": create_chat_completion})]
