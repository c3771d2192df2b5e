"""Serving our servicers over grpc.aio: generic handlers built from the proto descriptors,
with every failure turned into a gRPC status a person can act on, a request id on every
call (the caller's `x-request-id`, or a new one, sent back in the trailing metadata),
and the handling time of unary calls in `runstream_rpc_latency_seconds`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import asyncpg
import grpc

from runstream.errors import InvalidArgument, RunstreamError
from runstream.server.auth.guard import Guard
from runstream.server.auth.policy import scope_of
from runstream.server.rpc import door
from runstream.server.runtime.logs import new_request_id
from runstream.server.runtime.metrics import Metrics
from runstream.server.storage import replicas
from runstream.server.storage.failures import database_away
from runstream.server.storage.replicas import Reads

log = logging.getLogger(__name__)

RAW_REQUEST_METHODS = {"StreamMetrics", "LogMetrics"}  # take the serialized batch as bytes
RAW_RESPONSE_METHODS = {"TailMetrics", "ReadMetrics"}  # yield MetricPoints already serialized (points.py)
REQUEST_ID = "x-request-id"
READ_AFTER = "runstream-read-after"  # the WAL position a caller's reads must see (storage/replicas.py)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets. INTERNAL is a bug and says nothing of the server's
    insides (the log has them); a value PostgreSQL refuses (SQLSTATE class 22) is the caller's."""
    if isinstance(exc, RunstreamError):
        return exc.code, str(exc)
    if database_away(exc):
        return grpc.StatusCode.UNAVAILABLE, "the database is unreachable; retry later"
    if isinstance(exc, asyncpg.PostgresError) and str(exc.sqlstate).startswith("22"):
        return grpc.StatusCode.INVALID_ARGUMENT, f"a value in the request was refused: {str(exc).splitlines()[0][:200]}"
    return grpc.StatusCode.INTERNAL, "internal error: a bug in runstream; the server log has the details"


def _request_id(ctx: grpc.aio.ServicerContext[Any, Any]) -> str:
    given = next((str(v) for k, v in ctx.invocation_metadata() or () if k == REQUEST_ID), None)
    rid = new_request_id(given)
    ctx.set_trailing_metadata(((REQUEST_ID, rid),))
    return rid


class Undecodable:
    """What a request deserializer returns for bytes that are not the message it expects, so
    the call ends with INVALID_ARGUMENT and one log line rather than gRPC's UNKNOWN and a
    traceback."""

    def __init__(self, message_type: str, error: Exception) -> None:
        self.message_type, self.error = message_type, error

    def refuse(self) -> InvalidArgument:
        detail = str(self.error).splitlines()[0][:200] if str(self.error) else type(self.error).__name__
        return InvalidArgument(f"the request is not a valid {self.message_type} message: {detail}")


def lenient(message_class: Any) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # protobuf's DecodeError, or anything else its parser raises
            return Undecodable(name, exc)

    return deserialize


class _RateLimited:
    """At most `per_window` log lines a window for one kind of event, then a count of the rest,
    so a flood of bad requests cannot flood the log."""

    def __init__(self, per_window: int = 20, window_s: float = 10.0) -> None:
        self.per_window, self.window_s = per_window, window_s
        self._start, self._lines, self._suppressed = 0.0, 0, 0

    def allow(self) -> tuple[bool, int]:
        """Whether to log now, and how many lines were held back since the last one logged."""
        now = time.monotonic()
        if now - self._start >= self.window_s:
            self._start, self._lines = now, 0
        if self._lines < self.per_window:
            self._lines += 1
            held, self._suppressed = self._suppressed, 0
            return True, held
        self._suppressed += 1
        return False, 0


_refusals = _RateLimited()


