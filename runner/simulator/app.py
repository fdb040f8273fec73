"""The Starlette application of a simulator: `/v1` routes of the three wire protocols plus the
unauthenticated, uncounted `/_simulator/stats` and `/_simulator/reset` for benchmarks."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from runner.simulator import (
    assistants,
    batches,
    chat,
    conversations,
    embeddings,
    files,
    models,
    responses,
)
from runner.simulator.core import Simulator
from runner.simulator.http import RAW_SEND_KEY, endpoint, json_response

METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH"]


class _KeepRawSend:
    """Remember the server's own `send` so a fault can drop the connection (see DroppedConnection)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND_KEY] = send
        await self.app(scope, receive, send)


def build_app(sim: Simulator) -> ASGIApp:
    routes: list[Any] = []
    for module, beta in (
        (assistants, True),
        (conversations, False),
        (responses, False),
        (chat, False),
        (models, False),
        (files, False),
        (batches, False),
        (embeddings, False),
    ):
        for path, handlers in module.routes():
            template = "/v1" + path
            routes.append(Route(template, endpoint(sim, template, handlers, beta), methods=METHODS))
    routes.append(Route("/v1/{path:path}", endpoint(sim, "/v1/{unknown}", {}), methods=METHODS))

    async def stats(request: Request) -> Response:
        return json_response(sim.stats.snapshot())

    async def reset(request: Request) -> Response:
        sim.stats.reset()
        return json_response({"reset": True})

    routes.append(Route("/_simulator/stats", stats, methods=["GET"]))
    routes.append(Route("/_simulator/reset", reset, methods=["POST"]))
    # A bare Router: Starlette's error middlewares add nothing here (endpoint() answers every
    # error itself) but cost a fifth of a run GET.
    return _KeepRawSend(Router(routes=routes))
