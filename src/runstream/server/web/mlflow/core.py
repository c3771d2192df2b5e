"""What every MLflow endpoint shares: the route table (method and path pattern to handler),
calling one of our RPCs as gRPC would (token, scope, ids, the same handler), MLflow's error
bodies, and reading MLflow's JSON.

Each endpoint answers the HTTP methods MLflow's protos give it (405 otherwise): reads are GET
with the query string, writes POST, PATCH or DELETE with a JSON body sent as
application/json, so no write is a request a page of another origin can send without a CORS
preflight (which this server never grants). Fields are read by type (text, integer, number,
pairs, strings, objects, boolean), refusing what MLflow's server would refuse (a list where a
string goes, 1.5 as a step, a step past int64) with INVALID_PARAMETER_VALUE naming the field.
The login cookie is never read here (calls.py): MLflow's clients send `Authorization: Bearer`."""

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
from runstream.server.auth.guard import Guard
from runstream.server.rpc import door
from runstream.server.rpc.grpc import log_failure
from runstream.server.storage.replicas import Reads
from runstream.server.web.body import TooLarge, read
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
    grpc.StatusCode.DATA_LOSS: ("DATA_LOSS", 500),  # damaged storage, named in the message; not a bug
}
# The MLflow release whose REST API this serves (its client is pinned in the dev extras and
# tested against it); /version answers it, as MLflow's server answers its own.
MLFLOW_API_VERSION = "3.17.2"
Body = dict[str, Any]
Handler = Callable[["MlflowApi", Body, HttpCall], Awaitable["Body | web.StreamResponse"]]


@dataclass(frozen=True)
class Endpoint:
    """One MLflow endpoint: its path under a prefix (`{name}` segments become body fields,
    `{name:path}` takes the rest of the path) and the HTTP methods it answers."""

    prefix: str  # "mlflow", "mlflow-artifacts" or "3.0/mlflow"
    pattern: str
    methods: frozenset[str]
    handler: Handler
    regex: re.Pattern[str]
    public: bool  # answered without a token (server-info, as MLflow's)


ENDPOINTS: list[Endpoint] = []


def endpoint(pattern: str, *methods: str, prefix: str = "mlflow", public: bool = False) -> Callable[[Handler], Handler]:
    if not methods or not set(methods) <= {"GET", "POST", "PUT", "PATCH", "DELETE"}:
        raise ValueError(f"{pattern}: give the HTTP methods MLflow's protos give it")

    def register(fn: Handler) -> Handler:
        regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", pattern)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        ENDPOINTS.append(Endpoint(prefix, pattern, frozenset(methods), fn, re.compile(regex), public))
        return fn

    return register


