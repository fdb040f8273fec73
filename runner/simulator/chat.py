"""The Chat Completions route: stateless, the client sends the whole history every time.

A reply takes the configured latency (streamed as `data:` chunks over that time, ending with
`[DONE]`). Tool calls come back with `finish_reason: tool_calls` and are answered by `role: tool`
messages, which must answer every call of the preceding assistant message, as OpenAI requires.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
from runner.simulator.replies import (
    Plan,
    chunk_text,
    count_tokens,
    function_names,
    plan_after_tools,
    plan_turn,
)

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
        raise bad_request("Missing required parameter: 'messages'.", "messages")
    pending: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise bad_request(f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role")
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


def _plan(sim: Simulator, messages: list[dict[str, Any]], tools: list[str], tool_choice: Any) -> Plan:
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
    return plan_turn(sim.config.rules, user, tools, tool_choice)


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


async def create_chat_completion(call: Call) -> Any:
    sim = call.sim
    body = await call.body()
    model = v.required(body, "model")
    if not isinstance(model, str):
        raise bad_request("Invalid type for 'model': expected a string.", "model")
    messages = _check_messages(body.get("messages"))
    tools = v.chat_tools(body.get("tools"))
    plan = _plan(sim, messages, function_names(tools), body.get("tool_choice") or "auto")
    stream = bool(body.get("stream"))
    if plan.kind == "quota":
        sim.stats.event("quota")
        raise quota_error()
    if plan.kind == "fail" and not stream:
        raise server_error()
    cap = v.token_cap(body, "max_completion_tokens") or v.token_cap(body, "max_tokens")
    text, finish = plan.text, "stop"
    if plan.kind == "call":
        finish = "tool_calls"
    elif cap and count_tokens(text) > cap:
        text, finish = text[: cap * 4], "length"
    prompt = count_tokens(
        *(_text(m.get("content")) for m in messages),
        *(
            c["function"].get("arguments", "")
            for m in messages
            for c in m.get("tool_calls") or []
            if isinstance(c, dict) and isinstance(c.get("function"), dict)
        ),
    )
    completion = count_tokens(plan.call or "", plan.arguments) if plan.kind == "call" else count_tokens(text)
    call.charge(prompt + completion, model)
    tool_calls = None
    if plan.kind == "call":
        tool_calls = [
            {
                "id": sim.new_id("call_"),
                "type": "function",
                "function": {"name": plan.call, "arguments": plan.arguments},
            }
        ]
    head = {
        "id": sim.new_id("chatcmpl-"),
        "created": int(call.now),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    latency = sim.latency(plan.latency_s)
    usage = _usage(prompt, completion)
    if stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse_response(_chunks(sim, head, plan, text, tool_calls, finish, usage, include_usage, latency))
    if not await sleep_or_close(sim, latency):
        raise shutdown_error()
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if tool_calls else text,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}


async def _chunks(
    sim: Simulator,
    head: dict[str, Any],
    plan: Plan,
    text: str,
    tool_calls: list[dict[str, Any]] | None,
    finish: str,
    usage: dict[str, Any],
    include_usage: bool,
    latency: float,
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        c: dict[str, Any] = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }
        if include_usage:
            c["usage"] = None
        return b"data: " + dumps(c) + b"\n\n"

    yield chunk({"role": "assistant", "content": "" if tool_calls is None else None, "refusal": None})
    if plan.kind == "fail":  # OpenAI reports a failure mid-stream as a `data:` error object
        closing = not await sleep_or_close(sim, latency)
        yield b"data: " + dumps((shutdown_error() if closing else server_error()).body()) + b"\n\n"
        return
    if tool_calls:
        for i, tc in enumerate(tool_calls):
            first = {
                "index": i,
                "id": tc["id"],
                "type": "function",
                "function": {"name": tc["function"]["name"], "arguments": ""},
            }
            yield chunk({"tool_calls": [first]})
            if not await sleep_or_close(sim, latency):
                yield b"data: " + dumps(shutdown_error().body()) + b"\n\n"
                return
            yield chunk(
                {"tool_calls": [{"index": i, "function": {"arguments": tc["function"]["arguments"]}}]}
            )
    else:
        pieces = chunk_text(text)
        for piece in pieces:
            if not await sleep_or_close(sim, latency / (len(pieces) + 1)):
                yield b"data: " + dumps(shutdown_error().body()) + b"\n\n"
                return
            yield chunk({"content": piece})
    yield chunk({}, finish)
    if include_usage:
        yield (
            b"data: "
            + dumps({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            + b"\n\n"
        )
    yield b"data: [DONE]\n\n"


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [("/chat/completions", {"POST": create_chat_completion})]
