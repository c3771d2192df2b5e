"""Connections every server process opens: the PostgreSQL pool and the Redis client from the
settings, the pool's figures for /metrics, and SIGINT/SIGTERM as an asyncio event."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote

import asyncpg

from runstream.server.runtime.config import Settings
from runstream.server.runtime.metrics import Metrics
from runstream.server.storage.failures import database_away
from runstream.server.storage.replicas import NotAReplica, Reads
from runstream.server.streams.client import REDIS_ERRORS, RedisClient, open_redis

log = logging.getLogger(__name__)
T = TypeVar("T")

POOL_SAMPLE_S = 1.0
RETRY_S = 1.0  # between attempts while PostgreSQL is away
PREFLIGHT_S = 10.0


async def connect(settings: Settings, *, need_redis: bool = True) -> tuple[asyncpg.Pool, RedisClient]:
    assert settings.postgres_url and settings.redis_url
    asyncio.get_running_loop().set_exception_handler(_lost_connections_as_warnings)
    pool = await asyncpg.create_pool(
        settings.postgres_url,
        min_size=1,
        max_size=settings.pool_size,
        server_settings={"application_name": f"runstream-{settings.role}"},
    )
    tcp = not settings.redis_url.startswith("unix://")
    redis = open_redis(settings.redis_url, **({"socket_keepalive": True} if tcp else {}))
    if need_redis:
        await redis.ping()
    return pool, redis


async def open_reads(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Reads:
    """Where this process's reads go: the replicas of --postgres-read-url (pools that connect on
    first use, so a replica down at start delays nothing), and `pool`, the primary."""
    replicas = {
        printable_url(url): await asyncpg.create_pool(
            url,
            min_size=0,
            max_size=settings.pool_size,
            server_settings={"application_name": f"runstream-{settings.role}"},
        )
        for url in settings.postgres_read_url
    }
    reads = Reads(pool, replicas, settings.replica_wait_s, lambda where: metrics.reads.labels(where).inc())
    try:
        await reads.check()
    except NotAReplica as exc:
        await reads.close()
        raise SystemExit(f"runstream: {exc}") from None
    return reads


def _lost_connections_as_warnings(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncpg reports a connection killed mid-operation to the event loop too (a waiter nobody
    awaits any more, a pooled connection reset inside its transaction). The work it was doing is
    retried on a fresh connection, so that is one warning line, not an ERROR with a traceback."""
    exc = context.get("exception")
    message = str(context.get("message", ""))
    resetting = message.startswith("Resetting connection with an active transaction")
    if resetting or (exc is not None and database_away(exc)):
        log.warning("PostgreSQL connection lost mid-operation (retried): %s %s", message, exc or "")
        return
    loop.default_exception_handler(context)


async def preflight(settings: Settings, *, need_redis: bool = True) -> str | None:
    """Why PostgreSQL or Redis cannot be used with these settings, in one line naming the URL
    (without its password) and the flag; None when both answer. Asked before anything starts."""
    assert settings.postgres_url and settings.redis_url
    try:
        conn = await asyncio.wait_for(asyncpg.connect(settings.postgres_url), PREFLIGHT_S)
        await conn.close()
    except (OSError, asyncio.TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        why = printable_error(_reason(exc), settings.postgres_url)
        return f"cannot use PostgreSQL at {printable_url(settings.postgres_url)} (--postgres-url): {why}"
    if need_redis:
        try:
            client = open_redis(settings.redis_url, socket_connect_timeout=PREFLIGHT_S)
            try:
                await client.ping()
            finally:
                await client.aclose()
        except (OSError, ValueError, TypeError, *REDIS_ERRORS) as exc:  # TypeError: an unknown URL option
            why = printable_error(_reason(exc), settings.redis_url)
            return f"cannot use Redis at {printable_url(settings.redis_url)} (--redis-url): {why}"
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:300] or type(exc).__name__


def printable_url(url: str | None) -> str:
    """A URL fit to print: without its password (after the user, or as a password= option)."""
    if not url:
        return "?"
    scheme, sep, rest = url.partition("://")
    creds, at, hosts = rest.rpartition("@")
    if sep and at:
        url = f"{scheme}://{creds.split(':', 1)[0]}@{hosts}"
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def printable_error(text: str, url: str | None) -> str:
    """An error about `url` fit to print: no piece of its password (a driver may quote the URL
    it could not parse, cut where the password held a / or a #)."""
    creds = (url or "").partition("://")[2].rpartition("@")[0]
    secret = creds.partition(":")[2]
    for piece in sorted({secret, unquote(secret), *re.split(r"[/?#@]", secret)}, key=len, reverse=True):
        if len(piece) >= 3:
            text = text.replace(piece, "***")
    return text


async def while_database_away(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt` until PostgreSQL answers it (a connection killed, a failover, a restart): a
    process starting in such a moment waits instead of dying with a traceback."""
    said = False
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not database_away(exc):
                raise
            if not said:
                log.warning("%s: PostgreSQL is away (%s: %s); trying again every %.0f s", what, type(exc).__name__,
                            exc, RETRY_S)  # fmt: skip
                said = True
            await asyncio.sleep(RETRY_S)


def stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def sample_pool(pool: asyncpg.Pool, metrics: Metrics) -> None:
    while True:
        metrics.sample_pool(pool)
        await asyncio.sleep(POOL_SAMPLE_S)
