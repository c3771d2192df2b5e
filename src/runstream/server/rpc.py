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

from runstream.errors import RunstreamError
from runstream.server.logs import new_request_id
from runstream.server.metrics import Metrics

log = logging.getLogger(__name__)

RAW_REQUEST_METHODS = {"StreamMetrics", "LogMetrics"}  # take the serialized batch as bytes
RAW_RESPONSE_METHODS = {"TailMetrics", "ReadMetrics"}  # yield MetricPoints already serialized (points.py)
REQUEST_ID = "x-request-id"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RunstreamError):
        return exc.code, str(exc)
    if isinstance(exc, asyncpg.PostgresConnectionError | OSError):
        return grpc.StatusCode.UNAVAILABLE, f"the database is unreachable: {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _request_id(ctx: grpc.aio.ServicerContext[Any, Any]) -> str:
    given = next((str(v) for k, v in ctx.invocation_metadata() or () if k == REQUEST_ID), None)
    rid = new_request_id(given)
    ctx.set_trailing_metadata(((REQUEST_ID, rid),))
    return rid


class _Observed:
    """Latency and failures of one RPC, with the labels bound once."""

    def __init__(self, metrics: Metrics, service: str, rpc: str) -> None:
        self.service, self.rpc = service, rpc
        self._metrics = metrics
        self._latency: Any = None  # bound on first use: an RPC never called adds no series to scrape

    def observe(self, seconds: float) -> None:
        if self._latency is None:
            self._latency = self._metrics.rpc_latency.labels(self.service, self.rpc)
        self._latency.observe(seconds)

    async def fail(self, ctx: grpc.aio.ServicerContext[Any, Any], exc: Exception, rid: str) -> None:
        code, message = status_for(exc)
        self._metrics.rpc_failures.labels(self.service, self.rpc, code.name).inc()
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s.%s failed", self.service, self.rpc)
        else:
            log.debug("%s.%s: %s %s", self.service, self.rpc, code.name, message)
        await ctx.abort(code, message, trailing_metadata=((REQUEST_ID, rid),))


def _unary(fn: Callable[[Any, Any], Awaitable[Any]], seen: _Observed) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rid = _request_id(ctx)
        t0 = time.perf_counter()
        try:
            return await fn(req, ctx)
        except Exception as exc:  # every failure becomes a status the client can act on
            await seen.fail(ctx, exc, rid)
        finally:
            seen.observe(time.perf_counter() - t0)

    return handler


def _stream(fn: Callable[[Any, Any], AsyncIterator[Any]], seen: _Observed) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(reqs: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        rid = _request_id(ctx)
        try:
            async for item in fn(reqs, ctx):
                yield item
        except Exception as exc:  # an error outside one item ends the stream with its status
            await seen.fail(ctx, exc, rid)

    return handler


def service_handler(
    servicer: Any, module: ModuleType, service: str, metrics: Metrics | None = None
) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """A generic handler for every method of `service` as declared in the generated
    `module`; the metric methods skip protobuf (de)serialization."""
    desc = module.DESCRIPTOR.services_by_name[service]
    metrics = metrics or Metrics()
    handlers = {}
    for method in desc.methods:
        fn = getattr(servicer, method.name)
        seen = _Observed(metrics, service, method.name)
        out_cls = getattr(module, method.output_type.name)
        raw = method.name in RAW_REQUEST_METHODS
        deserialize = None if raw else getattr(module, method.input_type.name).FromString
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
