"""What an installation holds once, for all its server processes: the deployment id its Redis
keyspace is bound to, and its secrets."""

from __future__ import annotations

import secrets

import asyncpg

from runstream.server.storage.db import Conn


async def deployment(conn: Conn) -> tuple[str, str | None]:
    """This database's deployment id (made by migration 0010) and the instance it was made in."""
    row = await conn.fetchrow("SELECT deployment_id::text AS id, instance FROM deployment")
    if row is None:  # migration 0010 made it; only a hand-edited database has none
        raise RuntimeError("the deployment table is empty: restore its row (see migration 0010)")
    return str(row["id"]), row["instance"]


async def set_deployment(conn: Conn, instance: str, new_id: bool = False) -> str:
    """Record the instance this database is now in (and give it a new deployment id)."""
    return str(
        await conn.fetchval(
            """UPDATE deployment SET instance = $1,
                      deployment_id = CASE WHEN $2 THEN gen_random_uuid() ELSE deployment_id END
               RETURNING deployment_id::text""",
            instance,
            new_id,
        )
    )


async def database_instance(conn: Conn) -> str:
    """Which database this is: the cluster's system identifier and the database's name ("" for
    the identifier where the server does not show it, as some managed services do not)."""
    try:
        system = await conn.fetchval("SELECT system_identifier::text FROM pg_control_system()")
    except asyncpg.InsufficientPrivilegeError:
        system = ""
    return f"{system}/{await conn.fetchval('SELECT current_database()')}"


async def server_secret(conn: Conn, name: str) -> bytes:
    """The installation's secret `name`, made at random by the first process that asks."""
    await conn.execute(
        "INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        name,
        secrets.token_bytes(32),
    )
    secret: bytes = await conn.fetchval("SELECT secret FROM server_secrets WHERE name = $1", name)
    return secret
