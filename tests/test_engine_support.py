"""Helpers shared by the engine and backend tests (this module holds no tests).

The job every engine test uses: a support assistant with one function tool, a simulator that
answers "refund" with a fixed text, "order" with a tool call, "slow" after 5 s, "broken" with a
failed run, and anything else by echoing it.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

import yaml

from runner.simulator import SimulatorRules
from runner.tasks import Api, AssistantSpec, CheckSpec, ConversationTask, Limits, TurnSpec

TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Look an order up",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    },
}
TOOL_OUTPUT = '{"status": "shipped"}'

SIMULATOR_BLOCK: dict[str, Any] = {
    "latency_s": 0.05,
    "rules": [
        {"when": "(?i)refund", "reply": "Refunds are accepted within 30 days."},
        {
            "when": "(?i)order",
            "call": "lookup_order",
            "arguments": {"order_id": "A1"},
            "then": "Your order is {{tool_output}}.",
        },
        {"when": "(?i)slow", "reply": "Finally.", "latency_s": 5},
        {"when": "(?i)broken", "fail": True},
    ],
    "default": "You said: {{message}}",
}
RULES = SimulatorRules.model_validate(SIMULATOR_BLOCK)

SPEC = AssistantSpec(
    key="support", name="Support Bot", model="gpt-4o-mini", instructions="You help customers.", tools=(TOOL,)
)

PASSING_TURNS = (
    TurnSpec(user="I want a refund", expect=(CheckSpec(type="contains", value="30 days"),)),
    TurnSpec(
        user="Where is my order?",
        expect=(
            CheckSpec(type="tool_called", value="lookup_order"),
            CheckSpec(type="contains", value="shipped"),
        ),
    ),
    TurnSpec(user="Thanks!", expect=(CheckSpec(type="starts_with", value="You said"),)),
)


def make_task(
    api: Api | str,
    turns: tuple[TurnSpec, ...] = PASSING_TURNS,
    *,
    conversation_id: str = "support-job/refund#r0",
    tool_outputs: dict[str, str] | None = None,
    assistant_id: str | None = None,
    **limits: Any,
) -> ConversationTask:
    return ConversationTask(
        conversation_id=conversation_id,
        job="support-job",
        api=Api(api),
        model="gpt-4o-mini",
        assistant=SPEC.model_copy(update={"id": assistant_id}),
        turns=turns,
        tool_outputs={"lookup_order": TOOL_OUTPUT} if tool_outputs is None else tool_outputs,
        limits=Limits(**{"run_timeout_s": 10.0, **limits}),
    )


def turns(*texts: str, expect: tuple[CheckSpec, ...] = ()) -> tuple[TurnSpec, ...]:
    return tuple(TurnSpec(user=t, expect=expect) for t in texts)


def write_job(
    folder: Path,
    api: str,
    *,
    conversations: int = 1,
    conversation_turns: list[dict[str, Any]] | None = None,
    limits: dict[str, Any] | None = None,
    simulator: dict[str, Any] | None = None,
) -> Path:
    """A job file like the contract's example, `conversations` copies of one script."""
    script = conversation_turns or [
        {"user": "I want a refund", "expect": [{"contains": "30 days"}]},
        {"user": "Where is my order?", "expect": [{"tool_called": "lookup_order"}, {"contains": "shipped"}]},
        {"user": "Thanks!"},
    ]
    job = {
        "name": f"engine-{api}",
        "api": api,
        "model": "gpt-4o-mini",
        "assistants": {
            "support": {"name": "Support Bot", "instructions": "You help customers.", "tools": [TOOL]}
        },
        "conversations": [
            {"id": f"c{i:02d}", "tool_outputs": {"lookup_order": TOOL_OUTPUT}, "turns": script}
            for i in range(conversations)
        ],
        "limits": {"concurrency": 4, "run_timeout_s": 10, **(limits or {})},
        "simulator": simulator or SIMULATOR_BLOCK,
    }
    path = folder / f"engine-{api}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


class AnswerDroppingProxy:
    """A TCP proxy in front of a simulator that forwards every request, but for the first request
    whose start line matches `drop`, throws the server's answer away and closes the connection.

    That is the case the SDK cannot tell apart from a request that never arrived: the POST was
    processed (the run exists) and no answer came back. One request per upstream connection keeps
    the proxy simple (`Connection: close` is forced)."""

    def __init__(self, upstream_port: int, drop: str) -> None:
        self.upstream_port = upstream_port
        self.drop = drop.encode()
        self.dropped = 0
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            length = 0
            lines = head.split(b"\r\n")
            kept = [lines[0]]
            for h in lines[1:]:
                name, _, value = h.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
                if name.strip().lower() != b"connection" and h:
                    kept.append(h)
            body = reader.read(length) if length else b""
            request = b"\r\n".join([*kept, b"Connection: close", b"", b""]) + body
            answer = self._forward(request)
            if self.dropped == 0 and lines[0].startswith(self.drop):
                self.dropped += 1
                client.close()
                return
            client.sendall(answer)
            client.close()
            return

    def _forward(self, request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.upstream_port)) as up:
            up.sendall(request)
            chunks = []
            while True:
                data = up.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
