"""The web app of `runner view`: batches on Redis and transcript files, as pages and as JSON.

* Endpoints that read Redis or files are plain functions (Starlette runs them in threads).
* Pages are rendered on the server with Jinja2 autoescaping, so every piece of model or user text
  reaches the browser escaped; the strict Content-Security-Policy (`CSP`) allows only this app's
  own script and style, so even an unescaped reply could not run or load anything.
* Lists are filtered, sorted and paged on the server (`sources.ConversationIndex`): a page of
  10,000 conversations sends 50 rows. The page's script polls the JSON figures (and the rows) every
  `POLL_MS` while a batch runs; without scripts the pages still read fine.
* Read-only unless `allow_actions`: then retry-failed and cancel are POST forms carrying a per-
  server token (a page of another site cannot forge them), going through `runner.queue.enqueue`.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
import redis as redis_lib
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner.errors import RunnerError, UnknownBatchError
from runner.queue.enqueue import cancel_batch, retry_batch
from runner.reports.diff import diff_records
from runner.reports.summary import describe_check, format_ms, summarize
from runner.view import charts
from runner.view.figures import batch_figures, batches_overview, job_limits, pass_rate
from runner.view.sources import SORTS, STATUS_FILTERS, BatchSource, ConversationIndex, FileSource

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
POLL_MS = 2000
"""How often the page's script asks for fresh figures while a batch runs."""

_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Adds the CSP and friends to every response (a plain ASGI middleware: cheap, stream-safe)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass
class ViewConfig:
    redis: redis_lib.Redis | None = None
    redis_label: str = ""  # the Redis URL with its password masked
    files: Sequence[str] = ()
    allow_actions: bool = False
    allowed_hosts: Sequence[str] = ("*",)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    queue_secret: str | None = field(default=None, repr=False)  # signs what retry enqueues


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("runner.view") / "templates")),
        autoescape=True,
    )
    env.filters["ms"] = format_ms
    env.filters["pct"] = lambda v: "-" if v is None else f"{v:.1%}"
    env.filters["check"] = describe_check
    env.filters["tojson_text"] = lambda v: json.dumps(v, ensure_ascii=False, indent=1)
    return env


