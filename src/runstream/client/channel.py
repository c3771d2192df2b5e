"""The gRPC side every SDK client shares: where the server is, one channel's options, and
statuses turned into runstream's typed exceptions."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from runstream.errors import from_status

DEFAULT_TARGET = "127.0.0.1:50051"
T = TypeVar("T")


def resolve_target(target: str | None) -> str:
    return target or os.environ.get("RUNSTREAM_URL") or DEFAULT_TARGET


def open_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", 8 * 1024 * 1024),
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            # A training job outlives server restarts: try again within seconds, not minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 3000),
            # A forked child must not reuse the parent's connections from the global pool.
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


def typed_errors(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_status(exc.code(), exc.details() or "") from None

    return wrapper
