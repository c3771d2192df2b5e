"""The web UI: a small page (`/`, assets under `/ui/`, shipped in the package, no CDN) over the
JSON API of api.py, plus the one thing that API cannot do: live points. `GET /api/v1/tail`
streams QueryService.TailMetrics' tail as server-sent events, through the same guard, limits and
shared readers as gRPC (query/tail.py), so a chart grows while its run is RUNNING.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from runstream.errors import InvalidArgument
from runstream.server.auth.guard import Guard
from runstream.server.query.feed import Message
from runstream.server.query.tail import Tail
from runstream.server.rpc import door
from runstream.server.rpc.grpc import log_failure
from runstream.server.web import protojson
from runstream.server.web.api import failure
from runstream.server.web.calls import PREFIX, HttpCall
from runstream.wire.proto import query_pb2 as qpb

ASSETS = Path(__file__).resolve().parent / "assets"
DISCONNECT_CHECK_S = 1.0  # how soon a tail whose page went away frees its slot
KEEPALIVE_S = 15.0
# Scripts, styles and fonts only from this server; images and previews also from the artifact
# store's signed URLs (S3 is another origin); nothing may frame the page.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob: https: http:; connect-src 'self' https: http:; "
        "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


def add_ui_routes(app: web.Application, servicers: Mapping[str, tuple[Any, ...]], guard: Guard) -> None:
    """Where the query service is served (roles all and query)."""
    if "QueryService" not in servicers:
        return
    index = (ASSETS / "index.html").read_bytes()
    # The shipped files by name: a request names one of them or gets 404 (no path is looked up
    # on disk, so no name can reach outside the folder or be too long for the file system).
    assets = {p.relative_to(ASSETS).as_posix(): p for p in ASSETS.rglob("*") if p.is_file()}

    async def asset(request: web.Request) -> web.StreamResponse:
        path = assets.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound(text="no such file")
        return web.FileResponse(path)

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=index, content_type="text/html", headers={**HEADERS, "Cache-Control": "no-cache"})

    @web.middleware
    async def asset_headers(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if request.path.startswith("/ui/"):
            response.headers.update(HEADERS)
        return response

    app.middlewares.append(asset_headers)
    app.router.add_get("/", page)
    # No icon: an empty answer, so browsers (on /login too) log no failed request.
    app.router.add_get("/favicon.ico", lambda request: _no_icon())
    app.router.add_get("/ui/{name:.+}", asset)
    app.router.add_get(PREFIX + "/tail", _tail_handler(servicers["QueryService"][0], guard))


async def _no_icon() -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})


def _tail_handler(query: Any, guard: Guard) -> Any:

    async def tail(request: web.Request) -> web.StreamResponse:
        """`?run_id=R&key=K&from_step=N` (key repeatable, from_step optional): one event per
        message of new points, `{"key", "writer", "step": [...], "value": [...],
        "timestamp_ms": [...]}`, an `end` event when the run has ended, or an `error` event
        `{"code", "message"}` when the tail cannot go on."""
        ctx = HttpCall(request)
        try:
            principal = await door.caller(guard, ctx, "QueryService", "TailMetrics")
            message = qpb.TailMetricsRequest(
                run_ids=request.query.getall("run_id", []), keys=request.query.getall("key", [])
            )
            if "from_step" in request.query:
                try:
                    message.from_step = int(request.query["from_step"])
                except ValueError:  # not a number, or not an int64
                    raise InvalidArgument("from_step must be an integer between -2^63 and 2^63-1") from None
            await door.request(guard, principal, "QueryService", "TailMetrics", message)
            stream = await query.open_tail(message, request.remote or "")
        except Exception as exc:  # every refusal (an unknown run, a limit) is still an HTTP status
            return failure(f"GET {request.path}", exc)
        try:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
            )
            await response.prepare(request)
            await _follow(request, response, stream)
        except ConnectionResetError:  # the page went away
            pass
        finally:
            stream.close()
        return response

    return tail


async def _follow(request: web.Request, response: web.StreamResponse, stream: Tail) -> None:
    quiet = 0.0
    while True:
        try:
            batch = await stream.take(DISCONNECT_CHECK_S)
        except Exception as exc:  # the headers are sent: the status goes in an event
            code, text = log_failure(f"GET {request.path}", exc)
            await response.write(
                b"event: error\ndata: " + json.dumps({"code": code.name, "message": text}).encode() + b"\n\n"
            )
            return
        if batch is None:
            await response.write(b"event: end\ndata: {}\n\n")
            return
        if batch:
            quiet = 0.0
            await response.write(b"".join(_event(m) for m in batch))
            continue
        # aiohttp does not cancel a handler whose client left: look, since a quiet tail never writes.
        if request.transport is None or request.transport.is_closing():
            return
        quiet += DISCONNECT_CHECK_S
        if quiet >= KEEPALIVE_S:  # a comment, so proxies do not close a quiet stream
            quiet = 0.0
            await response.write(b": keep-alive\n\n")


def _event(message: Message) -> bytes:
    """The message's server-sent event, made once and shared by every tail that sends it."""
    if message.event is None:
        points = protojson.dumps(qpb.MetricPoints.FromString(message.data))
        message.event = b"data: " + points + b"\n\n"
    return message.event
