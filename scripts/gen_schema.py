"""Regenerate src/runstream/server/storage/schema.sql from the migrations
(python scripts/gen_schema.py [--check] [--postgres-url URL]).

Applies the migrations (runstream.server.storage.migrate) to a new, empty database, writes out
its schema with runstream.server.storage.schema.render, and drops the database. The database
is made on the PostgreSQL of --postgres-url (a role that may CREATE DATABASE; default: the
machine's, or RUNSTREAM_TEST_POSTGRES_URL as the tests use), or, when that does not answer, on
an embedded one (pgserver, as `runstream server` starts with no URL). --check says whether the
committed file is current instead of writing it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg

from runstream.server.storage import migrate, schema

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "runstream" / "server" / "storage" / schema.SNAPSHOT
DEFAULT_URL = os.environ.get("RUNSTREAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def render_migrated(admin_url: str) -> str:
    """The schema the migrations make, on a database of its own (dropped after)."""
    name = f"rs_schema_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            conn = await asyncpg.connect(_with_database(admin_url, name))
            try:
                await migrate.migrate(conn)
                return await schema.render(conn)
            finally:
                await conn.close()
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False
    await conn.close()
    return True


def generate(admin_url: str) -> str:
    if asyncio.run(_answers(admin_url)):
        return asyncio.run(render_migrated(admin_url))
    from runstream.server.runtime.embedded import EmbeddedPostgres

    print(f"{admin_url} does not answer: using an embedded PostgreSQL", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="rs-schema-") as tmp:
        pg = EmbeddedPostgres(Path(tmp))
        try:
            return asyncio.run(render_migrated(pg.url))
        finally:
            pg.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgres-url", default=DEFAULT_URL)
    p.add_argument("--check", action="store_true", help="exit 1 when the committed schema.sql is stale")
    args = p.parse_args()
    text = generate(args.postgres_url)
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} does not match the migrations: run python scripts/gen_schema.py")
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
