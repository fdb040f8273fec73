"""Conversations and their items (wire-protocol §10): the successor of threads and messages.

Items are stored with ids (messages, function calls and their outputs); a response run on a
conversation appends its input and, once done, its output. Input items are checked and normalised
here for both the conversation routes and `POST /responses`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.simulator import validation as v
from runner.simulator.core import Simulator
from runner.simulator.http import Call, bad_request, not_found
from runner.simulator.pagination import page

if TYPE_CHECKING:
    from runner.simulator.responses import ResponseRun


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


def input_items(sim: Simulator, raw: Any, param: str) -> list[dict[str, Any]]:
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


def item_text(item: dict[str, Any]) -> str:
    if item["type"] == "message":
        return "".join(p.get("text", "") for p in item["content"] if isinstance(p.get("text"), str))
    if item["type"] == "function_call":
        return f"{item.get('name') or ''} {item.get('arguments') or ''}"
    if item["type"] == "function_call_output":
        return item["output"]
    return ""


def last_user_text(items: list[dict[str, Any]]) -> str:
    for it in reversed(items):
        if it["type"] == "message" and it["role"] == "user":
            return item_text(it)
    return ""


# -- conversations ------------------------------------------------------------------------------
def conversation(call: Call, cid: str | None = None) -> Conversation:
    cid = cid or call.param("conversation_id")
    conv = call.sim.conversations.get(cid)
    if conv is None:
        raise not_found("conversation", cid)
    for r in list(conv.pending):
        r.advance(call.now)
    return conv


def register(sim: Simulator, items: list[dict[str, Any]]) -> None:
    for it in items:
        sim.items.add(it["id"], it)


async def create_conversation(call: Call) -> dict[str, Any]:
    body = await call.body()
    items = input_items(call.sim, body.get("items") or [], "items")
    conv = Conversation(call.sim.new_id("conv_"), int(call.now), v.metadata(body.get("metadata")), items)
    register(call.sim, items)
    return call.sim.conversations.add(conv.id, conv).to_dict()


async def get_conversation(call: Call) -> dict[str, Any]:
    return conversation(call).to_dict()


async def update_conversation(call: Call) -> dict[str, Any]:
    conv = conversation(call)
    conv.metadata = v.metadata((await call.body()).get("metadata"))
    return conv.to_dict()


async def delete_conversation(call: Call) -> dict[str, Any]:
    conv = conversation(call)
    call.sim.conversations.remove(conv.id)
    return {"id": conv.id, "object": "conversation.deleted", "deleted": True}


async def list_items(call: Call) -> dict[str, Any]:
    return page(call, conversation(call).items, lambda i: i["id"], lambda i: i)


async def add_items(call: Call) -> dict[str, Any]:
    conv = conversation(call)
    items = input_items(call.sim, v.required(await call.body(), "items"), "items")
    conv.items.extend(items)
    register(call.sim, items)
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


def _item(call: Call) -> tuple[Conversation, dict[str, Any]]:
    conv = conversation(call)
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


def routes() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/conversations", {"POST": create_conversation}),
        (
            "/conversations/{conversation_id}",
            {"GET": get_conversation, "POST": update_conversation, "DELETE": delete_conversation},
        ),
        ("/conversations/{conversation_id}/items", {"GET": list_items, "POST": add_items}),
        ("/conversations/{conversation_id}/items/{item_id}", {"GET": get_item, "DELETE": delete_item}),
    ]
