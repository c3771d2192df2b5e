"""The web UI: a small page (`/`, assets under `/ui/`, shipped in the package, no CDN) over the
JSON API of api.py, plus the one thing that API cannot do: live points. `GET /api/v1/tail`
streams QueryService.TailMetrics as server-sent events, through the same guard and handler as
gRPC, so a chart grows while its run is RUNNING.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from runstream.errors import InvalidArgument
from runstream.server.auth.guard import CURRENT, Guard
from runstream.server.rpc import canonicaliser
from runstream.server.web import protojson
from runstream.server.web.api import failure
from runstream.server.web.calls import PREFIX, HttpCall
from runstream.wire.proto import query_pb2 as qpb

ASSETS = Path(__file__).resolve().parent / "assets"
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
    canonicalise = canonicaliser(qpb.TailMetricsRequest)

    async def tail(request: web.Request) -> web.StreamResponse:
        """`?run_id=R&key=K&from_step=N` (key repeatable, from_step optional): one event per
        message of new points, `{"key", "writer", "step": [...], "value": [...],
        "timestamp_ms": [...]}`, and an `end` event when the run has ended."""
        ctx = HttpCall(request)
        try:
            principal = await guard.admit(ctx, "QueryService", "TailMetrics")
            message = qpb.TailMetricsRequest(
                run_ids=request.query.getall("run_id", []), keys=request.query.getall("key", [])
            )
            if "from_step" in request.query:
                try:
                    message.from_step = int(request.query["from_step"])
                except ValueError:  # not a number, or not an int64
                    raise InvalidArgument("from_step must be an integer between -2^63 and 2^63-1") from None
            canonicalise(message)
            await guard.admit_request(principal, "QueryService", "TailMetrics", message)
            CURRENT.set(principal)
            stream = query.TailMetrics(message, ctx)
            first = await anext(stream, None)  # a refusal (an unknown run) is still an HTTP status
        except Exception as exc:  # every failure becomes a status the caller can act on
            return failure(f"GET {request.path}", exc)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        try:
            data = first
            while data is not None:
                await response.write(_event(data))
                data = await anext(stream, None)
            await response.write(b"event: end\ndata: {}\n\n")
        except (ConnectionResetError, grpc.RpcError):  # the page went away
            pass
        finally:
            await stream.aclose()
        return response

    return tail


def _event(data: bytes) -> bytes:
    return b"data: " + protojson.dumps(qpb.MetricPoints.FromString(data)).encode() + b"\n\n"
