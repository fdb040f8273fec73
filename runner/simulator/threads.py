"""Threads and their messages (wire-protocol §3): the objects runs read and write.

A message's content is stored in the response shape (`{"type": "text", "text": {"value",
"annotations"}}`) whatever the create request sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.simulator.core import Simulator

if TYPE_CHECKING:
    from runner.simulator.runs import Run


@dataclass
class Thread:
    id: str
    created_at: int
    metadata: dict[str, str]
    tool_resources: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    active_run: Run | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread",
            "created_at": self.created_at,
            "metadata": self.metadata,
            "tool_resources": self.tool_resources,
        }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": {"value": text, "annotations": []}}


def message_text(message: dict[str, Any]) -> str:
    return "".join(p["text"]["value"] for p in message["content"] if p.get("type") == "text")


def new_message(
    sim: Simulator,
    thread: Thread,
    role: str,
    content: list[dict[str, Any]],
    now: float,
    *,
    status: str = "completed",
    run: Run | None = None,
    attachments: list[Any] | None = None,
    metadata: dict[str, str] | None = None,
    mid: str | None = None,
) -> dict[str, Any]:
    """Create a `thread.message` in `thread` (and the global table)."""
    msg: dict[str, Any] = {
        "id": mid or sim.new_id("msg_"),
        "object": "thread.message",
        "created_at": int(now),
        "thread_id": thread.id,
        "status": status,
        "incomplete_details": None,
        "completed_at": int(now) if status == "completed" else None,
        "incomplete_at": None,
        "role": role,
        "content": content,
        "assistant_id": run.assistant_id if run else None,
        "run_id": run.id if run else None,
        "attachments": attachments or [],
        "metadata": metadata or {},
    }
    thread.messages.append(msg)
    sim.messages.add(msg["id"], msg)
    return msg
