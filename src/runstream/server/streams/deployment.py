"""One Redis keyspace (a URL and a prefix) serves one deployment: the PostgreSQL database its
loaders load into. The first server to start binds the keyspace to its database's deployment
id; a server of another database on the same keyspace is refused at start, in one line naming
both, instead of splitting the other's batches with it (and dead-lettering those whose runs
its database does not have). Entries carry the id too (keys.py), so a loader never takes
another deployment's entry even if the binding was lost (Redis flushed while both ran).
"""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from runstream.server.storage import store
from runstream.server.streams.keys import Keys


class DeploymentConflict(Exception):
    """The keyspace belongs to another deployment."""


async def deployment_keys(pool: asyncpg.Pool, prefix: str, shards: int) -> Keys:
    """The Redis keys of the deployment whose database `pool` connects to."""
    async with pool.acquire() as conn:
        return Keys(prefix, shards, await store.deployment_id(conn))


async def bind(redis: aioredis.Redis, keys: Keys, database: str) -> None:
    """Bind the keyspace to `keys.deployment` (whose PostgreSQL is `database`, printable) if
    it is free; DeploymentConflict if another deployment has it."""
    if await redis.hsetnx(keys.binding, "id", keys.deployment):
        await redis.hset(keys.binding, "database", database)
        return
    owner = _text(await redis.hget(keys.binding, "id"))
    if owner != keys.deployment:
        theirs = _text(await redis.hget(keys.binding, "database")) or "?"
        raise DeploymentConflict(
            f"the Redis keys {keys.prefix}:* belong to deployment {owner} (PostgreSQL {theirs}), not to this "
            f"server's deployment {keys.deployment} (PostgreSQL {database}): give each deployment its own "
            "--redis-prefix or Redis"
        )


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""
