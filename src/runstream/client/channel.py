"""The gRPC side every SDK client shares: where the server is and how to reach it (plaintext,
or TLS for grpcs:// targets), the caller's token, one channel's options, and statuses turned
into runstream's typed exceptions.

Environment: RUNSTREAM_URL (target), RUNSTREAM_TOKEN (sent as `authorization: Bearer ...`),
RUNSTREAM_TLS=1 (TLS for a bare host:port), RUNSTREAM_TLS_CA (a CA bundle to verify the server
with, besides the system roots) and RUNSTREAM_TLS_CLIENT_CERT / RUNSTREAM_TLS_CLIENT_KEY
(a client certificate, for servers that require one).
"""

from __future__ import annotations

import functools
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc

from runstream.client import settings as sdk_settings
from runstream.errors import InvalidArgument, from_status

DEFAULT_TARGET = "127.0.0.1:50051"
T = TypeVar("T")


class Endpoint(NamedTuple):
    address: str  # host:port
    tls: bool


def resolve_target(target: str | None) -> str:
    return target or sdk_settings.current().url or DEFAULT_TARGET


def endpoint(target: str) -> Endpoint:
    """host:port and whether to use TLS, from `host:port`, `grpc://host:port` or `grpcs://host:port`."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        return Endpoint(target, sdk_settings.current().tls)
    if scheme in ("grpc", "grpcs") and rest and "/" not in rest.rstrip("/"):
        return Endpoint(rest.rstrip("/"), scheme == "grpcs")
    raise InvalidArgument(
        f"{target!r} is not a runstream server address: give the gRPC port as host:port, "
        "grpc://host:port or grpcs://host:port (TLS)"
    )


def _read(path: Path | None) -> bytes | None:
    return path.expanduser().read_bytes() if path is not None else None


def _tls_credentials() -> grpc.ChannelCredentials:
    given = sdk_settings.current()
    ca = _read(given.tls_ca)
    if ca is not None:
        # gRPC verifies against one bundle: the given CA and the system's roots together.
        ca += b"\n" + _system_roots()
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=_read(given.tls_client_key),
        certificate_chain=_read(given.tls_client_cert),
    )


def _system_roots() -> bytes:
    found = ssl.get_default_verify_paths().cafile
    return Path(found).read_bytes() if found and Path(found).is_file() else b""


def http_tls_context() -> ssl.SSLContext:
    """For https URLs (signed artifact URLs): the system roots plus RUNSTREAM_TLS_CA."""
    context = ssl.create_default_context()
    if (ca := sdk_settings.current().tls_ca) is not None:
        context.load_verify_locations(cafile=str(ca.expanduser()))
    return context


READ_AFTER = "runstream-read-after"


class _CallMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """What every call carries (once per call, so once per stream): `authorization: Bearer
    <token>` when there is a token, and the process's read-after position.

    This process reads its own writes: a write call answers with the database position that
    holds it (`runstream-read-after`, from servers whose reads may go to replicas), and every
    later call of any client of this process carries the highest one, so a server reading from
    a replica waits until that replica has it (or reads the primary)."""

    position = 0  # shared by every channel of the process
    _lock = threading.Lock()

    def __init__(self, token: str | None) -> None:
        self._token = (("authorization", f"Bearer {token}"),) if token else ()

    def _metadata(self, details: Any) -> Any:
        position = ((READ_AFTER, str(_CallMetadata.position)),) if _CallMetadata.position else ()
        return details._replace(metadata=(*(details.metadata or ()), *self._token, *position))

    @classmethod
    def _note(cls, call: Any) -> None:
        try:
            trailing = call.trailing_metadata() or ()
        except Exception:  # a call that never reached the server has none
            return
        for key, value in trailing:
            if key == READ_AFTER and value.isdigit():
                with cls._lock:
                    cls.position = max(cls.position, int(value))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = continuation(self._metadata(details), request)
        call.add_done_callback(self._note)
        return call

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._metadata(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._metadata(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._metadata(details), requests)


def open_channel(target: str, token: str | None = None) -> grpc.Channel:
    """A channel to `target`, TLS for grpcs://, carrying `token` (or RUNSTREAM_TOKEN) if any."""
    address, tls = endpoint(target)
    options = [
        ("grpc.max_send_message_length", 8 * 1024 * 1024),
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        # A training job outlives server restarts: try again within seconds, not minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 3000),
        # A forked child must not reuse the parent's connections from the global pool.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if tls:
        channel = grpc.secure_channel(address, _tls_credentials(), options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    token = token or sdk_settings.current().token or None
    return grpc.intercept_channel(channel, _CallMetadata(token.strip() if token else None))


def explain(code: grpc.StatusCode, details: str) -> str:
    """gRPC's words for a connection that failed, with what a TLS mismatch means to do."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return details
    if "Socket closed" in details:  # what a plaintext client hears from a TLS port
        return f"{details} (if the server uses TLS, connect with grpcs://host:port)"
    if "handshake" in details.lower() or "WRONG_VERSION_NUMBER" in details:
        return f"{details} (TLS failed: check RUNSTREAM_TLS_CA and the client certificate; no TLS: use host:port)"
    return details


def typed_errors(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_status(exc.code(), explain(exc.code(), exc.details() or "")) from None

    return wrapper
