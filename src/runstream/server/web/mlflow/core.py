"""What every MLflow endpoint shares: the route table (method and path pattern to handler),
calling one of our RPCs as gRPC would (token, scope, ids, the same handler), MLflow's error
bodies, and reading MLflow's JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from aiohttp import web

from runstream.errors import InvalidArgument
from runstream.server.auth.guard import CURRENT, Guard
from runstream.server.rpc import canonicaliser, log_failure
from runstream.server.web.calls import HttpCall

ERRORS = {
    grpc.StatusCode.NOT_FOUND: ("RESOURCE_DOES_NOT_EXIST", 404),
    grpc.StatusCode.INVALID_ARGUMENT: ("INVALID_PARAMETER_VALUE", 400),
    grpc.StatusCode.ALREADY_EXISTS: ("RESOURCE_ALREADY_EXISTS", 400),
    grpc.StatusCode.FAILED_PRECONDITION: ("INVALID_STATE", 400),
    grpc.StatusCode.UNAUTHENTICATED: ("UNAUTHENTICATED", 401),
    grpc.StatusCode.PERMISSION_DENIED: ("PERMISSION_DENIED", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("RESOURCE_EXHAUSTED", 429),
    grpc.StatusCode.UNAVAILABLE: ("TEMPORARILY_UNAVAILABLE", 503),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("TEMPORARILY_UNAVAILABLE", 503),
}
# The MLflow release whose REST API this serves (its client is pinned in the dev extras and
# tested against it); /version answers it, as MLflow's server answers its own.
MLFLOW_API_VERSION = "3.17.2"
Body = dict[str, Any]
Handler = Callable[["MlflowApi", Body, HttpCall], Awaitable["Body | web.StreamResponse"]]


@dataclass(frozen=True)
class Endpoint:
    """One MLflow endpoint: its path under a prefix (`{name}` segments become body fields,
    `{name:path}` takes the rest of the path) and the HTTP methods it answers (all if empty)."""

    prefix: str  # "mlflow", "mlflow-artifacts" or "3.0/mlflow"
    pattern: str
    methods: frozenset[str]
    handler: Handler
    regex: re.Pattern[str]
    public: bool  # answered without a token (server-info, as MLflow's)


ENDPOINTS: list[Endpoint] = []


def endpoint(pattern: str, *methods: str, prefix: str = "mlflow", public: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", pattern)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        ENDPOINTS.append(Endpoint(prefix, pattern, frozenset(methods), fn, re.compile(regex), public))
        return fn

    return register


def find(prefix: str, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
    for e in ENDPOINTS:
        if e.prefix == prefix and (match := e.regex.fullmatch(path)) and (not e.methods or method in e.methods):
            return e, match.groupdict()
    return None


class MlflowApi:
    def __init__(self, servicers: Mapping[str, tuple[Any, ...]], guard: Guard) -> None:
        self.servicers, self.guard = servicers, guard

    def serves(self, service: str) -> bool:
        return service in self.servicers

    async def admit(self, service: str, method: str, request: Any, ctx: HttpCall) -> None:
        """As gRPC admits a call: token and scope, ids canonicalised, the request checked
        against the token's experiments; the handler then sees the caller as CURRENT."""
        principal = await self.guard.admit(ctx, service, method)
        canonicaliser(type(request))(request)
        await self.guard.admit_request(principal, service, method, request)
        CURRENT.set(principal)

    def handler(self, service: str, method: str) -> Any:
        servicer = next((s for s in self.servicers.get(service, ()) if hasattr(s, method)), None)
        if servicer is None:
            raise Unserved(f"this server does not serve {service}.{method}, which that MLflow endpoint needs")
        return getattr(servicer, method)

    async def call(self, service: str, method: str, request: Any, ctx: HttpCall, raw: bytes | None = None) -> Any:
        """One of our unary RPCs, admitted, then its handler."""
        handler = self.handler(service, method)
        await self.admit(service, method, request, ctx)
        return await handler(raw if raw is not None else request, ctx)


class Unserved(Exception):
    """An endpoint needs a service this process's role does not run."""


