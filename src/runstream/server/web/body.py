"""Request bodies on the HTTP port, read one way: a JSON request (the API, MLflow's REST API,
/login) at most --max-request-body bytes, refused with 413 as soon as it says (Content-Length) or
shows (chunked) that it is larger, and whole within --http-request-timeout; an upload (MLflow's
artifact PUT) streamed in blocks, at most --max-upload-size, each block within the timeout.
So no request holds memory or a task without bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import StreamReader, web

from runstream.errors import InvalidArgument, ResourceExhausted


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # a JSON request
    max_upload_bytes: int  # an upload
    timeout_s: float  # a JSON request's whole body; an upload's every block


LIMITS = web.AppKey("body_limits", Limits)


class ClientGone(InvalidArgument):
    """The client closed its connection before the whole body came (not the database's doing:
    OSErrors elsewhere are taken for PostgreSQL or Redis going away)."""

    def __init__(self) -> None:
        super().__init__("the client closed the connection before sending the whole body")


class TooLarge(ResourceExhausted):
    """A body over its cap: 413 over HTTP (RESOURCE_EXHAUSTED's usual 429 says "retry", which
    would not help)."""


async def read(request: web.Request) -> bytes:
    limits = request.app[LIMITS]
    _check_declared(request, limits.max_bytes, "--max-request-body")
    try:
        return await asyncio.wait_for(_whole(request.content, limits.max_bytes), limits.timeout_s)
    except asyncio.TimeoutError:
        raise InvalidArgument(f"the body did not arrive within {limits.timeout_s:g} s") from None
    except ConnectionResetError:
        raise ClientGone() from None


async def _whole(content: StreamReader, limit: int) -> bytes:
    parts, size = [], 0
    async for part in content.iter_any():
        size += len(part)
        if size > limit:  # a chunked body says its size only as it comes
            raise TooLarge(f"the body is over the limit of {limit:,} bytes (--max-request-body)")
        parts.append(part)
    return b"".join(parts)


async def stream(request: web.Request, block: int) -> AsyncIterator[bytes]:
    """An upload's body in blocks of up to `block` bytes."""
    limits = request.app[LIMITS]
    _check_declared(request, limits.max_upload_bytes, "--max-upload-size")
    size = 0
    while True:
        try:
            data = await asyncio.wait_for(request.content.read(block), limits.timeout_s)
        except asyncio.TimeoutError:
            raise InvalidArgument(f"the upload stalled: nothing came for {limits.timeout_s:g} s") from None
        except ConnectionResetError:
            raise ClientGone() from None
        if not data:
            return
        size += len(data)
        if size > limits.max_upload_bytes:
            raise TooLarge(f"the file is over the limit of {limits.max_upload_bytes:,} bytes (--max-upload-size)")
        yield data


def _check_declared(request: web.Request, limit: int, flag: str) -> None:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"the body is {declared:,} bytes; the limit is {limit:,} ({flag})")
