"""What every query module shares: the connection type they take, the clock their rows are
stamped with, the channel the loaders NOTIFY on commit, and the database's own questions
(is it there, which version)."""

from __future__ import annotations

import time

import asyncpg

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# The loaders NOTIFY it, on commit, with the runs that got points (metrics.notify_loaded); live
# tails and WaitCommitted LISTEN (loading/notifications.py).
LOADED_CHANNEL = "runstream_loaded"


def now_ms() -> int:
    return int(time.time() * 1000)


async def ping(db: asyncpg.Pool | Conn) -> None:
    """One round trip to PostgreSQL (the health check)."""
    await db.fetchval("SELECT 1")


async def server_version(conn: Conn) -> str:
    """PostgreSQL's version, as `SHOW server_version` gives it."""
    return str(await conn.fetchval("SHOW server_version"))


# runs.deleted_ms as a run's lifecycle_stage becomes $2: when it was first deleted, NULL once active.
DELETED_MS = "CASE WHEN $2 = 'deleted' THEN coalesce(deleted_ms, (extract(epoch FROM now()) * 1000)::int8) END"
