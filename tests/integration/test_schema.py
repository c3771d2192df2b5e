"""storage/schema.sql is the schema the migrations make (regenerate: python scripts/gen_schema.py):
the migrations applied to an empty database render as exactly that file, and that file applied
to another empty database renders the same again, so it is faithful SQL and not only a text."""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Iterator

import asyncpg
import pytest

from runstream.server.storage import migrate, schema
from tests.conftest import Services, sql


async def _render(url: str, setup: str | None) -> str:
    conn = await asyncpg.connect(url)
    try:
        if setup is None:
            await migrate.migrate(conn)
        else:
            await conn.execute(setup)
        return await schema.render(conn)
    finally:
        await conn.close()


def _diff(expected: str, got: str, what: str) -> str:
    lines = difflib.unified_diff(expected.splitlines(), got.splitlines(), "schema.sql", what, lineterm="")
    return "\n".join(lines)


@pytest.fixture
def empty_databases(services: Services) -> Iterator[list[str]]:
    urls = [services.new_database(), services.new_database()]
    yield urls
    for url in urls:
        sql(services.pg_admin_url, f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1].split('?')[0]} WITH (FORCE)")


def test_the_migrations_make_exactly_schema_sql(empty_databases: list[str]) -> None:
    snapshot = schema.snapshot()
    migrated = asyncio.run(_render(empty_databases[0], None))
    assert migrated == snapshot, "stale: run python scripts/gen_schema.py\n" + _diff(snapshot, migrated, "migrated")
    reloaded = asyncio.run(_render(empty_databases[1], snapshot))
    assert reloaded == migrated, _diff(migrated, reloaded, "schema.sql applied")


def test_what_render_cannot_write_is_refused(empty_databases: list[str]) -> None:
    with pytest.raises(NotImplementedError, match="relation rates of kind v"):
        asyncio.run(_render(empty_databases[0], "CREATE VIEW rates AS SELECT 1 AS one"))