def find(prefix: str, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | set[str]:
    """The endpoint of `method` at `path` with its path fields, or else the methods served
    there (none: no such endpoint)."""
    served: set[str] = set()
    for e in ENDPOINTS:
        if e.prefix == prefix and (match := e.regex.fullmatch(path)):
            if method in e.methods:
                return e, match.groupdict()
            served |= e.methods
    return served


class MlflowApi:
    def __init__(self, servicers: Mapping[str, tuple[Any, ...]], guard: Guard, reads: Reads | None = None) -> None:
        self.servicers, self.guard, self.reads = servicers, guard, reads

    def serves(self, service: str) -> bool:
        return service in self.servicers

    async def admit(self, service: str, method: str, request: Any, ctx: HttpCall) -> None:
        """As every door admits a call (rpc/door.py)."""
        principal = await door.caller(self.guard, ctx, service, method)
        await door.request(self.guard, principal, service, method, request)

    def handler(self, service: str, method: str) -> Any:
        found = door.handler(self.servicers.get(service, ()), method)
        if found is None:
            raise Unserved(f"this server does not serve {service}.{method}, which that MLflow endpoint needs")
        return found

    async def call(self, service: str, method: str, request: Any, ctx: HttpCall, raw: bytes | None = None) -> Any:
        """One of our unary RPCs, admitted, then its handler."""
        handler = self.handler(service, method)
        await self.admit(service, method, request, ctx)
        reply = await handler(raw if raw is not None else request, ctx)
        await door.written(self.reads, service, method)
        return reply


class Unserved(Exception):
    """An endpoint needs a service this process's role does not run."""


def add_routes(
    app: web.Application, servicers: Mapping[str, tuple[Any, ...]], guard: Guard, reads: Reads | None = None
) -> None:
    api = MlflowApi(servicers, guard, reads)

    async def handle(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        prefix = info["api"] if info["version"] == "2.0" else f"{info['version']}/{info['api']}"
        found = find(prefix, request.method, info["tail"])
        if isinstance(found, set):
            if not found:
                return error(
                    grpc.StatusCode.UNIMPLEMENTED, f"runstream does not serve {request.method} {request.path[:200]}"
                )
            allowed = ", ".join(sorted(found))
            refused = _error_body(
                "ENDPOINT_NOT_FOUND", f"{request.path[:200]} takes {allowed}, not {request.method}", 405
            )
            refused.headers["Allow"] = allowed
            return refused
        spec, params = found
        ctx = HttpCall(request)
        try:
            if guard.enabled and not spec.public:  # who is asking, before reading what
                await guard.authenticate(ctx)
            fields = {**await _body(request), **params}
            reply = await spec.handler(api, fields, ctx)
        except Unserved as exc:
            return error(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        except Exception as exc:  # every failure becomes MLflow's error body
            code, message = log_failure(f"{request.method} {request.path[:200]}", exc)
            return error(code, message, 413 if isinstance(exc, TooLarge) else None)
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
    """GET: the query string (a name given twice is a list). PUT (an artifact): nothing, its
    bytes are streamed by the handler. POST, PATCH, DELETE: a JSON object sent as
    application/json; a PATCH or DELETE without a body is an empty one."""
    if request.method == "GET":
        return {k: v if len(given := request.query.getall(k)) == 1 else given for k, v in request.query.items()}
    if request.method == "PUT":
        return {}
    if request.method != "POST" and not request.body_exists:
        return {}
    if request.content_type != "application/json":
        raise InvalidArgument("send the request's fields as JSON with Content-Type: application/json")
    raw = await read(request)
    try:
        parsed = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:  # what only Python's reader takes: bare NaN, integers past 64 bits
        try:
            parsed = json.loads(raw)
            json.dumps(parsed, ensure_ascii=False).encode()  # a lone surrogate ("\ud800"), which orjson refused
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and ...EncodeError are ValueErrors
            detail = "it nests too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise InvalidArgument(f"the body is not JSON: {detail}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument("the body must be a JSON object")
    return parsed


def error(code: grpc.StatusCode, message: str, status: int | None = None) -> web.Response:
    name, default = ERRORS.get(code, ("INTERNAL_ERROR", 500))
    if code == grpc.StatusCode.UNIMPLEMENTED:
        name, default = "ENDPOINT_NOT_FOUND", 404
    return _error_body(name, message, status or default)


def _error_body(name: str, message: str, status: int) -> web.Response:
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


INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
INTEGER = re.compile(r"\s*[+-]?[0-9]{1,20}\s*")


def text(body: Body, *names: str, required: bool = True) -> str:
    """A string field, the first of `names` given."""
    for name in names:
        value = body.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InvalidArgument(f"{name} must be a string, not {shown(value)}")
        return value
    if required:
        raise InvalidArgument(f"missing value for required parameter {names[0]!r}")
    return ""


def integer(body: Body, name: str, default: int = 0, bounds: tuple[int, int] = INT64) -> int:
    """An integer field, as protobuf's JSON takes one: a number without a fraction, or its digits
    in a string; within `bounds` (int64 unless the field is narrower)."""
    value = body.get(name)
    if value is None or value == "":
        return default
    # A float is taken while it is exact: past 2^53 it may be a rounded integer literal (orjson
    # reads integers beyond 64 bits as floats), and MLflow's client sends int64 as strings.
    exact = isinstance(value, float) and value.is_integer() and abs(value) <= 2**53
    if exact or (isinstance(value, str) and INTEGER.fullmatch(value)):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer, not {shown(value)}")
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be between {low:,} and {high:,}, not {shown(value)}")
    return value


def page_size(body: Body, default: int = 1000, most: int = 1000) -> int:
    """max_results of a search: more than `most` gives `most` (MLflow's client pages on)."""
    return min(integer(body, "max_results", default, (0, INT64[1])), most)


def number(body: Body, name: str) -> float:
    """A double field: a JSON number, or a string of one ("NaN", "Infinity" and "-Infinity" too)."""
    value = body.get(name)
    if not isinstance(value, bool) and isinstance(value, int | float | str):
        try:
            return float(value)
        except (ValueError, OverflowError):
            pass
    raise InvalidArgument(f"{name} must be a number, not {shown(value)}")


def boolean(body: Body, name: str) -> bool:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidArgument(f"{name} must be true or false, not {shown(value)}")


def objects(body: Body, name: str) -> list[Body]:
    """A repeated message field: a list of JSON objects."""
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidArgument(f"{name} must be a list of objects, not {shown(value)}")
    return value


def pairs(body: Body, name: str) -> dict[str, str]:
    """MLflow's [{"key": k, "value": v}, ...] as a dict; a key given again keeps its last value."""
    return {key: value for key, value in pair_list(body, name)}


def pair_list(body: Body, name: str) -> list[tuple[str, str]]:
    """MLflow's [{"key": k, "value": v}, ...] as given."""
    return [(text(p, "key"), text(p, "value", required=False)) for p in objects(body, name)]


def listed(items: Mapping[str, str]) -> list[Body]:
    return [{"key": k, "value": v} for k, v in sorted(items.items())]


def strings(body: Body, name: str) -> list[str]:
    """A repeated string field: a JSON list, or one or more query parameters."""
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{name} must be a list of strings, not {shown(value)}")
    return value


def shown(value: Any) -> str:
    """A client's value in a message: short, and never deep (a nested list's repr can recurse
    past Python's limit)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)[:100]
