"""The JSON HTTP API: `POST /api/v1/<package.Service>/<Method>` with the request message as
JSON (protobuf's JSON mapping; field names as in the .proto), answered with the response
message as JSON. Every unary RPC of the services this process serves is a route, and each
goes through the same path as over gRPC: the token checked by the same guard against the same
scope table, ids canonicalised, the same handler. Errors are JSON `{"code", "message"}` with
the HTTP status of the gRPC code.

The token comes from `Authorization: Bearer ...` (scripts) or the `runstream_token` cookie
set by /login (browsers). A browser cannot send a cookie with `Content-Type:
application/json` across sites without CORS, which this server never grants, so a page of
another site cannot call the API as the user (and the cookie is SameSite=Strict as well).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format

from runstream.errors import InvalidArgument
from runstream.server.auth.guard import CURRENT, Guard
from runstream.server.rpc import RAW_REQUEST_METHODS, canonicaliser, log_failure
from runstream.server.web import protojson

PREFIX = "/api/v1"
COOKIE = "runstream_token"
MAX_BODY = 8 * 1024 * 1024
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.INTERNAL: 500,
}


class HttpCall:
    """What the handlers and the guard read of a call, for one HTTP request: its metadata."""

    def __init__(self, request: web.Request) -> None:
        self.request = request  # for the few handlers that stream a body (MLflow's artifact PUT)
        metadata = []
        header = request.headers.get("Authorization")
        cookie = request.cookies.get(COOKIE)
        if header:
            metadata.append(("authorization", header))
        elif cookie:
            metadata.append(("authorization", f"Bearer {cookie}"))
        if user := request.headers.get("runstream-user"):
            metadata.append(("runstream-user", user))
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@dataclass
class Route:
    service: str  # without the package, as in the scope table
    method: str
    handler: Callable[[Any, Any], Any]
    request_class: Any
    raw_request: bool
    canonicalise: Callable[[Any], None]


def routes(servicers: Mapping[str, tuple[Any, ...]], modules: Mapping[str, ModuleType]) -> dict[str, Route]:
    """Every unary method of the served services, by its path under /api/v1."""
    found: dict[str, Route] = {}
    for service, servicer in servicers.items():
        desc = modules[service].DESCRIPTOR.services_by_name[service]
        for method in desc.methods:
            if method.client_streaming or method.server_streaming:
                continue  # live tails and whole-series reads stay on gRPC
            request_class = getattr(modules[service], method.input_type.name)
            fn = next(getattr(s, method.name) for s in servicer if hasattr(s, method.name))
            raw = method.name in RAW_REQUEST_METHODS
            found[f"{PREFIX}/{desc.full_name}/{method.name}"] = Route(
                service, method.name, fn, request_class, raw, canonicaliser(request_class)
            )
    return found


def add_api_routes(
    app: web.Application, servicers: Mapping[str, tuple[Any, ...]], modules: Mapping[str, ModuleType], guard: Guard
) -> dict[str, Route]:
    table = routes(servicers, modules)

    async def call(request: web.Request) -> web.Response:
        route = table.get(request.path)
        if route is None:
            return error_response(grpc.StatusCode.NOT_FOUND, f"no API method at {request.path[:200]}")
        ctx = HttpCall(request)
        try:
            principal = await guard.admit(ctx, route.service, route.method)
            if request.content_type != "application/json":
                raise InvalidArgument("send the request as JSON with Content-Type: application/json")
            if request.content_length is not None and request.content_length > MAX_BODY:
                raise InvalidArgument(f"the request is larger than {MAX_BODY:,} bytes")
            message = _parse(await request.read(), route.request_class)
            route.canonicalise(message)
            await guard.admit_request(principal, route.service, route.method, message)
            CURRENT.set(principal)  # each aiohttp request runs in its own task
            reply = await route.handler(message.SerializeToString() if route.raw_request else message, ctx)
        except Exception as exc:  # every failure becomes a status the caller can act on
            return error_response(*log_failure(f"POST {request.path[:200]}", exc))
        body = protojson.dumps(reply)
        return web.Response(body=body, content_type="application/json")

    app.router.add_post(PREFIX + "/{service}/{method}", call)
    return table


def _parse(body: bytes, request_class: Any) -> Any:
    message = request_class()
    try:
        json_format.Parse(body.decode() or "{}", message)
    except (json_format.ParseError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InvalidArgument(f"the body is not a valid {request_class.DESCRIPTOR.name} in JSON: {detail}") from None
    return message


def error_response(code: grpc.StatusCode, message: str) -> web.Response:
    return web.json_response({"code": code.name, "message": message}, status=HTTP_STATUS.get(code, 500))
