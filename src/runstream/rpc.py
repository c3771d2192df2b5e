"""Serving our servicers over grpc.aio: generic handlers built from the proto descriptors,
with every failure turned into a gRPC status a person can act on."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import asyncpg
import grpc

from runstream.errors import RunstreamError

log = logging.getLogger(__name__)

RAW_REQUEST_METHODS = {"StreamMetrics", "LogMetrics"}  # take the serialized batch as bytes
RAW_RESPONSE_METHODS = {"TailMetrics", "ReadMetrics"}  # yield MetricPoints already serialized (points.py)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RunstreamError):
        return exc.code, str(exc)
    if isinstance(exc, asyncpg.PostgresConnectionError | OSError):
        return grpc.StatusCode.UNAVAILABLE, f"the database is unreachable: {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _unary(fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(req, ctx)
        except Exception as exc:  # every failure becomes a status the client can act on
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", getattr(fn, "__name__", "handler"))
            await ctx.abort(code, message)

    return handler


def _stream(
    fn: Callable[[Any, Any], AsyncIterator[Any]],
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(reqs: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in fn(reqs, ctx):
                yield item
        except Exception as exc:  # an error outside one item ends the stream with its status
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("stream failed")
            await ctx.abort(code, message)

    return handler


def service_handler(servicer: Any, module: ModuleType, service: str) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """A generic handler for every method of `service` as declared in the generated
    `module`; the metric methods skip protobuf (de)serialization."""
    desc = module.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for method in desc.methods:
        fn = getattr(servicer, method.name)
        out_cls = getattr(module, method.output_type.name)
        raw = method.name in RAW_REQUEST_METHODS
        deserialize = None if raw else getattr(module, method.input_type.name).FromString
        serialize = None if method.name in RAW_RESPONSE_METHODS else out_cls.SerializeToString
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _stream(fn), request_deserializer=deserialize, response_serializer=out_cls.SerializeToString
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(fn), request_deserializer=deserialize, response_serializer=out_cls.SerializeToString
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _stream(fn), request_deserializer=deserialize, response_serializer=serialize
            )
        else:
            raise NotImplementedError(f"{method.full_name}: client-streaming methods are not wired")
    return grpc.method_handlers_generic_handler(desc.full_name, handlers)
