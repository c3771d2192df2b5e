"""Connections every server process opens: the PostgreSQL pool and the Redis client from the
settings, the pool's figures for /metrics, and SIGINT/SIGTERM as an asyncio event."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import redis.asyncio as aioredis

from runstream.server.config import Settings
from runstream.server.metrics import Metrics

POOL_SAMPLE_S = 1.0


async def connect(settings: Settings, *, need_redis: bool = True) -> tuple[asyncpg.Pool, aioredis.Redis]:
    assert settings.postgres_url and settings.redis_url
    pool = await asyncpg.create_pool(
        settings.postgres_url,
        min_size=1,
        max_size=settings.pool_size,
        server_settings={"application_name": f"runstream-{settings.role}"},
    )
    tcp = not settings.redis_url.startswith("unix://")
    redis = aioredis.from_url(settings.redis_url, **({"socket_keepalive": True} if tcp else {}))
    if need_redis:
        await redis.ping()
    return pool, redis


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