def log_failure(where: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message for `exc`, logged: a bug with its traceback, a refusal in one
    line (rate-limited, so a flood of bad requests cannot flood the log)."""
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", where)
    elif code == grpc.StatusCode.DATA_LOSS:  # damaged storage: an operator must hear of it every time
        log.error("%s: %s", where, message)
    else:
        show, held = _refusals.allow()
        if show:
            more = f" ({held} more refusals not logged)" if held else ""
            log.info("%s: %s %s%s", where, code.name, message[:300], more)
    return code, message


class _Observed:
    """Latency and failures of one RPC, with the labels bound once, and its access check."""

    def __init__(self, metrics: Metrics, service: str, rpc: str, guard: Guard | None, reads: Reads | None) -> None:
        self.service, self.rpc = service, rpc
        self._metrics = metrics
        self._guard = guard
        self.reads = reads
        self._latency: Any = None  # bound on first use: an RPC never called adds no series to scrape

    def observe(self, seconds: float) -> None:
        if self._latency is None:
            self._latency = self._metrics.rpc_latency.labels(self.service, self.rpc)
        self._latency.observe(seconds)

    async def admit(self, ctx: grpc.aio.ServicerContext[Any, Any], req: Any) -> None:
        """The one way in (door.py): the caller, then (once it decoded) the request."""
        principal = await door.caller(self._guard, ctx, self.service, self.rpc)
        if isinstance(req, Undecodable):
            raise req.refuse()
        await door.request(self._guard, principal, self.service, self.rpc, req)
        if (given := next((str(v) for k, v in ctx.invocation_metadata() or () if k == READ_AFTER), None)) is not None:
            try:
                replicas.READ_AFTER.set(replicas.read_after(given))
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None

    async def written(self, ctx: grpc.aio.ServicerContext[Any, Any], rid: str) -> None:
        """A call that may have written tells its caller the WAL position its reads must see."""
        if lsn := await door.written(self.reads, self.service, self.rpc):
            ctx.set_trailing_metadata(((REQUEST_ID, rid), (READ_AFTER, str(lsn))))

    async def fail(self, ctx: grpc.aio.ServicerContext[Any, Any], exc: Exception, rid: str) -> None:
        code, message = log_failure(f"{self.service}.{self.rpc}", exc)
        if code == grpc.StatusCode.INTERNAL:
            message += f" (request id {rid})"
        self._metrics.rpc_failures.labels(self.service, self.rpc, code.name).inc()
        await ctx.abort(code, message, trailing_metadata=((REQUEST_ID, rid),))


def _unary(fn: Callable[[Any, Any], Awaitable[Any]], seen: _Observed) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rid = _request_id(ctx)
        t0 = time.perf_counter()
        try:
            await seen.admit(ctx, req)
            reply = await fn(req, ctx)
            await seen.written(ctx, rid)
            return reply
        except Exception as exc:  # every failure becomes a status the client can act on
            await seen.fail(ctx, exc, rid)
        finally:
            seen.observe(time.perf_counter() - t0)

    return handler


def _stream(fn: Callable[[Any, Any], AsyncIterator[Any]], seen: _Observed) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(reqs: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        rid = _request_id(ctx)
        try:
            await seen.admit(ctx, reqs)  # a unary request (server-streaming), or the request stream
            async for item in fn(reqs, ctx):
                yield item
        except Exception as exc:  # an error outside one item ends the stream with its status
            await seen.fail(ctx, exc, rid)

    return handler


def service_handler(
    servicer: Any,
    module: ModuleType,
    service: str,
    metrics: Metrics | None = None,
    guard: Guard | None = None,
    reads: Reads | None = None,
) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """A generic handler for every method of `service` as declared in the generated `module`,
    served by `servicer` (or the first of a tuple of them that has it), each checking the
    caller's token with `guard` first; the metric methods skip protobuf (de)serialization.
    A method without an access decision (auth/policy.py) is a KeyError here, at start."""
    desc = module.DESCRIPTOR.services_by_name[service]
    metrics = metrics or Metrics()
    servicers = servicer if isinstance(servicer, tuple) else (servicer,)
    handlers = {}
    for method in desc.methods:
        scope_of(service, method.name)
        fn = door.handler(servicers, method.name)
        if fn is None:
            raise KeyError(f"no servicer of {service} has {method.name}")
        seen = _Observed(metrics, service, method.name, guard, reads)
        out_cls = getattr(module, method.output_type.name)
        raw = method.name in RAW_REQUEST_METHODS
        in_cls = getattr(module, method.input_type.name)
        deserialize = None if raw else lenient(in_cls)
        serialize = None if method.name in RAW_RESPONSE_METHODS else out_cls.SerializeToString
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _stream(fn, seen), request_deserializer=deserialize, response_serializer=out_cls.SerializeToString
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(fn, seen), request_deserializer=deserialize, response_serializer=out_cls.SerializeToString
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _stream(fn, seen), request_deserializer=deserialize, response_serializer=serialize
            )
        else:
            raise NotImplementedError(f"{method.full_name}: client-streaming methods are not wired")
    return grpc.method_handlers_generic_handler(desc.full_name, handlers)