def create_app(config: ViewConfig) -> Starlette:
    env = _env()
    batch_sources: dict[str, BatchSource] = {}
    file_sources = [FileSource(p) for p in config.files]
    for source in file_sources:
        source.refresh()  # read now: a broken file is bad input before serving, and first paint is quick

    def page(name: str, request: Request, **values: Any) -> HTMLResponse:
        html = env.get_template(name).render(
            request=request, config=config, files=file_sources, poll_ms=POLL_MS, **values
        )
        return HTMLResponse(html)

    def redis() -> redis_lib.Redis:
        if config.redis is None:
            raise HTTPException(404, "no Redis: `runner view` was started on files only")
        return config.redis

    def batch_source(batch_id: str) -> BatchSource:
        source = batch_sources.get(batch_id)
        if source is None:
            source = BatchSource(redis(), batch_id)
            if not source.batch.exists():
                raise HTTPException(404, f"no batch {batch_id} on this Redis")
            batch_sources[batch_id] = source
        return source

    def file_source(n: int) -> FileSource:
        if not 0 <= n < len(file_sources):
            raise HTTPException(404, "no such file")
        return file_sources[n]

    def index(request: Request) -> Response:
        overview = batches_overview(config.redis) if config.redis is not None else None
        return page("index.html", request, overview=overview)

    def api_batches(request: Request) -> Response:
        return JSONResponse(batches_overview(redis()))

    def _list(request: Request, index: ConversationIndex) -> dict[str, Any]:
        p = request.query_params
        status = p.get("status", "all") if p.get("status") in STATUS_FILTERS else "all"
        sort = p.get("sort", "id") if p.get("sort") in SORTS else "id"
        try:
            number = int(p.get("page", "1"))
        except ValueError:
            number = 1
        query: dict[str, Any] = {
            "status": status,
            "check": p.get("check", ""),
            "q": p.get("q", ""),
            "sort": sort,
            "desc": p.get("desc") == "1",
        }
        return {
            "query": query,
            "result": index.query(**query, page=number),
            "check_types": index.failed_check_types(),
        }

    def _charts(index: ConversationIndex) -> dict[str, Markup]:
        # The SVG builders escape every text they put in (see runner.view.charts).
        return {
            "latency_svg": Markup(index.derived("latency", charts.latency_svg)),
            "passrate_svg": Markup(index.derived("passrate", charts.pass_rate_svg)),
        }

    def batch_page(request: Request) -> Response:
        source = batch_source(request.path_params["batch_id"])
        info = source.batch.require()
        index = source.refresh()
        if request.query_params.get("part") == "rows":
            return page("rows.html", request, base=request.url.path, **_list(request, index))
        return page(
            "batch.html",
            request,
            base=request.url.path,
            figures=batch_figures(info),
            limits=job_limits(source.batch.redis, info),
            message=request.query_params.get("message", ""),
            **_list(request, index),
            **_charts(index),
        )

    def api_batch(request: Request) -> Response:
        source = batch_source(request.path_params["batch_id"])
        return JSONResponse(batch_figures(source.batch.require()))

    def file_page(request: Request) -> Response:
        source = file_source(request.path_params["n"])
        index = source.refresh()
        if request.query_params.get("part") == "rows":
            return page("rows.html", request, base=request.url.path, **_list(request, index))
        s = index.derived("summary", summarize)
        counts = {"passed": s.passed, "failed": s.failed, "errors": s.errors}
        figures = {
            "total": s.conversations,
            "done": s.conversations,
            **counts,
            "nochecks": s.no_checks,
            "tokens": s.tokens,
            "pass_rate": pass_rate(counts),
        }
        return page(
            "file.html",
            request,
            base=request.url.path,
            source=source,
            figures=figures,
            **_list(request, index),
            **_charts(index),
        )

    def _conversation(request: Request, index: ConversationIndex, back: str) -> Response:
        cid = request.query_params.get("id", "")
        with index.lock:
            record = index.records.get(cid)
            row = index.rows.get(cid)
        if row is None:
            raise HTTPException(404, "no such conversation")
        return page("conversation.html", request, record=record, row=row, back=back)

    def batch_conversation(request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        return _conversation(request, batch_source(batch_id).refresh(), f"/batch/{batch_id}")

    def file_conversation(request: Request) -> Response:
        n = request.path_params["n"]
        return _conversation(request, file_source(n).refresh(), f"/file/{n}")

    def diff_page(request: Request) -> Response:
        try:
            old, new = (file_source(int(request.query_params[k])) for k in ("old", "new"))
        except (KeyError, ValueError):
            raise HTTPException(400, "diff needs ?old=N&new=M (file numbers)") from None
        with old.refresh().lock, new.refresh().lock:
            old_records, new_records = old.index.records, new.index.records
            result = diff_records(list(old_records.values()), list(new_records.values()))
        return page(
            "diff.html",
            request,
            old=old,
            new=new,
            result=result,
            old_records=old_records,
            new_records=new_records,
        )

    async def action(request: Request) -> Response:
        if not config.allow_actions:
            raise HTTPException(403, "read-only: start `runner view --allow-actions` to retry or cancel")
        # A urlencoded form of one field: the standard library parses it (no python-multipart).
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        if not secrets.compare_digest((form.get("token") or [""])[0], config.token):
            raise HTTPException(403, "missing or wrong form token")
        batch_id = request.path_params["batch_id"]
        source = batch_source(batch_id)
        try:
            if request.path_params["what"] == "retry":
                n = retry_batch(batch_id, source.batch.redis, secret=config.queue_secret)
                message = f"{n} failed or errored conversation{'s' if n != 1 else ''} enqueued again"
            elif request.path_params["what"] == "cancel":
                n = cancel_batch(batch_id, source.batch.redis)
                message = f"batch cancelled: {n} queued conversation{'s' if n != 1 else ''} dropped"
            else:
                raise HTTPException(404)
        except UnknownBatchError as e:
            raise HTTPException(404, str(e)) from None
        except RunnerError as e:
            message = f"failed: {e}"
        query = urllib.parse.urlencode({"message": message})
        return RedirectResponse(f"/batch/{urllib.parse.quote(batch_id)}?{query}", status_code=303)

    async def error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = page("error.html", request, status=exc.status_code, detail=exc.detail or "")
        response.status_code = exc.status_code
        return response

    static = StaticFiles(directory=str(resources.files("runner.view") / "static"))
    routes = [
        Route("/", index, name="index"),
        Route("/api/batches", api_batches),
        Route("/batch/{batch_id}", batch_page, name="batch"),
        Route("/api/batch/{batch_id}", api_batch),
        Route("/batch/{batch_id}/conversation", batch_conversation),
        Route("/batch/{batch_id}/{what}", action, methods=["POST"]),
        Route("/file/{n:int}", file_page),
        Route("/file/{n:int}/conversation", file_conversation),
        Route("/diff", diff_page),
        Mount("/static", static, name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts)),
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: error})
