"""One Redis keyspace (a URL and a prefix) serves one deployment: the PostgreSQL database its
loaders load into. The first server to start binds the keyspace to its database's deployment
id; a server of another database on the same keyspace is refused at start, in one line naming
both, instead of splitting the other's batches with it (and dead-lettering those whose runs
its database does not have). Entries carry the id too (keys.py), so a loader never takes
another deployment's entry even if the binding was lost (Redis flushed while both ran). A copy of a
database (pg_dump, a staging clone) carries its deployment id: the database also records where
the id was made, and a server on a copy is refused until told what the copy is.
"""

from __future__ import annotations

import asyncpg

from runstream.server.storage import installation
from runstream.server.streams.client import RedisClient
from runstream.server.streams.keys import Keys


class DeploymentConflict(Exception):
    """The keyspace belongs to another deployment."""


MOVED = ("adopt", "new")  # --database-moved: what a copied or moved database is


async def deployment_keys(pool: asyncpg.Pool, prefix: str, shards: int, moved: str = "") -> Keys:
    """The Redis keys of the deployment whose database `pool` connects to. A database that is
    not where its deployment id was made (a pg_dump copy, a pg_upgrade) is refused unless
    `moved` says what it is: "adopt", the original's successor (same deployment); "new", a copy
    (a deployment of its own: a new id, and its own Redis keyspace)."""
    async with pool.acquire() as conn, conn.transaction():
        deployment, made_in = await installation.deployment(conn)
        here = await installation.database_instance(conn)
        if made_in is None or (moved in MOVED and made_in != here):  # first recorded, or the operator's answer
            deployment = await installation.set_deployment(conn, here, new_id=moved == "new" and made_in is not None)
        elif made_in != here and not _same_where_unknown(made_in, here):
            raise DeploymentConflict(
                f"this database is a copy or a move of deployment {deployment}'s (made in {made_in}, now in "
                f"{here}); start with --database-moved adopt if it replaces that database (an upgrade, a "
                "migration), or --database-moved new if it is a copy with a deployment of its own"
            )
    return Keys(prefix, shards, deployment, here)


def _same_where_unknown(made_in: str, here: str) -> bool:
    """Instances equal but for a system identifier one side could not read (a managed service)."""
    (system_a, _, db_a), (system_b, _, db_b) = made_in.partition("/"), here.partition("/")
    return db_a == db_b and "" in (system_a, system_b)


async def bind(redis: RedisClient, keys: Keys, database: str, adopt: bool = False) -> None:
    """Bind the keyspace to `keys.deployment` in `keys.instance` (whose PostgreSQL is `database`,
    printable) if it is free; DeploymentConflict if another deployment has it, or another
    database of this deployment (the original of a copy) unless `adopt` hands it over."""
    if await redis.hsetnx(keys.binding, "id", keys.deployment):
        await redis.hset(keys.binding, mapping={"database": database, "instance": keys.instance})
        return
    owner = _text(await redis.hget(keys.binding, "id"))
    theirs = _text(await redis.hget(keys.binding, "database")) or "?"
    if owner != keys.deployment:
        raise DeploymentConflict(
            f"the Redis keys {keys.prefix}:* belong to deployment {owner} (PostgreSQL {theirs}), not to this "
            f"server's deployment {keys.deployment} (PostgreSQL {database}): give each deployment its own "
            "--redis-prefix or Redis"
        )
    where = _text(await redis.hget(keys.binding, "instance"))
    if where in ("", keys.instance) or _same_where_unknown(where, keys.instance) or adopt:
        await redis.hset(keys.binding, mapping={"database": database, "instance": keys.instance})
        return
    raise DeploymentConflict(
        f"the Redis keys {keys.prefix}:* belong to deployment {owner} in another database ({theirs}, {where}) "
        f"than this one ({database}, {keys.instance}): if this database replaces it, start with "
        "--database-moved adopt; if it is a copy, --database-moved new and a --redis-prefix of its own"
    )


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""
