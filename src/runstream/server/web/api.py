"""The JSON HTTP API: `POST /api/v1/<package.Service>/<Method>` with the request message as
JSON (protobuf's JSON mapping; field names as in the .proto), answered with the response
message as JSON. Every unary RPC of the services this process serves is a route, and each
goes through the same path as over gRPC: the token checked by the same guard against the same
scope table, ids canonicalised, the same handler. Errors are JSON `{"code", "message"}` with
the HTTP status of the gRPC code.

The token comes from `Authorization: Bearer ...` (scripts) or, for the web UI's own calls, the
cookie set by /login (calls.py says when). A body is JSON (Content-Type: application/json) of
at most --max-request-body bytes (413 beyond, body.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format

from runstream.errors import InvalidArgument
from runstream.server.auth.guard import Guard
from runstream.server.rpc import door
from runstream.server.rpc.grpc import RAW_REQUEST_METHODS, log_failure
from runstream.server.storage.replicas import Reads
from runstream.server.web import body, protojson
from runstream.server.web.calls import PREFIX, HttpCall

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


@dataclass
class Route:
    service: str  # without the package, as in the scope table
    method: str
    handler: Callable[[Any, Any], Any]
    request_class: Any
    raw_request: bool


def unary_methods(modules: Mapping[str, ModuleType]) -> Iterator[tuple[str, Any, str]]:
    """(service, method descriptor, path under /api/v1) of every unary method of `modules`'
    services: live tails and whole-series reads stay on gRPC."""
    for service, module in modules.items():
        desc = module.DESCRIPTOR.services_by_name[service]
        for method in desc.methods:
            if not (method.client_streaming or method.server_streaming):
                yield service, method, f"{PREFIX}/{desc.full_name}/{method.name}"


def routes(servicers: Mapping[str, tuple[Any, ...]], modules: Mapping[str, ModuleType]) -> dict[str, Route]:
    """Every unary method of the served services, by its path under /api/v1."""
    found: dict[str, Route] = {}
    served = {service: modules[service] for service in servicers}
    for service, method, path in unary_methods(served):
        request_class = getattr(modules[service], method.input_type.name)
        fn = door.handler(servicers[service], method.name)
        if fn is not None:
            found[path] = Route(service, method.name, fn, request_class, method.name in RAW_REQUEST_METHODS)
    return found


def add_api_routes(
    app: web.Application,
    servicers: Mapping[str, tuple[Any, ...]],
    modules: Mapping[str, ModuleType],
    guard: Guard,
    reads: Reads | None = None,
) -> dict[str, Route]:
    table = routes(servicers, modules)

    async def call(request: web.Request) -> web.Response:
        route = table.get(request.path)
        if route is None:
            return error_response(grpc.StatusCode.NOT_FOUND, f"no API method at {request.path[:200]}")
        if request.method != "POST":
            refused = error_response(
                grpc.StatusCode.INVALID_ARGUMENT, f"call API methods with POST, not {request.method[:20]}", 405
            )
            refused.headers["Allow"] = "POST"
            return refused
        ctx = HttpCall(request)
        try:
            principal = await door.caller(guard, ctx, route.service, route.method)
            if request.content_type != "application/json":
                raise InvalidArgument("send the request as JSON with Content-Type: application/json")
            message = _parse(await body.read(request), route.request_class)
            await door.request(guard, principal, route.service, route.method, message)
            reply = await route.handler(message.SerializeToString() if route.raw_request else message, ctx)
            await door.written(reads, route.service, route.method)
        except Exception as exc:  # every failure becomes a status the caller can act on
            return failure(f"POST {request.path[:200]}", exc)
        return web.Response(body=protojson.dumps(reply), content_type="application/json")

    app.router.add_route("*", PREFIX + "/{service}/{method}", call)
    return table


def _parse(body: bytes, request_class: Any) -> Any:
    message = request_class()
    try:
        text = body.decode().strip() or "{}"
        if not text.startswith("{"):  # protobuf's parser takes `[]` for an empty message
            raise json_format.ParseError("the body must be a JSON object")
        json_format.Parse(text, message)
    except (json_format.ParseError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InvalidArgument(f"the body is not a valid {request_class.DESCRIPTOR.name} in JSON: {detail}") from None
    return message


def failure(where: str, exc: Exception) -> web.Response:
    """The answer to a failed call, logged (rpc.log_failure): a body over the cap is 413."""
    code, message = log_failure(where, exc)
    return error_response(code, message, 413 if isinstance(exc, body.TooLarge) else None)


def error_response(code: grpc.StatusCode, message: str, status: int | None = None) -> web.Response:
    return web.json_response({"code": code.name, "message": message}, status=status or HTTP_STATUS.get(code, 500))
