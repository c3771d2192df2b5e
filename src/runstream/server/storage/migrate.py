"""The versioned migrations in migrations/ (NNNN_name.sql), applied once each, in order;
schema.sql is what they make (schema.py)."""

from __future__ import annotations

import re
from importlib import resources

from runstream.server.storage.db import Conn

MIGRATION_NAME = re.compile(r"(\d{4})_(\w+)\.sql")
# Any constant works; it only has to be the same in every runstream process.
MIGRATION_LOCK = 0x72756E73


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in runstream/server/storage/migrations, in order."""
    found = []
    for entry in resources.files("runstream.server.storage").joinpath("migrations").iterdir():
        m = MIGRATION_NAME.fullmatch(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found)


async def migrate(conn: Conn) -> list[int]:
    """Apply the migrations this database has not seen; returns the versions applied.

    An advisory lock makes concurrent server starts apply each migration once.
    """
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied_now.append(version)
    return applied_now