def add_routes(app: web.Application, servicers: Mapping[str, tuple[Any, ...]], guard: Guard) -> None:
    api = MlflowApi(servicers, guard)

    async def handle(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        prefix = info["api"] if info["version"] == "2.0" else f"{info['version']}/{info['api']}"
        found = find(prefix, request.method, info["tail"])
        if found is None:
            return error(grpc.StatusCode.UNIMPLEMENTED, f"runstream does not serve {request.method} {request.path}")
        spec, params = found
        ctx = HttpCall(request)
        try:
            if guard.enabled and not spec.public:  # who is asking, before reading what
                await guard.authenticate(ctx)
            body = {**await _body(request), **params}
            reply = await spec.handler(api, body, ctx)
        except Unserved as exc:
            return error(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        except Exception as exc:  # every failure becomes MLflow's error body
            return error(*log_failure(f"{request.method} {request.path[:200]}", exc))
        if isinstance(reply, web.StreamResponse):
            return reply
        return web.Response(body=_json(reply), content_type="application/json")

    async def version(request: web.Request) -> web.Response:
        return web.Response(text=MLFLOW_API_VERSION)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    app.router.add_get("/version", version)
    app.router.add_get("/health", health)
    app.router.add_route(
        "*", r"/{root:api|ajax-api}/{version:2\.0|3\.0}/{api:mlflow|mlflow-artifacts}/{tail:.+}", handle
    )


async def _body(request: web.Request) -> Body:
    """GET: the query string (a repeated name gives a list). PUT: the query string too, the
    body being an artifact's bytes. Otherwise a JSON object."""
    query: Body = {
        k: request.query.getall(k) if len(request.query.getall(k)) > 1 else v for k, v in request.query.items()
    }
    if request.method in ("GET", "PUT"):
        return query
    raw = await request.read()
    try:
        parsed = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:  # what only Python's reader takes: bare NaN, integers past 64 bits
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument("the body must be a JSON object")
    return {**query, **parsed}


def error(code: grpc.StatusCode, message: str) -> web.Response:
    name, status = ERRORS.get(code, ("INTERNAL_ERROR", 500))
    if code == grpc.StatusCode.UNIMPLEMENTED:
        name, status = "ENDPOINT_NOT_FOUND", 404
    return web.json_response({"error_code": name, "message": message}, status=status)


def _json(reply: Body) -> bytes:
    """The reply as JSON, by orjson. orjson writes NaN and the infinities as null, so a reply
    with a null anywhere (rare: a None, a non-finite float, or "null" inside a string) is
    written again by the standard library, non-finite floats as MLflow's strings."""
    try:
        out = orjson.dumps(reply)
    except (orjson.JSONEncodeError, TypeError):  # e.g. an integer past 64 bits
        out = b"null"
    return out if b"null" not in out else json.dumps(finite(reply)).encode()


def finite(value: Any) -> Any:
    """MLflow writes NaN and the infinities as the strings protobuf's JSON uses."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def text(body: Body, *names: str, required: bool = True) -> str:
    for name in names:
        value = body.get(name)
        if value not in (None, ""):
            return str(value)
    if required:
        raise InvalidArgument(f"missing value for required parameter {names[0]!r}")
    return ""


def integer(body: Body, name: str, default: int = 0) -> int:
    value = body.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be an integer, not {value!r}") from None


def number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"metric value must be a number, not {value!r}") from None


def pairs(items: Any) -> dict[str, str]:
    """MLflow's [{"key": k, "value": v}, ...] as a dict."""
    if not isinstance(items, list):
        return {}
    return {str(t["key"]): str(t.get("value", "")) for t in items if isinstance(t, dict) and "key" in t}


def listed(items: Mapping[str, str]) -> list[Body]:
    return [{"key": k, "value": v} for k, v in sorted(items.items())]


def strings(body: Body, name: str) -> list[str]:
    """A repeated field: a JSON list, or one or more query parameters."""
    value = body.get(name) or []
    return [value] if isinstance(value, str) else [str(v) for v in value]
